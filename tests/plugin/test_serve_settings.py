"""How `serve` sets up gunicorn's workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from plugin.commands.serve import cooperative_postgres_waits
from tests.support.processes import ROOT

# Imported first and patched afterwards, as in a gunicorn gevent worker forked from `serve`.
PROBE = "import psycopg.waiting as w; from gevent import monkey; monkey.patch_all(); print(w.wait.__name__)"


def _wait_function(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_gevent_workers_wait_for_postgres_with_a_function_gevent_patches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PSYCOPG_WAIT_FUNC", raising=False)
    assert _wait_function(dict(os.environ)) == "wait_c"  # what a worker would get, left alone

    cooperative_postgres_waits()

    assert os.environ["PSYCOPG_WAIT_FUNC"] == "wait_poll"
    assert _wait_function(dict(os.environ)) == "wait_poll"


def test_an_admins_own_psycopg_wait_function_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSYCOPG_WAIT_FUNC", "wait_select")

    cooperative_postgres_waits()

    assert os.environ["PSYCOPG_WAIT_FUNC"] == "wait_select"
