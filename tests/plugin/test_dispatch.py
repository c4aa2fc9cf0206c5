"""The dispatcher: few calls, coalesced writes, retries with backoff, dead letters with the CRM's error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import plugin.dispatch
from plugin import migrate
from plugin.config import Config
from plugin.crm import CrmError, CrmPaused, RecordResult, WriteBatch
from plugin.dispatch import Dispatcher
from plugin.dryrun import DryRunWriter
from plugin.storage import begin_write, get_engine, outbox

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


class ScriptedWriter:
    """Records every batch; `script` decides each record's result (default: ok)."""

    name = "scripted"

    def __init__(self, script: Callable[[str, int], RecordResult] | None = None) -> None:
        self.batches: list[WriteBatch] = []
        self.script = script or (lambda key, call: RecordResult(ok=True))
        self.raise_next: list[Exception] = []

    def ready(self) -> tuple[bool, str]:
        return True, "scripted"

    def write_batch(self, batch: WriteBatch) -> list[RecordResult]:
        self.batches.append(batch)
        if self.raise_next:
            raise self.raise_next.pop(0)
        return [self.script(r.record_key, len(self.batches)) for r in batch.records]

    def read_fields(self, object: str, record_id: str, fields: Any) -> dict[str, Any] | None:
        return None


@pytest.fixture
def engine(config: Config) -> sa.Engine:
    eng = get_engine(config.storage.url)
    migrate.upgrade(eng)
    return eng


def enqueue(
    engine: sa.Engine,
    writes: list[tuple[str, dict[str, Any]]],
    *,
    object: str = "Opportunity",
    start: datetime = T0,
    operation: str = "update",
    ext: str | None = None,
) -> None:
    rows = [
        {
            "target": "crm",
            "object": object,
            "record_key": key,
            "operation": operation,
            "external_id_field": ext,
            "payload": fields,
            "occurred_at": start + timedelta(milliseconds=i),
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": start,
            "created_at": start,
        }
        for i, (key, fields) in enumerate(writes)
    ]
    with begin_write(engine) as conn:
        conn.execute(outbox.insert(), rows)


def rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(outbox).order_by(outbox.c.id)))


def dispatcher(engine: sa.Engine, writer: Any, **kw: Any) -> Dispatcher:
    return Dispatcher(engine, writer, owner="test-dispatcher", **kw)


def test_1000_writes_to_1000_records_take_at_most_5_calls(engine: sa.Engine) -> None:
    enqueue(engine, [(f"rec{i:04d}", {"Amount": i}) for i in range(1000)])
    writer = ScriptedWriter()
    result = dispatcher(engine, writer).run_once(T0)
    assert result.calls == len(writer.batches) <= 5
    assert result.sent == 1000 and all(len(b.records) <= 200 for b in writer.batches)
    assert {r.status for r in rows(engine)} == {"sent"}


def test_50_writes_to_one_field_of_one_record_reach_the_crm_as_one(engine: sa.Engine) -> None:
    enqueue(engine, [("rec1", {"Amount": i}) for i in range(50)])
    writer = ScriptedWriter()
    dispatcher(engine, writer).run_once(T0)
    assert len(writer.batches) == 1
    (record,) = writer.batches[0].records
    assert record.record_key == "rec1" and dict(record.fields) == {"Amount": 49}  # latest occurrence wins


def test_coalescing_merges_fields_and_the_latest_occurrence_wins_per_field(engine: sa.Engine) -> None:
    enqueue(
        engine,
        [("rec1", {"Amount": 1, "StageName": "A"}), ("rec1", {"Amount": 2}), ("rec1", {"CloseDate": "x"})],
    )
    writer = ScriptedWriter()
    dispatcher(engine, writer).run_once(T0)
    assert dict(writer.batches[0].records[0].fields) == {"Amount": 2, "StageName": "A", "CloseDate": "x"}


def test_upserts_are_batched_per_object_and_external_id_field(engine: sa.Engine) -> None:
    enqueue(
        engine,
        [("k1", {"Score__c": 1})],
        object="OnRecord_Leader_Signal__c",
        operation="upsert",
        ext="OnRecord_Key__c",
    )
    enqueue(engine, [("006A", {"Amount": 1})])
    writer = ScriptedWriter()
    dispatcher(engine, writer).run_once(T0)
    by_object = {b.object: b for b in writer.batches}
    assert by_object["OnRecord_Leader_Signal__c"].operation == "upsert"
    assert by_object["OnRecord_Leader_Signal__c"].external_id_field == "OnRecord_Key__c"
    assert by_object["Opportunity"].operation == "update"


def test_retryable_failures_back_off_then_succeed(engine: sa.Engine) -> None:
    def script(key: str, call: int) -> RecordResult:
        if key == "locked" and call == 1:
            return RecordResult(
                ok=False, retryable=True, error="UNABLE_TO_LOCK_ROW: unable to obtain exclusive access"
            )
        return RecordResult(ok=True)

    enqueue(engine, [("locked", {"Amount": 1}), ("free", {"Amount": 2})])
    writer = ScriptedWriter(script)
    d = dispatcher(engine, writer, backoff_base_seconds=10)
    first = d.run_once(T0)
    assert (first.sent, first.retried) == (1, 1)
    locked = next(r for r in rows(engine) if r.record_key == "locked")
    assert locked.status == "pending" and locked.attempts == 1 and "UNABLE_TO_LOCK_ROW" in locked.last_error
    wait = (locked.next_attempt_at - datetime.now(UTC)).total_seconds()
    assert 4 <= wait <= 10  # 10 s ceiling, jitter in its upper half
    assert d.run_once(T0 + timedelta(seconds=1)).calls == 0  # not yet due
    assert d.run_once(locked.next_attempt_at + timedelta(seconds=1)).sent == 1
    assert {r.status for r in rows(engine)} == {"sent"}


def test_permanent_errors_are_dead_lettered_with_the_crms_message(engine: sa.Engine) -> None:
    msg = "FIELD_CUSTOM_VALIDATION_EXCEPTION: Amount must be positive [Amount]"
    writer = ScriptedWriter(
        lambda key, call: RecordResult(ok=key != "bad", error="" if key != "bad" else msg)
    )
    enqueue(engine, [("bad", {"Amount": -1}), ("good", {"Amount": 1})])
    result = dispatcher(engine, writer).run_once(T0)
    assert (result.sent, result.dead) == (1, 1)
    bad = next(r for r in rows(engine) if r.record_key == "bad")
    assert bad.status == "dead" and bad.last_error == msg


def test_a_write_that_keeps_failing_is_dead_after_max_attempts(engine: sa.Engine) -> None:
    writer = ScriptedWriter()
    enqueue(engine, [("rec1", {"Amount": 1})])
    d = dispatcher(engine, writer, max_attempts=3, backoff_base_seconds=0.001, backoff_max_seconds=0.001)
    for _ in range(3):
        writer.raise_next.append(CrmError("503 Service Unavailable", retryable=True))
        d.run_once(datetime.now(UTC) + timedelta(seconds=1))
    (row,) = rows(engine)
    assert (row.status, row.attempts, row.last_error) == ("dead", 3, "503 Service Unavailable")


def test_a_paused_writer_postpones_without_spending_attempts(engine: sa.Engine) -> None:
    writer = ScriptedWriter()
    writer.raise_next.append(CrmPaused("API budget: 85% of the daily limit used"))
    enqueue(engine, [("rec1", {"Amount": 1})])
    d = dispatcher(engine, writer)
    d.run_once(T0)
    (row,) = rows(engine)
    assert row.status == "pending" and row.attempts == 0 and row.next_attempt_at > datetime.now(UTC)


def test_an_older_write_in_backoff_never_overwrites_a_newer_one(engine: sa.Engine) -> None:
    writer = ScriptedWriter(
        lambda key, call: RecordResult(ok=call > 1, retryable=True, error="UNABLE_TO_LOCK_ROW")
    )
    enqueue(engine, [("rec1", {"Amount": 1})])
    d = dispatcher(engine, writer, backoff_base_seconds=600)
    d.run_once(T0)  # fails; the row waits ~10 minutes
    enqueue(engine, [("rec1", {"Amount": 2})], start=datetime.now(UTC))
    d.run_once(datetime.now(UTC) + timedelta(seconds=1))  # the new row pulls the old one along
    assert [dict(r.fields) for r in writer.batches[1].records] == [{"Amount": 2}]
    assert {r.status for r in rows(engine)} == {"sent"}


def test_only_one_dispatcher_is_active_at_a_time(engine: sa.Engine) -> None:
    enqueue(engine, [("rec1", {"Amount": 1})])
    first, second = ScriptedWriter(), ScriptedWriter()
    assert dispatcher(engine, first).run_once(T0).calls == 1
    enqueue(engine, [("rec2", {"Amount": 1})])
    other = Dispatcher(engine, second, owner="other")
    assert other.run_once(T0).calls == 0 and second.batches == []
    assert other.run_once(datetime.now(UTC) + timedelta(minutes=5)).calls == 1  # after the lease expired


def test_dry_run_writer_records_calls_and_the_records_as_they_would_stand(engine: sa.Engine) -> None:
    enqueue(engine, [("rec1", {"Amount": 1, "StageName": "A"}), ("rec2", {"Amount": 5})])
    writer = DryRunWriter(engine)
    dispatcher(engine, writer).run_once(T0)
    enqueue(engine, [("rec1", {"Amount": 3})], start=datetime.now(UTC))
    dispatcher(engine, writer).run_once(datetime.now(UTC) + timedelta(seconds=1))
    calls = writer.calls()
    assert len(calls) == 2 and calls[0]["object"] == "Opportunity" and len(calls[0]["records"]) == 2
    assert writer.read_fields("Opportunity", "rec1", ["Amount", "StageName"]) == {
        "Amount": 3,
        "StageName": "A",
    }
    assert writer.read_fields("Opportunity", "nope", ["Amount"]) is None


def test_a_dispatcher_that_lost_its_lease_mid_pass_stops_sending(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueue(engine, [(f"rec{i:04d}", {"Amount": i}) for i in range(600)])
    clock = [1000.0]
    monkeypatch.setattr("plugin.dispatch.time.monotonic", lambda: clock[0])

    class SlowWriter(ScriptedWriter):
        def write_batch(self, batch: WriteBatch) -> list[RecordResult]:
            # This call takes an hour; meanwhile another worker takes the lease over (ours expired).
            clock[0] += 3600
            Dispatcher(engine, ScriptedWriter(), owner="usurper").run_once(T0 + timedelta(seconds=3590))
            return super().write_batch(batch)

    slow = SlowWriter()
    result = Dispatcher(engine, slow, owner="slow", lease_seconds=60).run_once(T0)
    assert len(slow.batches) == 1 and result.calls == 1  # it noticed and stopped after one call


def test_a_lease_is_renewed_once_a_third_of_it_has_passed_not_before_each_call(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueue(engine, [(f"rec{i:04d}", {"Amount": i}) for i in range(600)])
    renewals: list[tuple[str, datetime]] = []
    real = plugin.dispatch.hold_lease

    def counting(engine: sa.Engine, name: str, owner: str, at: datetime, duration: timedelta) -> bool:
        renewals.append((owner, at))
        return real(engine, name, owner, at, duration)

    monkeypatch.setattr(plugin.dispatch, "hold_lease", counting)
    d = Dispatcher(engine, ScriptedWriter(), owner="d", lease_seconds=60, batch_size=200)
    assert d.run_once(T0).calls == 3  # three calls, one renewal: the lease is fresh
    assert renewals == [("d", T0)]
    enqueue(engine, [("late", {"Amount": 1})], start=T0 + timedelta(seconds=21))
    assert d.run_once(T0 + timedelta(seconds=21)).calls == 1  # a third has passed: renewed
    assert renewals[-1] == ("d", T0 + timedelta(seconds=21))
    # Nobody else can take it while it is live; once it has expired and been taken, this one
    # asks again (more than a third has passed) and stands down.
    other = Dispatcher(engine, ScriptedWriter(), owner="e")
    assert other.run_once(T0 + timedelta(seconds=80)).calls == 0
    enqueue(engine, [("later", {"Amount": 2})], start=T0 + timedelta(seconds=90))
    assert other.run_once(T0 + timedelta(seconds=90)).calls == 1  # ours ran out at T0 + 81 s
    assert d.run_once(T0 + timedelta(seconds=95)).calls == 0
    assert renewals[-1] == ("d", T0 + timedelta(seconds=95))


def test_dry_run_knows_only_the_fields_it_wrote(engine: sa.Engine) -> None:
    # /api/verify compares live CRM values: the dry run must not claim a field it never saw is empty.
    enqueue(engine, [("rec1", {"OnRecord_Channel__c": "Form"})])
    writer = DryRunWriter(engine)
    dispatcher(engine, writer).run_once(T0)
    assert writer.read_fields("Opportunity", "rec1", ["Amount", "OnRecord_Channel__c"]) == {
        "OnRecord_Channel__c": "Form"
    }


def test_the_api_budget_and_a_pause_show_in_the_metrics(engine: sa.Engine) -> None:
    from prometheus_client import REGISTRY

    class BudgetWriter(ScriptedWriter):
        def api_usage(self) -> tuple[int, int]:
            return 8500, 10000

    writer = BudgetWriter()
    writer.raise_next.append(CrmPaused("API budget: 85% of daily limit used (8500/10000)"))
    enqueue(engine, [("rec1", {"Amount": 1})])
    dispatcher(engine, writer).run_once(T0)
    assert REGISTRY.get_sample_value("onrecord_crm_writes_paused") == 1
    assert REGISTRY.get_sample_value("onrecord_crm_api_used") == 8500
    assert REGISTRY.get_sample_value("onrecord_crm_api_limit") == 10000
    dispatcher(engine, writer).run_once(datetime.now(UTC) + timedelta(minutes=5))
    assert REGISTRY.get_sample_value("onrecord_crm_writes_paused") == 0
