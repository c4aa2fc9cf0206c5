"""On SQLite the worker converts its store's parameters before taking the write lock
(plugin.worker.prepare): the rows it stores must be, byte for byte, what SQLAlchemy stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from plugin import migrate
from plugin.events import CrmWrite, Event, Fact, Outcome, Timer
from plugin.storage import begin_write, make_engine
from plugin.worker import _Staged, prepare

NOW = datetime(2026, 11, 28, 15, 0, 0, 123456, tzinfo=UTC)
TABLES = ("rule_state", "outbox", "timers", "facts")


def _staged() -> tuple[_Staged, dict[str, Any]]:
    staged = _Staged()
    event = Event(
        source="test",
        delivery_id="d1",
        kind="record.changed",
        occurred_at=NOW - timedelta(seconds=3),
        object="Opportunity",
        record_id="006000000000001AAA",
        actor="u1",
        sender="t",
        inbox_id=7,
    )
    outcome = Outcome(
        writes=[CrmWrite(object="Opportunity", record_id="006000000000001AAA", fields={"A": 1.5, "B": None})],
        timers=[Timer(key="k", due_at=NOW.astimezone(timezone(timedelta(hours=2))), data={"x": [1, "é"]})],
        facts=[Fact(kind="login", key="f1", person="u1", occurred_at=NOW, data={"n": 2**70}, retracted=True)],
    )
    staged.add("rule", outcome, event, NOW, lambda _write: "salesforce")
    changes = {"s:1": {"values": {"Amount": 120000, "Name": "Acme \ud83d\ude00"}}, "s:2": ["a", None, True]}
    return staged, changes


def _stored(path: Path, prepared: bool) -> dict[str, list[tuple[Any, ...]]]:
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    staged, changes = _staged()
    writes = staged.writes("sqlite", changes, NOW)
    if prepared:
        writes = [prepare(engine.dialect, w) for w in writes]
        assert all(w.sql is not None for w in writes)
    with begin_write(engine) as conn:
        for w in writes:
            w.execute(conn)
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1")] for t in TABLES}  # noqa: S608


def test_prepared_rows_are_what_sqlalchemy_stores(tmp_path: Path) -> None:
    by_sqlalchemy = _stored(tmp_path / "a.db", prepared=False)
    prepared = _stored(tmp_path / "b.db", prepared=True)
    assert all(by_sqlalchemy[t] for t in TABLES)  # every table written
    assert prepared == by_sqlalchemy


def test_elsewhere_the_write_is_left_to_sqlalchemy() -> None:
    from sqlalchemy.dialects import postgresql

    staged, changes = _staged()
    for w in staged.writes("postgresql", changes, NOW):
        assert prepare(postgresql.dialect(), w) is w
