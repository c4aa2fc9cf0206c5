"""The worker command's wiring: after `keys rotate`, a running worker signs with the new key."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from plugin.commands.work import KeyFollower, build
from plugin.events import Event
from plugin.inbox import insert_events
from plugin.provenance.rule import key_store
from plugin.storage import begin_write, get_engine, outbox
from tests.conftest import make_config
from tests.support.events import USER_ID, record_id

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def change(n: int) -> Event:
    return Event(
        source="test", delivery_id=f"d{n}", kind="record.changed", occurred_at=T0 + timedelta(minutes=n),
        object="Opportunity", record_id=record_id(1), actor=USER_ID,
        data={"fields": {"Id": record_id(1), "Amount": 1000 * n, "LastModifiedById": USER_ID}},
    )  # fmt: skip


def signing_kids(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        payloads = conn.execute(sa.select(outbox.c.payload).order_by(outbox.c.id)).scalars().all()
    return [json.loads(p["OnRecord_Signature__c"])["signatures"][0]["keyid"] for p in payloads]


def test_a_running_worker_follows_a_key_rotation(sqlite_url: str, tmp_path: Path) -> None:
    config = make_config(sqlite_url, tmp_path, **{"worker.rules": ["plugin.rules:builtin_rules"]})
    store = key_store(config)
    first = store.create(T0)
    worker, _, _ = build(config)
    follower = KeyFollower(config, worker)
    engine = get_engine(sqlite_url)
    with begin_write(engine) as conn:
        insert_events(conn, [change(1)], T0)
    worker.run_once()
    assert follower.check(force=True) is False  # nothing rotated yet
    second = store.rotate(T0 + timedelta(days=1))
    assert follower.check(force=True) is True
    with begin_write(engine) as conn:
        insert_events(conn, [change(2)], T0)
    worker.run_once()
    assert signing_kids(engine) == [first, second]
