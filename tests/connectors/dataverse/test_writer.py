"""The real DataverseWriter, through the Web API client, msal, requests and HTTPS, against the
Dataverse emulator; and once behind the real dispatcher, over SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.dataverse.wiring import build_dataverse_writer
from connectors.dataverse.writer import DataverseWriter
from plugin import migrate
from plugin.crm import CrmError, CrmPaused, CrmWriter, RecordWrite, WriteBatch
from plugin.dispatch import Dispatcher
from plugin.storage import begin_write, get_engine, outbox
from tests.connectors.dataverse.conftest import config_for
from tests.dvemu import DataverseEmulator
from tests.dvemu.model import provision

SIGNAL = "OnRecord_Leader_Signal__c"
VIOLATION = "OnRecord_Violation__c"
KEY = "OnRecord_Key__c"
SIGNALS = "onr_leader_signals"
VIOLATIONS = "onr_violations"

Factory = Callable[..., DataverseWriter]


@pytest.fixture
def make_writer(dataverse: DataverseEmulator, tmp_path: Path) -> Iterator[Factory]:
    made: list[DataverseWriter] = []

    def make(**overrides: Any) -> DataverseWriter:
        config = config_for(dataverse, f"sqlite:///{tmp_path}/onrecord.db", tmp_path, **overrides)
        writer = build_dataverse_writer(config)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close()


def signals(*keys: str, **fields: Any) -> WriteBatch:
    records = [
        RecordWrite(k, {"OnRecord_Score__c": 10, "OnRecord_Period__c": "2025-03", **fields}) for k in keys
    ]
    return WriteBatch(object=SIGNAL, operation="upsert", external_id_field=KEY, records=records)


def update(obj: str, *records: tuple[str, dict[str, Any]]) -> WriteBatch:
    return WriteBatch(obj, "update", None, [RecordWrite(k, f) for k, f in records])


def by_key(emu: DataverseEmulator, entity_set: str = SIGNALS) -> dict[str, dict[str, Any]]:
    return {r["onr_key"]: r for r in emu.records(entity_set)}


def data_calls(emu: DataverseEmulator) -> list[tuple[str, str]]:
    """Top-level writes and batches (not the metadata reads)."""
    return [
        (c.method, c.path.split("?")[0].removeprefix("/api/data/v9.2/"))
        for c in emu.api_calls()
        if c.method != "GET"
    ]


def inner(emu: DataverseEmulator) -> list[Any]:
    return [c for c in emu.calls if c.batch is not None]


# --- the protocol and the configuration ------------------------------------------------------------


def test_the_writer_is_a_crm_writer_built_from_the_dataverse_section(make_writer: Factory) -> None:
    writer: CrmWriter = make_writer(**{"dataverse.max_batch": 50})
    assert writer.name == "dataverse"
    assert isinstance(writer, DataverseWriter) and writer.max_batch == 50
    ok, why = writer.ready()
    assert ok and "application user" in why


def test_ready_says_why_not_when_the_sign_in_is_refused(make_writer: Factory) -> None:
    ok, why = make_writer(**{"dataverse.client_secret": "wrong"}).ready()
    assert not ok and "invalid_client" in why


# --- upserts ---------------------------------------------------------------------------------------


def test_records_go_as_one_batch_of_alternate_key_upserts_with_values_by_kind(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    leader = dataverse.add_user("Ann Leader")
    keys = [f"leader{i}-2025-03" for i in range(3)]
    fields = {
        "OnRecord_Leader__c": leader.upper(),
        "OnRecord_Period_Start__c": dt.datetime(2025, 3, 1, 0, 0, tzinfo=dt.UTC),
        "OnRecord_Logins__c": decimal.Decimal("4"),
        "OnRecord_Score__c": decimal.Decimal("72.5"),
        "OnRecord_Champion_Candidate__c": True,
    }
    results = make_writer().write_batch(signals(*keys, **fields))
    stored = by_key(dataverse)
    assert [r.crm_id for r in results] == [stored[k]["onr_leader_signalid"] for k in keys]
    assert all(r.ok and not r.error for r in results)
    row = stored[keys[0]]
    assert row["onr_leader"] == leader and row["onr_period_start"] == "2025-03-01"
    assert row["onr_logins"] == 4 and isinstance(row["onr_logins"], int)
    assert (
        row["onr_score"] == 72.5 and row["onr_champion_candidate"] is True and row["onr_period"] == "2025-03"
    )
    assert data_calls(dataverse) == [("POST", "$batch")]
    assert [(c.method, c.path) for c in inner(dataverse)] == [
        ("PATCH", f"/api/data/v9.2/{SIGNALS}(onr_key='{k}')") for k in keys
    ]
    assert all("If-Match" not in c.headers for c in inner(dataverse))  # an upsert may create
    assert all(c.headers["Mscrm.Suppressduplicatedetection"] == "true" for c in inner(dataverse))
    assert b'"onr_Leader@odata.bind": "/systemusers(' + leader.encode() + b')"' in inner(dataverse)[0].body


def test_upserting_the_same_keys_again_updates_instead_of_duplicating(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    writer = make_writer()
    first = writer.write_batch(signals("k1", "k2"))
    second = writer.write_batch(signals("k1", "K2", OnRecord_Score__c=99))
    assert [r.crm_id for r in first] == [r.crm_id for r in second]
    assert sorted(r["onr_score"] for r in dataverse.records(SIGNALS)) == [99, 99]


def test_keys_dataverse_cannot_take_in_a_url_are_looked_up_then_updated_or_created(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    leader = dataverse.add_user("Ann Leader")
    existing = f"{leader}:2025-02"  # the leader job's keys: "<leader>:<period>"
    dataverse.add_record(SIGNALS, {"onr_key": existing, "onr_score": 1})
    writer = make_writer()
    results = writer.write_batch(signals(existing.upper(), f"{leader}:2025-03", "plain-key"))
    assert all(r.ok for r in results)
    stored = by_key(dataverse)
    assert set(stored) == {existing, f"{leader}:2025-03", "plain-key"}  # no duplicate of `existing`
    assert (
        stored[existing]["onr_score"] == 10 and results[0].crm_id == stored[existing]["onr_leader_signalid"]
    )
    assert results[1].crm_id == stored[f"{leader}:2025-03"]["onr_leader_signalid"]
    sent = [(c.method, c.path) for c in inner(dataverse)]
    assert sent == [
        ("PATCH", f"/api/data/v9.2/{SIGNALS}({stored[existing]['onr_leader_signalid']})"),
        ("POST", f"/api/data/v9.2/{SIGNALS}"),
        ("PATCH", f"/api/data/v9.2/{SIGNALS}(onr_key='plain-key')"),
    ]
    assert inner(dataverse)[0].headers["If-Match"] == "*"
    assert not any(":" in c.path.split("(", 1)[-1] for c in inner(dataverse))
    again = writer.write_batch(signals(f"{leader}:2025-03", OnRecord_Score__c=50))
    assert again[0].crm_id == results[1].crm_id and len(dataverse.records(SIGNALS)) == 3


def test_a_quote_in_a_key_is_doubled(dataverse: DataverseEmulator, make_writer: Factory) -> None:
    (result,) = make_writer().write_batch(signals("O'Brien 2025-03"))
    assert result.ok and set(by_key(dataverse)) == {"O'Brien 2025-03"}
    assert data_calls(dataverse) == [("PATCH", f"{SIGNALS}(onr_key='O''Brien%202025-03')")]


# --- updates ---------------------------------------------------------------------------------------


def test_an_update_patches_by_id_with_if_match_and_renders_the_governed_fields(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    opp = dataverse.add_record("opportunities", {"name": "Budget 2025"})
    stamped = dt.datetime(2025, 3, 1, 10, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    fields = {
        "OnRecord_Approval__c": "Verified",
        "OnRecord_Channel__c": "Form",
        "OnRecord_Recorded_At__c": stamped.isoformat(),
        "OnRecord_Approval_Note__c": "Approved through the form.",
        "estimatedvalue": decimal.Decimal("5000.50"),
        "estimatedclosedate": dt.date(2025, 6, 30),
    }
    (result,) = make_writer().write_batch(update("Opportunity", (opp.upper(), fields)))  # logical: lower
    assert result.ok and result.crm_id == opp
    row = dataverse.record("opportunities", opp)
    assert row == {
        "opportunityid": opp,
        "name": "Budget 2025",
        "onr_approval": "Verified",  # a choice, written as its text
        "onr_channel": "Form",
        "onr_recorded_at": "2025-03-01T09:30:15Z",  # UTC, Z
        "onr_approval_note": "Approved through the form.",
        "estimatedvalue": 5000.5,
        "estimatedclosedate": "2025-06-30",
    }
    assert data_calls(dataverse) == [("PATCH", f"opportunities({opp})")]  # one record: no $batch
    assert dataverse.api_calls()[-1].headers["If-Match"] == "*"


def test_updating_a_row_that_is_gone_is_dead_and_creates_nothing(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    gone = "0b0e6c1e-54a1-4c7c-9d3c-000000000001"
    live = dataverse.add_record("opportunities", {"name": "Live"})
    results = make_writer().write_batch(
        update(
            "opportunity",
            (gone, {"OnRecord_Approval__c": "Blocked"}),
            (live, {"OnRecord_Approval__c": "Blocked"}),
        )
    )
    assert not results[0].ok and not results[0].retryable
    assert results[0].error == f"HTTP 404 0x80040217: opportunity With Id = {gone} Does Not Exist"
    assert results[1].ok and dataverse.record("opportunities", live)["onr_approval"] == "Blocked"  # type: ignore[index]
    assert dataverse.record("opportunities", gone) is None
    assert [c.headers["If-Match"] for c in inner(dataverse)] == ["*", "*"]


def test_an_update_by_something_that_is_not_a_row_id_is_dead_without_a_call(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    (result,) = make_writer().write_batch(update("opportunity", ("006Dn000001abcDEF", {"name": "x"})))
    assert not result.ok and not result.retryable and "not a Dataverse row id" in result.error
    assert data_calls(dataverse) == []


# --- per-record failures in a batch ---------------------------------------------------------------


def test_one_failing_record_fails_only_itself_with_dataverse_code_and_message(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    dataverse.fail_record("k2", "0x80040265", "Plug-in says no.")
    dataverse.fail_record("k3", "0x80072322", "Number of requests exceeded the limit.", status=429)
    dataverse.fail_record("k4", "0x80040216", "An unexpected error occurred.", status=500)
    results = make_writer().write_batch(signals("k1", "k2", "k3", "k4", "k5"))
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert (results[1].retryable, results[1].error) == (False, "HTTP 400 0x80040265: Plug-in says no.")
    assert results[2].retryable and "0x80072322" in results[2].error
    assert results[3].retryable and "HTTP 500 0x80040216" in results[3].error
    assert set(by_key(dataverse)) == {"k1", "k5"}
    (batch_call,) = [c for c in dataverse.api_calls() if c.path.endswith("$batch")]
    assert batch_call.headers["Prefer"] == "odata.continue-on-error"


def test_a_column_dataverse_does_not_have_is_dead_with_its_words(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    opp = dataverse.add_record("opportunities", {"name": "x"})
    (result,) = make_writer().write_batch(update("opportunity", (opp, {"Amount": 5})))
    assert not result.ok and not result.retryable
    assert "0x80048d19" in result.error and "The property 'Amount' does not exist" in result.error


def test_a_lookup_is_bound_only_to_a_user_id_and_cleared_by_null(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    actor = dataverse.add_user("Bob Approver")
    writer = make_writer()
    base = {"OnRecord_Record_Id__c": "x", "OnRecord_Actor_Name__c": "Bob Approver"}
    writer.write_batch(
        WriteBatch(VIOLATION, "upsert", KEY, [RecordWrite("v1", {**base, "OnRecord_Actor__c": actor})])
    )
    assert by_key(dataverse, VIOLATIONS)["v1"]["onr_actor"] == actor
    (kept,) = writer.write_batch(
        WriteBatch(
            VIOLATION, "upsert", KEY, [RecordWrite("v1", {**base, "OnRecord_Actor__c": "005Dn0000001xyz"})]
        )
    )
    assert kept.ok and by_key(dataverse, VIOLATIONS)["v1"]["onr_actor"] == actor  # not a user id: left alone
    writer.write_batch(WriteBatch(VIOLATION, "upsert", KEY, [RecordWrite("v1", {"OnRecord_Actor__c": None})]))
    assert by_key(dataverse, VIOLATIONS)["v1"]["onr_actor"] is None


def test_batches_are_cut_at_max_batch(dataverse: DataverseEmulator, make_writer: Factory) -> None:
    results = make_writer(**{"dataverse.max_batch": 2}).write_batch(signals(*[f"k{i}" for i in range(5)]))
    assert all(r.ok for r in results) and len(dataverse.records(SIGNALS)) == 5
    assert data_calls(dataverse) == [("POST", "$batch"), ("POST", "$batch"), ("POST", "$batch")]
    assert len(inner(dataverse)) == 5


def test_the_publisher_prefix_names_tables_and_columns(tmp_path: Path) -> None:
    with DataverseEmulator() as emu:
        provision(emu.state, prefix="abc")
        config = config_for(
            emu, f"sqlite:///{tmp_path}/x.db", tmp_path, **{"dataverse.publisher_prefix": "abc"}
        )
        writer = build_dataverse_writer(config)
        (result,) = writer.write_batch(signals("k1"))
        writer.close()
        assert result.ok and [r["abc_key"] for r in emu.records("abc_leader_signals")] == ["k1"]
    assert emu.errors == []


# --- whole-call failures and the budget -----------------------------------------------------------


def test_a_service_protection_pause_stops_writes_and_says_so(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    writer = make_writer()
    writer.write_batch(signals("k1"))
    dataverse.fail_next(1, status=429, retry_after=600)
    with pytest.raises(CrmPaused) as caught:
        writer.write_batch(signals("k2", "k3"))
    assert "0x80072322" in str(caught.value)
    sent = len(dataverse.calls)
    with pytest.raises(CrmPaused):
        writer.write_batch(signals("k4"))
    assert len(dataverse.calls) == sent
    ok, why = writer.ready()
    assert not ok and "service protection limit" in why


def test_a_table_that_is_not_provisioned_fails_the_call_for_good(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    with pytest.raises(CrmError) as caught:
        make_writer().write_batch(
            update("onr_nothing", ("0b0e6c1e-54a1-4c7c-9d3c-000000000001", {"name": "x"}))
        )
    assert not caught.value.retryable and "no table onr_nothing" in str(caught.value)


def test_api_usage_reports_the_service_protection_window(
    dataverse: DataverseEmulator, make_writer: Factory
) -> None:
    writer = make_writer()
    assert writer.api_usage() is None
    dataverse.set_requests_remaining(5001)
    writer.write_batch(signals("k1"))
    used, limit = writer.api_usage() or (0, 0)
    assert limit == 6000 and 1000 <= used <= 1010


# --- reading ---------------------------------------------------------------------------------------


def test_read_fields_answers_by_the_names_asked(dataverse: DataverseEmulator, make_writer: Factory) -> None:
    actor = dataverse.add_user("Bob")
    opp = dataverse.add_record("opportunities", {"name": "Budget", "onr_approval": "Pending"})
    violation = dataverse.add_record(VIOLATIONS, {"onr_key": "v1", "onr_actor": actor})
    writer = make_writer()
    assert writer.read_fields("opportunity", opp, ["OnRecord_Approval__c", "name"]) == {
        "OnRecord_Approval__c": "Pending",
        "name": "Budget",
    }
    assert writer.read_fields(VIOLATION, violation, ["OnRecord_Actor__c"]) == {"OnRecord_Actor__c": actor}
    assert writer.read_fields("opportunity", "0b0e6c1e-54a1-4c7c-9d3c-000000000001", ["name"]) is None
    assert writer.read_fields("opportunity", "not-an-id", ["name"]) is None


# --- behind the dispatcher -------------------------------------------------------------------------


def test_the_dispatcher_sends_outbox_rows_to_dataverse(
    dataverse: DataverseEmulator, db_url: str, tmp_path: Path
) -> None:
    config = config_for(dataverse, db_url, tmp_path)
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    opp = dataverse.add_record("opportunities", {"name": "Budget"})
    now = dt.datetime.now(dt.UTC)
    rows = [
        ("opportunity", opp, "update", None, {"OnRecord_Approval__c": "Pending"}),
        ("opportunity", opp, "update", None, {"OnRecord_Approval__c": "Verified"}),  # latest wins
        (SIGNAL, "leader1-2025-03", "upsert", KEY, {"OnRecord_Score__c": 61.5}),
        (SIGNAL, "leader2-2025-03", "upsert", KEY, {"OnRecord_Score__c": 40, "OnRecord_Nope__c": 1}),
    ]
    with begin_write(engine) as conn:
        conn.execute(
            outbox.insert(),
            [
                {
                    "target": "dataverse",
                    "object": obj,
                    "record_key": key,
                    "operation": op,
                    "external_id_field": ext,
                    "payload": payload,
                    "occurred_at": now + dt.timedelta(milliseconds=i),
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for i, (obj, key, op, ext, payload) in enumerate(rows)
            ],
        )
    writer = build_dataverse_writer(config)
    try:
        result = Dispatcher(engine, writer, owner="test").run_once(now + dt.timedelta(seconds=1))
    finally:
        writer.close()
    assert (result.sent, result.dead) == (3, 1)
    assert dataverse.record("opportunities", opp)["onr_approval"] == "Verified"  # type: ignore[index]
    assert by_key(dataverse)["leader1-2025-03"]["onr_score"] == 61.5
    with engine.connect() as conn:
        stored = {r.record_key: r for r in conn.execute(sa.select(outbox)) if r.object == SIGNAL}
    dead = stored["leader2-2025-03"]
    assert dead.status == "dead" and "0x80048d19" in dead.last_error and "onr_nope" in dead.last_error
    assert stored["leader1-2025-03"].status == "sent"
