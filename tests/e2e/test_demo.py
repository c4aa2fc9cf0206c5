"""`python -m plugin demo` end to end, as an admin runs it: in a fresh directory with only the
example configuration, `init`, then `serve` (with its worker) in one terminal and `demo` in
another; the demo's own output and the report it writes are what is checked."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.processes import ROOT, free_port, run_plugin

pytestmark = pytest.mark.slow


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "config" / "onrecord.toml").unlink(missing_ok=True)
    for wsdl in (tmp_path / "config").glob("*.wsdl"):
        wsdl.unlink()  # as shipped: no outbound message WSDLs of the admin's own
    return tmp_path


@pytest.fixture
def env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONRECORD_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = str(ROOT)
    # the one setting changed from `make run`'s: the leader aggregation every 2 s, not 60 s, so
    # the demo does not wait a minute for the OnRecord_Leader_Signal__c records
    env["ONRECORD_LEADERS__AGGREGATE_SECONDS"] = "2"
    return env


@pytest.fixture
def server(workdir: Path, env: dict[str, str]) -> Iterator[str]:
    init = run_plugin("init", env=env, cwd=workdir)
    assert init.returncode == 0, init.stderr
    port = free_port()
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115 - closed below
    serve = subprocess.Popen(
        [sys.executable, "-m", "plugin", "serve"],
        cwd=workdir,
        env={**env, "PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, (workdir / "serve.log").read_text(errors="replace")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=10)
        log.close()
        output = (workdir / "serve.log").read_text(errors="replace")
        assert "Traceback" not in output, output[-3000:]


def test_the_demo_plays_the_whole_scenario_and_writes_the_report(
    server: str, workdir: Path, env: dict[str, str]
) -> None:
    demo = run_plugin("demo", "--url", server, cwd=workdir, env=env, timeout=300)

    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = " ".join(demo.stdout.split())  # the demo wraps its lines at 100 characters
    assert "-> Verified: OnRecord set Status__c = Approved itself." in out
    assert "-> Blocked: reverted to Submitted, a violation recorded against Jane Doe." in out
    # what OnRecord wrote to the dry-run CRM, read from the server's own database
    written = out[out.index("What OnRecord wrote to the dry-run CRM") :]
    assert "Status__c = Approved, OnRecord_Approval__c = Verified" in written
    assert "OnRecord_Approval__c = Blocked, Status__c = Submitted" in written
    assert (
        "OnRecord_Violation__c" in written
        and "Jane Doe, Form-only approval, Reverted to Submitted" in written
    )
    assert "OnRecord_Leader_Signal__c" in written and "Dana Chief (user 005DEMO00000005YDA), score" in written
    # each leader's score, from GET /api/leaders
    scores = out[out.index("Leader scores, ") :]
    for name in ("Dana Chief", "Vera Strategy", "Casey Finance", "Jane Doe"):
        assert name in scores
    assert "champion candidate" in scores and "1 off-system approval" in scores
    assert "no one can send a login over HTTP" in out
    report = workdir / "var" / "leader-report.html"
    assert f"Report: {Path('var') / 'leader-report.html'}" in out
    page = report.read_text(encoding="utf-8")
    assert "Leader Buy-In" in page and "<svg" in page and "Jane Doe" in page
    assert "the form has no response for this record" in page  # the hallway approval, with its reason

    again = run_plugin("demo", "--url", server, cwd=workdir, env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr  # new records every run
    again_out = " ".join(again.stdout.split())
    assert "2 off-system approvals" in again_out[again_out.index("Leader scores, ") :]


def test_the_demo_says_what_to_do_when_nothing_answers(workdir: Path, env: dict[str, str]) -> None:
    init = run_plugin("init", env=env, cwd=workdir)
    assert init.returncode == 0, init.stderr

    demo = run_plugin("demo", "--url", f"http://127.0.0.1:{free_port()}", cwd=workdir, env=env, timeout=60)

    assert demo.returncode == 1 and "start it with `make run`" in demo.stderr
