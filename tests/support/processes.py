"""Real OnRecord processes for end-to-end tests: `serve` under gunicorn, and `worker`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_plugin(
    *args: str, env: Mapping[str, str], cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m plugin ARGS` as an admin runs it, to completion; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "plugin", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def onrecord_env(db_url: str, var_dir: Path, secret: str, **extra: Any) -> dict[str, str]:
    """The environment an admin would set, for a test's own database and var/."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ONRECORD_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        {
            "ONRECORD_CONFIG": str(var_dir / "none.toml"),
            "ONRECORD_STORAGE__URL": db_url,
            "ONRECORD_VAR_DIR": str(var_dir),
            "ONRECORD_SECRETS_DIR": str(var_dir / "secrets"),
            "ONRECORD_SALESFORCE__EVENTS_SECRET": secret,
            "ONRECORD_WORKER__RULES": json.dumps(["tests.support.rules:counting_rules"]),
            "ONRECORD_GOVERNED": json.dumps([{"object": "Opportunity", "fields": ["Amount", "StageName"]}]),
            "ONRECORD_WORKER__POLL_INTERVAL_SECONDS": "0.05",
            "ONRECORD_LOGGING__LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    var_dir.mkdir(parents=True, exist_ok=True)
    (var_dir / "none.toml").write_text("# settings come from the environment in these tests\n")
    return env


class Process:
    """A child process in its own process group, so kill -9 takes all of it."""

    def __init__(self, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        if args[:1] == ["worker"] and "--parent-pid" not in args:
            # Its own session survives pytest being killed (a timeout, ^C): told whose child it
            # is, it stops when pytest is gone instead of polling a dropped schema for ever.
            args = [*args, "--parent-pid", str(os.getpid())]
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "plugin", *args],
            cwd=ROOT,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill9(self) -> None:
        """SIGKILL the whole group: no clean-up of any kind runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill9()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class Server(Process):
    """`python -m plugin serve` on a free loopback port."""

    def __init__(
        self, env: Mapping[str, str], log: Path, *, worker: bool = False, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["serve"] if worker else ["serve", "--no-worker"]
        super().__init__(args, {**env, "PORT": str(self.port)}, log)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.output()}")
            try:
                if requests.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass  # not listening yet, or busy starting
            time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.output()}")


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)
