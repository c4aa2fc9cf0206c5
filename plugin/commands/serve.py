"""`serve`: gunicorn on the configured address, with a rules worker alongside by default."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from plugin.config import Config


def run(args: argparse.Namespace, config: Config) -> int:
    """Serve until stopped; the children (inbox writer, rules worker) stop with us."""
    # Before anything imports prometheus_client: every process writes its counters here.
    metrics_dir = Path(config.var_dir, "metrics")
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())

    if config.server.worker_class == "gevent":
        cooperative_postgres_waits()

    from plugin import logs, migrate
    from plugin.storage import dispose_engines, get_engine, sqlite_path

    logs.configure(config)
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    database = sqlite_path(engine)
    dispose_engines()  # no pooled connection may cross the fork into gunicorn's workers
    me = str(os.getpid())
    children = Children()
    if database:
        run_dir = Path(config.var_dir, "run")
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o700)
        socket_path = str((run_dir / f"inbox-{me}.sock").resolve())
        children.start("inbox writer", ["inbox-writer", "--socket", socket_path, "--parent-pid", me])
        _wait_for(Path(socket_path), children)
        os.environ["ONRECORD_INBOX_SOCKET"] = socket_path  # gunicorn's workers inherit it
    if config.server.run_worker and not args.no_worker:
        children.start("rules worker", ["worker", "--parent-pid", me])
    children.supervise()
    try:
        GunicornApp(config, children).run()
    finally:
        children.stop()
    return 0


def cooperative_postgres_waits() -> None:
    """Have psycopg wait with poll(), which gevent patches in the workers, not in C.

    psycopg picks its wait function when first imported: this process imports it (to migrate)
    before gunicorn forks the workers and gevent patches them, so left alone it would pick its C
    wait, and every PostgreSQL call would stop all of a worker's requests until it returned.
    An admin's own PSYCOPG_WAIT_FUNC wins.
    """
    os.environ.setdefault("PSYCOPG_WAIT_FUNC", "wait_poll")


def run_inbox_writer(args: argparse.Namespace, config: Config) -> int:
    """The hidden `inbox-writer` command `serve` starts for a SQLite database."""
    from plugin import logs
    from plugin.inbox_writer import InboxWriter
    from plugin.storage import get_engine, sqlite_path

    logs.configure(config)
    database = sqlite_path(get_engine(config.storage.url))
    if database is None:
        print("the inbox writer serves SQLite databases only", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    writer = InboxWriter(database, args.socket, parent_pid=args.parent_pid)
    gc.freeze()  # every commit waits on this process: no full collection should walk the imports
    writer.serve(stop)
    return 0


class Children:
    """`serve`'s helper processes, restarted if one dies while we run."""

    def __init__(self) -> None:
        self._procs: dict[str, tuple[list[str], subprocess.Popen[bytes]]] = {}
        self._stopping = threading.Event()

    def start(self, name: str, args: list[str]) -> None:
        # Inherits the environment, so the same configuration.
        self._procs[name] = (args, subprocess.Popen([sys.executable, "-m", "plugin", *args]))

    def stopping(self) -> None:
        """Serve is stopping: a child that exits now is not restarted."""
        self._stopping.set()

    def alive(self, name: str) -> bool:
        return self._procs[name][1].poll() is None

    def supervise(self) -> None:
        """Restart a child that died, backing off if it keeps dying.

        Its exit status is not to be trusted: gunicorn's arbiter reaps every child of this
        process, so Popen sees a 0 even for a SIGKILL. A child restarted while serve itself is
        stopping is harmless: stop() terminates it, and it exits when this process is gone.
        """

        def watch() -> None:
            delay = {name: 0.5 for name in self._procs}
            while not self._stopping.wait(0.5):
                for name, (args, proc) in list(self._procs.items()):
                    if proc.poll() is None or self._stopping.is_set():
                        continue
                    # Wait first: when the whole process group is being stopped (systemd, Ctrl-C),
                    # the child goes before serve knows it is stopping, and it is not a failure.
                    self._stopping.wait(delay[name])
                    delay[name] = min(delay[name] * 2, 30.0)
                    if not self._stopping.is_set():
                        print(f"onrecord: {name} exited; restarting", file=sys.stderr)
                        self.start(name, args)

        threading.Thread(target=watch, name="children", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        for _, proc in self._procs.values():
            proc.terminate()
        for _, proc in self._procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_for(path: Path, children: Children, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not children.alive("inbox writer") or time.monotonic() > deadline:
            children.stop()
            raise SystemExit("onrecord: the inbox writer did not start")
        time.sleep(0.02)


def _freeze_heap(worker: Any) -> None:
    # The app's long-lived objects (Flask, SQLAlchemy, zeep's WSDL schemas, pydantic models) go to
    # the permanent generation: full collections no longer walk them, pausing every request.
    gc.freeze()


def _worker_exit(server: Any, worker: Any) -> None:
    # Flush the logs while everything is alive, then forget the handlers: at interpreter exit, in
    # a gevent worker, logging's clean-up of a handler takes a lock whose gevent parts are already
    # gone and prints a TypeError traceback on every stop (gevent issue #2148). With logging's
    # handler list empty, that clean-up has nothing to do.
    logging.shutdown()
    logging._handlerList.clear()  # type: ignore[attr-defined]


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class GunicornApp(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured from OnRecord's configuration rather than its command line."""

    def __init__(self, config: Config, children: Children | None = None) -> None:
        self.onrecord_config = config
        self.children = children
        super().__init__()

    def _when_ready(self, server: Any) -> None:
        # gunicorn has installed its signal handlers by now. A stop signal to the whole process
        # group (systemd, Ctrl-C) reaches the children at the same moment: tell the supervisor
        # first, so a child that goes is not taken for one that died and restarted.
        children = self.children
        if children is None:
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                children.stopping()
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    def load_config(self) -> None:
        server = self.onrecord_config.server
        settings = {
            "bind": f"{server.host}:{os.environ.get('PORT') or server.port}",
            "workers": server.workers,
            "threads": server.threads,
            "worker_class": server.worker_class,
            "worker_connections": server.worker_connections,
            "timeout": 90,
            "graceful_timeout": 30,
            "keepalive": 5,
            "child_exit": _child_exit,
            "worker_exit": _worker_exit,
            "when_ready": self._when_ready,
            "post_worker_init": _freeze_heap,
            "accesslog": None,
            "proc_name": "onrecord",
            # One shared control socket per user would clash between instances; nothing uses it.
            "control_socket_disable": True,
            # Forwarded headers are OnRecord's to judge (server.trusted_proxy_hops, ProxyFix):
            # gunicorn would otherwise trust X-Forwarded-Proto from any local address.
            "forwarded_allow_ips": "",
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from plugin.app import create_app

        return create_app(self.onrecord_config)
