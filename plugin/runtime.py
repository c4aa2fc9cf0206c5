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
    _in_force: Config | None = None
    _follower: Any = None  # plugin.crm_config_job.CrmConfigFollower, built on first use
    _config_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def config_in_force(self) -> Config:
        """What is governed and who leads now: the file's configuration, or with [crm_config]
        enabled the CRM's last good version (looked up at most every 2 s), so the receive path and
        the API take in and judge by what the worker applies."""
        if not self.config.crm_config.enabled:
            return self.config
        with self._config_lock:
            if self._follower is None:
                from plugin.crm_config_job import CrmConfigFollower, effective_config, stored_version

                self._in_force = effective_config(self.config, self.engine)

                def follow(applied: Config) -> None:
                    self._in_force = applied

                self._follower = CrmConfigFollower(self.config, self.engine, follow)
                self._follower.version = stored_version(self.engine)
                self._follower.check(force=False)  # arms its 2-second clock
            else:
                self._follower.check()
            assert self._in_force is not None
            return self._in_force

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
