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
    _writers: dict[str, CrmWriter] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def writer(self) -> CrmWriter:
        """The primary CRM's writer, built on first use."""
        return self.writer_for(self.config.crm.primary)

    def writer_for(self, crm: str) -> CrmWriter:
        """One CRM's writer (its dry run when it has no credentials), built on first use."""
        with self._lock:
            if crm not in self._writers:
                from plugin.writers import build_writer

                self._writers[crm] = build_writer(self.config, self.engine, crm)
            return self._writers[crm]

    def crm_of(self, obj: str) -> str:
        """The CRM a governed object lives in (the primary CRM for anything else)."""
        return next((g.crm for g in self.config.governed if g.object == obj), self.config.crm.primary)


def runtime() -> Runtime:
    """The current app's runtime."""
    rt: Runtime = current_app.extensions["onrecord"]
    return rt
