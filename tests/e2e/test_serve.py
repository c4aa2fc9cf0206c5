"""`serve` as an admin runs it: real gunicorn, real HTTP, a real worker alongside."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from plugin.storage import dryrun_calls, get_engine, inbox
from tests.conftest import TEST_SECRET
from tests.support.events import change_event, record_id, signed
from tests.support.processes import Server, onrecord_env, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(params=["gevent", "gthread"])
def server(request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path) -> Iterator[Server]:
    worker_class = request.param  # the default, and the other one an admin may choose
    env = onrecord_env(sqlite_url, tmp_path / "var", TEST_SECRET, ONRECORD_SERVER__WORKER_CLASS=worker_class)
    srv = Server(env, tmp_path / "serve.log", worker=True)
    yield srv
    srv.stop()


def post(server: Server, payload: object) -> requests.Response:
    body, headers = signed(TEST_SECRET, payload)
    return requests.post(server.url + "/hooks/salesforce/events", data=body, headers=headers, timeout=10)


def test_signed_event_flows_through_to_the_dry_run_crm(server: Server, sqlite_url: str) -> None:
    assert post(server, change_event(1)).json() == {"stored": 1, "duplicates": 0, "ignored": 0}
    engine = get_engine(sqlite_url)

    def written() -> list[dict[str, object]]:
        with engine.connect() as conn:
            calls = conn.execute(sa.select(dryrun_calls.c.records)).scalars().all()
        return [record for call in calls for record in call]

    (record,) = wait_for(written, timeout=20)
    assert record["key"] == record_id(1) and record["fields"]["Count__c"] == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(inbox.c.status)).scalar() == "done"


def test_metrics_add_up_across_gunicorn_workers(server: Server) -> None:
    for i in range(20):  # two gunicorn workers share these
        assert post(server, change_event(i)).status_code == 200
    assert post(server, {"not": "an event"}).status_code == 400
    text = requests.get(server.url + "/metrics", timeout=10).text
    accepted = re.search(r'onrecord_events_accepted_total\{source="salesforce.events"\} (\S+)', text)
    assert accepted and float(accepted.group(1)) == 20.0
    assert re.search(
        r'onrecord_requests_rejected_total\{reason="missing_field",source="salesforce.events"\} 1.0', text
    )
    for gauge in ("onrecord_inbox_lag_seconds", "onrecord_outbox_depth", "onrecord_dead_letters"):
        assert gauge in text


def test_readyz_reports_database_and_crm(server: Server) -> None:
    body = requests.get(server.url + "/readyz", timeout=10).json()
    assert body["ready"] is True
    assert body["checks"]["database"]["ok"] and "dry run" in body["checks"]["crm"]["detail"]


def test_readyz_says_why_when_the_crm_writer_cannot_be_built(sqlite_url: str, tmp_path: Path) -> None:
    from plugin.app import create_app
    from tests.conftest import make_config

    config = make_config(
        sqlite_url,
        tmp_path,
        **{"crm.kind": "salesforce", "salesforce.client_id": "x", "salesforce.username": "u",
           "salesforce.private_key_file": str(tmp_path / "missing.pem"), "salesforce.login_url": "https://127.0.0.1:9"},
    )  # fmt: skip
    resp = create_app(config).test_client().get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["checks"]["crm"]["ok"] is False and body["checks"]["crm"]["writer"] == "salesforce"
    assert body["checks"]["crm"]["detail"]


def test_stopping_serve_leaves_no_traceback_and_no_false_alarm_in_the_log(
    sqlite_url: str, tmp_path: Path
) -> None:
    srv = Server(onrecord_env(sqlite_url, tmp_path / "var", TEST_SECRET), tmp_path / "serve.log")
    assert post(srv, change_event(1)).status_code == 200

    srv.stop()

    log = srv.output()
    assert "Worker exiting" in log  # gevent workers, stopped the way systemd stops a service
    assert "Traceback" not in log and "Exception ignored" not in log
    assert "restarting" not in log  # its children stopped with it: nothing to restart
