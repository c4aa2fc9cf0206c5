"""kill -9 in the middle of a burst: nothing acknowledged is lost, nothing is applied twice."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from plugin.storage import get_engine, inbox, outbox, rule_state
from tests.conftest import TEST_SECRET
from tests.support.events import change_event, signed
from tests.support.processes import Process, Server, onrecord_env, wait_for

pytestmark = pytest.mark.slow

EVENTS = 1000
RECORDS = 100


class Sender:
    """Sends each event until it is acknowledged, as Salesforce or a relay would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: set[str] = set()
        self.lock = threading.Lock()
        self.first_acks = threading.Event()

    def send(self, i: int) -> None:
        payload = change_event(i, record=i % RECORDS)
        session = requests.Session()
        while True:
            body, headers = signed(TEST_SECRET, payload, webhook_id=f"burst-{i}")  # re-signed, same id
            try:
                resp = session.post(self.url, data=body, headers=headers, timeout=10)
                if resp.status_code == 200:
                    break
            except requests.RequestException:
                pass  # the server is down: try again, like any sender
            threading.Event().wait(0.2)
        with self.lock:
            self.acked.add(f"burst-{i}")
            if len(self.acked) >= EVENTS * 0.3:
                self.first_acks.set()


def count(engine: sa.Engine, stmt: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar() or 0)


def test_kill_9_of_server_and_worker_mid_burst_loses_nothing_and_doubles_nothing(
    db_url: str, tmp_path: Path
) -> None:
    env = onrecord_env(
        db_url,
        tmp_path / "var",
        TEST_SECRET,
        ONRECORD_WORKER__LEASE_SECONDS=2,
        ONRECORD_DISPATCH__LEASE_SECONDS=2,
        ONRECORD_WORKER__BATCH_SIZE=20,
    )
    server = Server(env, tmp_path / "serve.log")
    worker = Process(["worker"], env, tmp_path / "worker.log")
    sender = Sender(server.url + "/hooks/salesforce/events")
    engine = get_engine(db_url)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(sender.send, i) for i in range(EVENTS)]
        assert sender.first_acks.wait(60), server.output()
        server.kill9()
        worker.kill9()
        with sender.lock:
            acked_before_crash = set(sender.acked)
        stored_after_crash = count(engine, sa.select(sa.func.count()).select_from(inbox))
        # Every acknowledged event survived the crash.
        with engine.connect() as conn:
            stored_ids = set(conn.execute(sa.select(inbox.c.delivery_id)).scalars())
        assert acked_before_crash <= stored_ids
        server = Server(env, tmp_path / "serve2.log", port=server.port)
        worker = Process(["worker"], env, tmp_path / "worker2.log")
        for f in futures:
            f.result(timeout=120)
    try:
        assert len(sender.acked) == EVENTS
        assert stored_after_crash < EVENTS, "the crash came too late to prove anything"
        done = sa.select(sa.func.count()).select_from(inbox).where(inbox.c.status == "done")
        wait_for(lambda: count(engine, done) == EVENTS, timeout=120)
        sent = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status == "sent")
        wait_for(lambda: count(engine, sent) == EVENTS, timeout=120)
        # Exactly once in effect: each event produced one outbox row and one entry in its record's state.
        per_event = sa.select(outbox.c.event_id, sa.func.count()).group_by(outbox.c.event_id)
        with engine.connect() as conn:
            counts = [n for _, n in conn.execute(per_event)]
            states = [v for v in conn.execute(sa.select(rule_state.c.value)).scalars()]
        assert len(counts) == EVENTS and set(counts) == {1}
        assert len(states) == RECORDS
        for st in states:
            assert st["n"] == len(st["deliveries"]) == len(set(st["deliveries"])) == EVENTS // RECORDS
        assert (
            count(engine, sa.select(sa.func.count()).select_from(inbox).where(inbox.c.status != "done")) == 0
        )
        assert (
            count(engine, sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status == "dead"))
            == 0
        )
    finally:
        server.stop()
        worker.stop()
