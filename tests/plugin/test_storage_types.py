"""UtcDateTime's SQLite text: written and read by isoformat/fromisoformat in C, it must be the
text SQLAlchemy's own DATETIME processors write, and read back as the same instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.storage import UtcDateTime


class _SqlAlchemysOwn(UtcDateTime):
    """The type as it was: SQLAlchemy's processors around process_bind/result_value."""

    cache_ok = True
    bind_processor = sa.types.TypeDecorator.bind_processor  # type: ignore[assignment]
    result_processor = sa.types.TypeDecorator.result_processor  # type: ignore[assignment]


@pytest.fixture(scope="module")
def table() -> Any:
    engine = sa.create_engine("sqlite://")
    meta = sa.MetaData()
    t = sa.Table(
        "t",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("own", _SqlAlchemysOwn()),
        sa.Column("fast", UtcDateTime()),
    )
    meta.create_all(engine)
    return engine, t


instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
) | st.builds(
    lambda d, minutes: d.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2200, 12, 30)),
    st.integers(-14 * 60, 14 * 60),
)


@settings(max_examples=300, deadline=None)
@given(value=instants)
def test_the_text_written_is_sqlalchemys_and_reads_back_as_the_same_instant(
    table: Any, value: datetime
) -> None:
    engine, t = table
    with engine.begin() as conn:
        row_id = conn.execute(t.insert().values(own=value, fast=value)).inserted_primary_key[0]
        own, fast = conn.execute(sa.text("SELECT own, fast FROM t WHERE id = :i"), {"i": row_id}).one()
        assert fast == own
        read_own, read_fast = conn.execute(sa.select(t.c.own, t.c.fast).where(t.c.id == row_id)).one()
    assert read_fast == read_own == value
    assert read_fast.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    ["2026-11-28 14:55:15", "2026-11-28 14:55:15.5", "2026-11-28 14:55:15.000000", "2026-11-28"],
)
def test_text_written_by_hand_reads_as_sqlalchemy_reads_it(table: Any, text: str) -> None:
    engine, t = table
    with engine.begin() as conn:
        row_id = conn.execute(t.insert().values(own=None, fast=None)).inserted_primary_key[0]
        conn.execute(sa.text("UPDATE t SET own = :v, fast = :v WHERE id = :i"), {"v": text, "i": row_id})
        own, fast = conn.execute(sa.select(t.c.own, t.c.fast).where(t.c.id == row_id)).one()
    assert fast == own


def test_a_naive_datetime_is_refused(table: Any) -> None:
    engine, t = table
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), engine.begin() as conn:
        conn.execute(t.insert().values(fast=datetime(2026, 11, 28)))


def test_threads_sharing_the_bind_processor_each_get_their_own_values_text() -> None:
    # The processor keeps its last value's text; threads share it (one per engine and type).
    import threading

    from sqlalchemy.dialects import sqlite

    process = UtcDateTime().bind_processor(sqlite.dialect())
    assert process is not None
    wrong: list[tuple[datetime, str]] = []

    def bind(offset: int) -> None:
        values = [
            datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=offset * 10_000 + i) for i in range(50)
        ]
        for v in values:
            for _ in range(40):  # the same object again and again: the kept text is what answers
                text = process(v)
                if text != v.isoformat(" ", "microseconds")[:26]:
                    wrong.append((v, text))

    threads = [threading.Thread(target=bind, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_the_worker_checkpoints_the_wal_not_the_committers(tmp_path: Any) -> None:
    from plugin import migrate
    from plugin.storage import WAL_AUTOCHECKPOINT_PAGES, begin_write, checkpoint_wal, make_engine, rule_state

    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    migrate.upgrade(engine)
    with engine.connect() as conn:
        # The threshold at which a commit copies the WAL itself: kept small (a large WAL slows
        # every reader and writer), the worker's checkpoints taking most of the copying.
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == WAL_AUTOCHECKPOINT_PAGES <= 1000
    now = datetime(2026, 11, 28, tzinfo=UTC)
    with begin_write(engine) as conn:
        conn.execute(
            rule_state.insert(),
            [{"key": f"k{i}", "value": {"v": "x" * 500}, "updated_at": now} for i in range(500)],
        )
    assert checkpoint_wal(engine) > 0  # copied into the database file ...
    with engine.connect() as conn:
        busy, in_wal, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
    assert busy == 0 and in_wal == copied > 0  # ... all of it
