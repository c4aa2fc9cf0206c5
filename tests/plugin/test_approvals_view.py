"""Approvals through the real worker and database (both): the facts stored once, the API an admin
or a Flow asks, and `python -m plugin approvals`."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from plugin import migrate
from plugin.app import create_app
from plugin.config import Config
from plugin.inbox import insert_events
from plugin.provenance.rule import key_store
from plugin.rules import load_rules
from plugin.storage import begin_write, facts, get_engine, outbox
from plugin.worker import Worker
from tests.conftest import make_config
from tests.plugin.rules.support import (
    FLOW_USER,
    INTEGRATION_USER,
    JANE_ID,
    OBJ,
    RECORD,
    form,
    policy,
    proven_chain,
    status_change,
)
from tests.support.processes import ROOT

TOKEN = "api-token-for-approvals-tests-0123456"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(hours=2)
PEOPLE = [
    {"name": "Jane Doe", "emails": ["jane@contoso.com"], "salesforce_id": JANE_ID},
    {"name": "Alex Requester", "emails": ["alex@contoso.com"]},
    {"name": "Vera Strategy", "emails": ["vera@contoso.com"], "groups": ["Strategy Board"]},
    {"name": "Casey Finance", "emails": ["casey@contoso.com"], "groups": ["Finance Approvers"]},
]


def configure(db_url: str, tmp_path: Path) -> Config:
    """Policy with no grace, the people, a signing key, the schema."""
    governed = policy(grace_seconds=0).model_dump()
    config = make_config(
        db_url,
        tmp_path,
        **{
            "worker.rules": ["plugin.rules:builtin_rules"],
            "api.tokens": [TOKEN],
            "governed": [governed],
            "directory.people": PEOPLE,
            "salesforce.integration_user_id": INTEGRATION_USER,
        },
    )
    key_store(config).create(NOW)
    migrate.upgrade(get_engine(config.storage.url))
    return config


def run(config: Config, events: list[Any]) -> None:
    engine = get_engine(config.storage.url)
    with begin_write(engine) as conn:
        insert_events(conn, events, NOW)
    worker = Worker(engine, load_rules(config))
    while worker.run_once().done:
        pass


OTHER = "a0B5g000003XyZbEAK"  # a second request, approved in the hallway by Jane


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> Config:
    config = configure(db_url, tmp_path)
    created = status_change(T0 - timedelta(hours=1), "Submitted", delivery="04l-created")
    run(config, [*proven_chain(T0), created, replace(created, record_id=OTHER, delivery_id="04l-o1")])
    hallway = replace(status_change(T0 + timedelta(minutes=40), delivery="04l-hallway"), record_id=OTHER)
    run(config, [hallway])
    run(config, [replace(hallway, source="salesforce.events")])  # the same change, relayed again
    return config


@pytest.fixture
def client(config: Config) -> FlaskClient:
    return create_app(config).test_client()


def test_the_api_tells_a_flow_the_verdict_the_reason_and_the_chain(client: FlaskClient) -> None:
    resp = client.get(f"/api/approvals/{OBJ}/{RECORD}", headers=AUTH)
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["verdict"] == "Verified" and body["status_value"] == "Approved"
    assert body["status_by_name"] == "OnRecord"
    assert body["chain"]["status"] == "proven" and body["chain"]["requester_name"] == "Alex Requester"
    assert [s["approver_names"] for s in body["chain"]["stages"]] == [["Vera Strategy"], ["Casey Finance"]]
    # the same answer for the record's 15-character id
    assert client.get(f"/api/approvals/{OBJ}/{RECORD[:15]}", headers=AUTH).json == body


def test_a_blocked_approval_reads_as_blocked_with_its_reason(client: FlaskClient) -> None:
    body = client.get(f"/api/approvals/{OBJ}/{OTHER}", headers=AUTH).json
    assert body["verdict"] == "Blocked"
    assert body["reason"] == "the form has no response for this record"
    [change] = [c for c in body["changes"] if c["verdict"] == "Blocked"]
    assert change["actor_name"] == "Jane Doe" and change["reverted"] is True


def test_the_api_needs_a_token_and_names_what_it_cannot_answer(client: FlaskClient) -> None:
    assert client.get(f"/api/approvals/{OBJ}/{RECORD}").status_code == 401
    unknown = client.get("/api/approvals/Opportunity/006000000000001AAA", headers=AUTH)
    assert (unknown.status_code, unknown.json["reason"]) == (404, "not_approval_governed")
    unseen = client.get(f"/api/approvals/{OBJ}/a0B5g000003XyZcEAK", headers=AUTH)
    assert (unseen.status_code, unseen.json["reason"]) == (404, "not_seen")


def test_a_replayed_violation_is_one_fact_and_one_upsert_key(config: Config) -> None:
    engine = get_engine(config.storage.url)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(facts.c.kind, facts.c.person, facts.c.retracted)).all()
        keys = conn.execute(
            sa.select(outbox.c.record_key).where(outbox.c.object == "OnRecord_Violation__c")
        ).scalars()
        violation_keys = set(keys)
    assert sorted(stored) == sorted(
        [
            # Jane's two creations and her hallway change are records she touched (the relayed
            # copy of the change is not counted again); the violation is one fact.
            ("record_touched", JANE_ID, False),
            ("record_touched", JANE_ID, False),
            ("record_touched", JANE_ID, False),
            ("off_system_approval", JANE_ID, False),
            ("form_approval", "vera@contoso.com", False),
            ("form_approval", "casey@contoso.com", False),
        ]
    )
    assert len(violation_keys) == 1


def test_the_approvals_command_lists_verdicts_for_an_admin(config: Config, tmp_path: Path) -> None:
    env = {
        "ONRECORD_CONFIG": str(tmp_path / "none.toml"),
        "ONRECORD_STORAGE__URL": config.storage.url,
        "ONRECORD_GOVERNED": json.dumps([policy(grace_seconds=0).model_dump()]),
        "ONRECORD_DIRECTORY__PEOPLE": json.dumps(PEOPLE),
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
    }
    (tmp_path / "none.toml").write_text("")

    def approvals(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "plugin", "approvals", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    everything = approvals()
    assert f"Verified {OBJ}/{RECORD}" in everything.replace("  ", " ")
    blocked = approvals("--blocked")
    assert "Blocked" in blocked and "by Jane Doe" in blocked and RECORD not in blocked
    assert approvals("--pending").strip() == "no Pending approvals"
    listed = json.loads(approvals("--json"))
    assert {r["verdict"] for r in listed} == {"Verified", "Blocked"}


def test_a_form_with_a_15_character_id_and_the_crm_change_meet(db_url: str, tmp_path: Path) -> None:
    config = configure(db_url, tmp_path)
    short = form(T0, record=RECORD[:15])
    from plugin.identity import canonical_event

    run(config, [canonical_event(short), status_change(T0 + timedelta(minutes=1), actor=FLOW_USER)])
    engine = get_engine(config.storage.url)
    with engine.connect() as conn:
        keys = set(conn.execute(sa.text("SELECT DISTINCT ordering_key FROM inbox")).scalars())
    assert keys == {f"{OBJ}/{RECORD}"}
