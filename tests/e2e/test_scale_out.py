"""Scale-out: two servers and two workers on one PostgreSQL; no event is processed twice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from plugin.storage import get_engine, inbox, outbox, rule_state
from tests.conftest import TEST_SECRET
from tests.support.events import change_event, signed
from tests.support.processes import Process, Server, onrecord_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

EVENTS = 600
RECORDS = 30


def test_two_servers_and_two_workers_share_one_postgres_without_double_processing(
    postgres_url: str, tmp_path: Path
) -> None:
    env = onrecord_env(postgres_url, tmp_path / "var", TEST_SECRET, ONRECORD_WORKER__BATCH_SIZE=10)
    # One server with each worker class: gevent's must not block its requests on PostgreSQL calls.
    servers = [
        Server({**env, "ONRECORD_SERVER__WORKER_CLASS": worker_class}, tmp_path / f"serve{i}.log")
        for i, worker_class in enumerate(["gevent", "gthread"])
    ]
    workers = [Process(["worker"], env, tmp_path / f"worker{i}.log") for i in range(2)]
    try:

        def send(i: int) -> int:
            # Every event about a record goes through alternating servers, so both see every record.
            body, headers = signed(TEST_SECRET, change_event(i, record=i % RECORDS), webhook_id=f"scale-{i}")
            url = servers[i % 2].url + "/hooks/salesforce/events"
            return requests.post(url, data=body, headers=headers, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(send, range(EVENTS))) == {200}
        engine = get_engine(postgres_url)
        done = sa.select(sa.func.count()).select_from(inbox).where(inbox.c.status == "done")

        def all_done() -> bool:
            with engine.connect() as conn:
                return conn.execute(done).scalar() == EVENTS

        wait_for(all_done, timeout=120)
        with engine.connect() as conn:
            per_event = conn.execute(
                sa.select(outbox.c.event_id, sa.func.count()).group_by(outbox.c.event_id)
            ).all()
            states = list(conn.execute(sa.select(rule_state.c.value)).scalars())
        assert len(per_event) == EVENTS and {n for _, n in per_event} == {1}
        assert len(states) == RECORDS
        for st in states:
            assert st["n"] == len(set(st["deliveries"])) == EVENTS // RECORDS
        for w in workers:
            assert w.popen.poll() is None, w.output()  # neither worker died on a conflict
    finally:
        for p in [*servers, *workers]:
            p.stop()
