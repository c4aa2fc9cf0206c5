"""Salesforce end to end: outbound messages into real gunicorn, the real worker applies the rules,
the CRM writes reach the Salesforce emulator through sObject Collections — with faults injected
at the emulator, and not one write lost or doubled."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest
import requests
import sqlalchemy as sa
from lxml import etree

from plugin.storage import get_engine, inbox, outbox
from tests.conftest import TEST_SECRET
from tests.connectors.salesforce.emulated_org import CLIENT_ID, connect, key_file
from tests.connectors.salesforce.outbound_messages import (
    OPPORTUNITY_WSDL,
    ORG_ID,
    OUTBOUND,
    SOAP11,
    notification_id,
    opportunities,
)
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair
from tests.support.processes import Process, Server, onrecord_env, wait_for

pytestmark = pytest.mark.slow

TOKEN = "e2e-outbound-token-0123456789abcdef"


RECORDS = 200


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return make_consumer_keypair()


@pytest.fixture
def emu(keypair: KeyPair) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator() as emulator:
        connect(emulator, keypair)
        yield emulator
    assert emulator.errors == []


def environment(emu: SalesforceEmulator, keypair: KeyPair, sqlite_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment an admin sets for the Salesforce connector, pointed at the emulator."""
    env = onrecord_env(
        sqlite_url,
        tmp_path / "var",
        TEST_SECRET,
        ONRECORD_SALESFORCE__CLIENT_ID=CLIENT_ID,
        ONRECORD_SALESFORCE__USERNAME=emu.username,
        ONRECORD_SALESFORCE__LOGIN_URL=emu.base_url,
        ONRECORD_SALESFORCE__CA_BUNDLE=emu.ca_path,
        ONRECORD_SALESFORCE__ORG_ID=ORG_ID,
        ONRECORD_SALESFORCE__OUTBOUND_TOKEN=TOKEN,
        ONRECORD_SALESFORCE__INTEGRATION_USER_ID=emu.user_id(),
        ONRECORD_SALESFORCE__OUTBOUND_WSDLS=json.dumps([str(OPPORTUNITY_WSDL)]),
        ONRECORD_SALESFORCE__TIMEOUT_SECONDS=2,
        ONRECORD_SALESFORCE__POLL_LOGINS_INTERVAL_SECONDS=0,
        ONRECORD_DISPATCH__BACKOFF_BASE_SECONDS=0.05,
        ONRECORD_DISPATCH__BACKOFF_MAX_SECONDS=0.5,
        ONRECORD_DISPATCH__MAX_ATTEMPTS=20,
        # The trap the writer avoids: requests would let this override the configured CA bundle.
        REQUESTS_CA_BUNDLE=certifi.where(),
    )
    # An ONRECORD_..._FILE variable is read as a secret's file, so the key's path goes in the file.
    config = Path(env["ONRECORD_CONFIG"])
    config.write_text(f'[salesforce]\nprivate_key_file = "{key_file(keypair, tmp_path)}"\n')
    return env


def post(server: Server, body: bytes) -> requests.Response:
    url = f"{server.url}/hooks/salesforce/outbound?token={TOKEN}"
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
    return requests.post(url, data=body, headers=headers, timeout=30)


def acked(resp: requests.Response) -> bool:
    root = etree.fromstring(resp.content)
    ack = root.findtext(f"{{{SOAP11}}}Body/{{{OUTBOUND}}}notificationsResponse/{{{OUTBOUND}}}Ack")
    return resp.status_code == 200 and ack == "true"


def count(engine: sa.Engine, stmt: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar() or 0)


def test_outbound_messages_reach_salesforce_through_collections_despite_faults(
    emu: SalesforceEmulator, keypair: KeyPair, sqlite_url: str, tmp_path: Path
) -> None:
    ids = [emu.insert_record("Opportunity", {"Name": f"Deal {i}"}) for i in range(RECORDS)]
    env = environment(emu, keypair, sqlite_url, tmp_path)
    server = Server(env, tmp_path / "serve.log")
    worker = Process(["worker"], env, tmp_path / "worker.log")
    engine = get_engine(sqlite_url)

    def written(expected: dict[str, tuple[int, str]]) -> bool:
        return all(
            (r := emu.record("Opportunity", rid)) is not None
            and (r.get("Count__c"), r.get("Last_Delivery__c")) == want
            for rid, want in expected.items()
        )

    try:
        first = opportunities(100, record_ids=ids[:100])
        assert acked(post(server, first))
        wait_for(lambda: written({ids[n]: (1, notification_id(n)) for n in range(100)}), timeout=60)

        # Now the org misbehaves: the session expires, two calls answer 503, ten rows are locked
        # for two attempts, and one answer comes after the writer's 2 s timeout.
        emu.expire_sessions()
        emu.fail_next(2, status=503)
        emu.lock_rows("Opportunity", ids[100:110], attempts=2)
        emu.slow_down(3.0, count=1)
        assert acked(post(server, opportunities(100, batch=1, record_ids=ids[100:])))
        assert acked(post(server, first))  # Salesforce re-sends a message: stored once
        assert acked(post(server, opportunities(50, batch=2, record_ids=ids[:50])))  # second changes

        expected = {ids[n]: (2, notification_id(n, batch=2)) for n in range(50)}
        expected |= {ids[n]: (1, notification_id(n)) for n in range(50, 100)}
        expected |= {ids[100 + n]: (1, notification_id(n, batch=1)) for n in range(100)}
        wait_for(lambda: written(expected), timeout=90)
        sent = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status == "sent")
        wait_for(lambda: count(engine, sent) == 250, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker log:\n{worker.output()[-3000:]}") from exc
    finally:
        server.stop()
        worker.stop()

    # Nothing lost, nothing doubled: one inbox row per notification, one outbox row per event,
    # every one sent, none dead, and no record created by a retried write.
    assert count(engine, sa.select(sa.func.count()).select_from(inbox)) == 250
    assert count(engine, sa.select(sa.func.count()).select_from(inbox).where(inbox.c.status != "done")) == 0
    assert count(engine, sa.select(sa.func.count()).select_from(outbox)) == 250
    assert count(engine, sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status != "sent")) == 0
    assert len(emu.records("Opportunity")) == RECORDS
    # The faults did happen, and the writes went out as sObject Collections of up to 200 records.
    statuses = [c.status for c in emu.calls]
    assert 401 in statuses and statuses.count(503) == 2
    log = (tmp_path / "worker.log").read_text()
    assert "within 2s" in log  # the slow answer timed out, and its write went out again
    collections = [c for c in emu.calls if c.path.endswith("/composite/sobjects") and c.status == 200]
    assert collections and max(c.records for c in collections) <= 200
    assert sum(c.records for c in collections) >= 250
