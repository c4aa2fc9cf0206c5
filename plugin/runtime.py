"""What a running process holds: configuration, engine, committer, CRM writer."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from flask import current_app
from sqlalchemy.engine import Engine

from plugin.config import Config
from plugin.crm import CrmWriter
from plugin.inbox import GroupCommitter


@dataclass
class Runtime:
    """Shared by the app's request threads; built once per process by create_app."""

    config: Config
    engine: Engine
    committer: GroupCommitter
    # Per-app objects a connector builds once (e.g. the Entra ID verifiers with their key caches).
    extensions: dict[str, Any] = field(default_factory=dict)
    _writer: CrmWriter | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def writer(self) -> CrmWriter:
        """The configured CRM writer, built on first use."""
        with self._lock:
            if self._writer is None:
                from plugin.writers import build_writer

                self._writer = build_writer(self.config, self.engine)
            return self._writer


def runtime() -> Runtime:
    """The current app's runtime."""
    rt: Runtime = current_app.extensions["onrecord"]
    return rt
