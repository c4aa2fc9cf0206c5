"""Migration 0005 on a database that stored a record under its 15-character id: pending events,
timers and rule state move to the 18-character id, so they meet what Salesforce sends."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from plugin.migrate import alembic_config
from plugin.storage import get_engine, inbox, rule_state, timers

SHORT = "a0B5g000003XyZa"
LONG = "a0B5g000003XyZaEAK"
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def test_pending_events_timers_and_state_move_to_the_18_character_id(db_url: str) -> None:
    engine = get_engine(db_url)
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), "0004")
        conn.commit()
    row = {
        "source": "power_automate.forms",
        "kind": "form.submitted",
        "object": "Budget_Request__c",
        "occurred_at": NOW,
        "received_at": NOW,
        "sender": "key",
        "raw_digest": "ab" * 32,
        "data": {},
    }
    with engine.begin() as conn:
        conn.execute(
            inbox.insert(),
            [
                {
                    **row,
                    "delivery_id": "pending",
                    "record_id": SHORT,
                    "ordering_key": f"Budget_Request__c/{SHORT}",
                    "status": "pending",
                },
                {
                    **row,
                    "delivery_id": "done",
                    "record_id": SHORT,
                    "ordering_key": f"Budget_Request__c/{SHORT}",
                    "status": "done",
                },
            ],
        )
        conn.execute(
            timers.insert(),
            [
                {
                    "rule": "approvals",
                    "ordering_key": f"Budget_Request__c/{SHORT}",
                    "due_at": NOW,
                    "data": {},
                    "origin_event_id": 1,
                }
            ],
        )
        conn.execute(
            rule_state.insert(),
            [
                {
                    "key": f"approvals:Budget_Request__c/{SHORT}",
                    "value": {"from": "short"},
                    "updated_at": NOW,
                },
                {
                    "key": f"provenance:pending:Budget_Request__c/{SHORT}:0000000001",
                    "value": {"n": 1},
                    "updated_at": NOW,
                },
                {
                    "key": f"provenance:head:Budget_Request__c/{SHORT}",
                    "value": {"from": "short"},
                    "updated_at": NOW,
                },
                {
                    "key": f"provenance:head:Budget_Request__c/{LONG}",
                    "value": {"from": "long"},
                    "updated_at": NOW,
                },
            ],
        )
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), "head")
        conn.commit()
    with engine.connect() as conn:
        events = dict(conn.execute(sa.select(inbox.c.delivery_id, inbox.c.record_id)).all())
        assert events == {"pending": LONG, "done": SHORT}  # what was processed stays as received
        assert conn.execute(sa.select(timers.c.ordering_key)).scalar() == f"Budget_Request__c/{LONG}"
        state = dict(conn.execute(sa.select(rule_state.c.key, rule_state.c.value)).all())
    assert state == {
        f"approvals:Budget_Request__c/{LONG}": {"from": "short"},
        f"provenance:pending:Budget_Request__c/{LONG}:0000000001": {"n": 1},
        f"provenance:head:Budget_Request__c/{LONG}": {"from": "long"},  # the CRM's own history wins
    }
