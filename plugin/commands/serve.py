"""`serve`: gunicorn on the configured address, with a rules worker alongside by default."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from plugin.config import Config


def run(args: argparse.Namespace, config: Config) -> int:
    """Serve until stopped; the worker child stops with us."""
    # Before anything imports prometheus_client: every process writes its counters here.
    metrics_dir = Path(config.var_dir, "metrics")
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())

    from plugin import logs, migrate
    from plugin.storage import dispose_engines, get_engine

    logs.configure(config)
    migrate.upgrade(get_engine(config.storage.url))
    dispose_engines()  # no pooled connection may cross the fork into gunicorn's workers
    worker = None
    if config.server.run_worker and not args.no_worker:
        cmd = [sys.executable, "-m", "plugin", "worker", "--parent-pid", str(os.getpid())]
        worker = subprocess.Popen(cmd)  # inherits the environment, so the same configuration
    try:
        GunicornApp(config).run()
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class GunicornApp(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured from OnRecord's configuration rather than its command line."""

    def __init__(self, config: Config) -> None:
        self.onrecord_config = config
        super().__init__()

    def load_config(self) -> None:
        server = self.onrecord_config.server
        settings = {
            "bind": f"{server.host}:{os.environ.get('PORT') or server.port}",
            "workers": server.workers,
            "threads": server.threads,
            "worker_class": "gthread",
            "timeout": 90,
            "graceful_timeout": 30,
            "keepalive": 5,
            "child_exit": _child_exit,
            "accesslog": None,
            "proc_name": "onrecord",
            # One shared control socket per user would clash between instances; nothing uses it.
            "control_socket_disable": True,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from plugin.app import create_app

        return create_app(self.onrecord_config)
