"""Events as the connectors produce them, and an API with a processed chain, for the provenance tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from plugin.app import create_app
from plugin.events import Event
from plugin.inbox import insert_events
from plugin.provenance.rule import key_store
from plugin.rules import load_rules
from plugin.storage import begin_write, get_engine
from plugin.worker import Worker
from tests.conftest import make_config

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
RECORD = "0065g00000AcmeAAA"
PERSON = "0055g00000PersonAA"
FLOW_USER = "0055g00000FlowUsAA"
INTEGRATION = "0055g00000OnRecdAA"


def changed(
    minutes: float = 0,
    *,
    record_id: str = RECORD,
    actor: str | None = PERSON,
    delivery: str | None = None,
    obj: str = "Opportunity",
    **fields: Any,
) -> Event:
    """A record.changed from an outbound message (values as text, as it sends them)."""
    when = T0 + timedelta(minutes=minutes)
    values = {"Id": record_id, "Name": "Acme renewal", "LastModifiedById": actor, **fields}
    return Event(
        source="salesforce.outbound",
        delivery_id=delivery or f"04l{record_id}{minutes}{sorted(fields.items())}",
        kind="record.changed",
        occurred_at=when,
        object=obj,
        record_id=record_id,
        actor=actor,
        data={"org_id": "00D5g000004PzQxEAK", "fields": values},
        sender="org:00D5g000004PzQxEAK",
        raw_digest="ab" * 32,
    )


def form(minutes: float = 0, *, record_id: str = RECORD, response_id: str = "123") -> Event:
    """A form.submitted for the record, reported by the flow."""
    return Event(
        source="power_automate.forms",
        delivery_id=f"form:f1:{response_id}",
        kind="form.submitted",
        occurred_at=T0 + timedelta(minutes=minutes),
        object="Opportunity",
        record_id=record_id,
        actor="ann@contoso.com",
        data={
            "form_id": "f1",
            "form_name": "Budget Request",
            "response_id": response_id,
            "responder": "ann@contoso.com",
            "flow_run_id": "08585371812345",
        },
    )


def api_client(database_url: str, tmp_path: Path, token: str) -> FlaskClient:
    """OnRecord's API with a signing key and one record's chain (a form, a flow's change, a
    person's change) already processed by the worker; `token` is accepted on /api/*."""
    config = make_config(
        database_url, tmp_path, **{"worker.rules": ["plugin.rules:builtin_rules"], "api.tokens": [token]}
    )
    key_store(config).create(datetime.now(UTC))
    app = create_app(config)
    engine = get_engine(config.storage.url)
    with begin_write(engine) as conn:
        events = [form(0), changed(1, actor=FLOW_USER, Amount="120000.00"), changed(3, StageName="Proposal")]
        insert_events(conn, events, datetime.now(UTC))
    Worker(engine, load_rules(config)).run_once()
    return app.test_client()
