"""The sequencer's append: few statements, and the same refusals as a proof read from the store.

An append reads what it starts from in one statement and checks the previous checkpoint by a
consistency proof built from that read (the old tree's right edge) and the leaves it appends.
These tests hold it to the stored proof it replaces, and to refusing any change another
connection makes to what the proof covers.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from plugin import migrate
from plugin.provenance import merkle
from plugin.provenance.keys import SigningKey
from plugin.provenance.log import (
    LogCorrupted,
    _check_extends,
    consistency,
    envelope_text,
    integrate,
    leaf_hashes,
    root_at,
)
from plugin.provenance.rule import pending_key
from plugin.provenance.verify import verify_checkpoints
from plugin.storage import (
    begin_write,
    get_engine,
    provenance_checkpoints,
    provenance_statements,
    provenance_tree,
    rule_state,
)

ORIGIN = "onrecord.local/provenance"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def envelope(n: int) -> str:
    return json.dumps({"payload": f"statement {n}"})


def add_statements(engine: sa.Engine, first: int, count: int) -> None:
    """Unlogged statements, as the API leaves citations."""
    with begin_write(engine) as conn:
        conn.execute(
            provenance_statements.insert(),
            [
                {
                    "kind": "citation",
                    "object": "Opportunity",
                    "record_id": f"r{n}",
                    "digest": hashlib.sha256(str(n).encode()).hexdigest(),
                    "envelope": envelope(n),
                    "recorded_at": NOW,
                }
                for n in range(first, first + count)
            ],
        )


def grown(db_url: str, key: SigningKey, *batches: int) -> sa.Engine:
    engine = get_engine(db_url)
    migrate.upgrade(engine)
    total = 0
    for count in batches:
        add_statements(engine, total, count)
        total += count
        integrate(engine, key, ORIGIN, NOW)
    return engine


def test_the_proof_from_the_right_edge_is_the_stored_proof() -> None:
    """Every node a consistency proof takes from the old tree is on its right edge; the rest are
    new leaves or nodes over them (what `_check_extends` relies on), for every pair of sizes."""
    leaves = [merkle.leaf_hash(str(n).encode()) for n in range(200)]
    full = merkle.Tree(leaves)
    for old in range(1, 100):
        edge = full.hashes(merkle.range_nodes(0, old)).items()
        for new in range(old + 1, min(old + 40, 200) + 1):
            frontier, completed = merkle.append_leaves(list(edge), old, leaves[old:new])
            root = merkle.fold([h for _, h in frontier])
            assert root == full.root(new)
            _check_extends(list(edge), leaves[old:new], completed, full.root(old), new, root)
            with pytest.raises(LogCorrupted, match=f"first {old} leaves"):
                _check_extends(list(edge), leaves[old:new], completed, full.root(old - 1), new, root)
            for changed in dict(edge):  # the right edge as a changed store would give it
                forged = [(node, merkle.leaf_hash(b"x") if node == changed else h) for node, h in edge]
                frontier, completed = merkle.append_leaves(forged, old, leaves[old:new])
                forged_root = merkle.fold([h for _, h in frontier])
                with pytest.raises(LogCorrupted, match=f"first {old} leaves"):
                    _check_extends(forged, leaves[old:new], completed, full.root(old), new, forged_root)


def statements_of_one_append(engine: sa.Engine, key: SigningKey, size: int) -> list[str]:
    add_statements(engine, size, 1)
    sent: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        sent.append(" ".join(statement.split()[:3]))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert integrate(engine, key, ORIGIN, NOW).tree_size == size + 1
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return [s for s in sent if s != "BEGIN IMMEDIATE"]


def test_an_append_is_one_read_one_audit_and_its_writes(db_url: str) -> None:
    key = SigningKey.generate()
    engine = grown(db_url, key, 300)
    reads = [
        "WITH n(size) AS",  # newest checkpoint, size, unlogged, pending?, right edge
        "SELECT -1 AS",  # the audit window and the nodes over it
    ]
    if "postgres" in db_url:  # the lock, and the writes in one statement
        lock = ["SELECT pg_advisory_xact_lock(%s), set_config('enable_bitmapscan',"]
        assert statements_of_one_append(engine, key, 300) == [*lock, *reads, "WITH logged AS"]
        assert statements_of_one_append(engine, key, 301) == [*lock, *reads, "WITH logged AS"]
        return
    leaf, checkpoint = "UPDATE provenance_statements SET", "INSERT INTO provenance_checkpoints"
    assert statements_of_one_append(engine, key, 300) == [*reads, leaf, checkpoint]
    # 301 -> 302 completes (1, 150): one more statement, the new node
    assert statements_of_one_append(engine, key, 301) == [
        *reads,
        leaf,
        "INSERT INTO provenance_tree",
        checkpoint,
    ]


@pytest.mark.parametrize("size", [300, 301])
def test_another_connection_changing_the_right_edge_is_refused(db_url: str, size: int) -> None:
    """Each node of the tree's right edge (and its last leaf, when the size is odd), changed or
    removed by another connection after the checkpoint was signed: no checkpoint is signed."""
    key = SigningKey.generate()
    engine = grown(db_url, key, size)
    add_statements(engine, size, 1)
    for level, index in merkle.range_nodes(0, size):
        values: dict[str, object]
        if level == 0:
            where = provenance_statements.c.log_index == index
            table, values, restore = provenance_statements, {"leaf_hash": "ab" * 32}, "leaf_hash"
        else:
            where = sa.and_(provenance_tree.c.level == level, provenance_tree.c.idx == index)
            table, values, restore = provenance_tree, {"hash": b"\x66" * 32}, "hash"
        with engine.connect() as conn:
            kept = conn.execute(sa.select(table.c[restore]).where(where)).scalar_one()
        with begin_write(engine) as conn:
            assert conn.execute(table.update().where(where).values(**values)).rowcount == 1
        with pytest.raises(LogCorrupted, match=f"first {size} leaves no longer match"):
            integrate(engine, key, ORIGIN, NOW, audit=0)
        if level > 0:
            with begin_write(engine) as conn:
                conn.execute(table.delete().where(where))
            with pytest.raises(LogCorrupted, match=rf"lost the node \({level}, {index}\)"):
                integrate(engine, key, ORIGIN, NOW, audit=0)
            with begin_write(engine) as conn:
                conn.execute(provenance_tree.insert().values(level=level, idx=index, hash=kept))
        else:
            with begin_write(engine) as conn:
                conn.execute(table.update().where(where).values(leaf_hash=kept))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(provenance_checkpoints.c.tree_size))).scalar() == size
    assert integrate(engine, key, ORIGIN, NOW).tree_size == size + 1  # all restored: it signs


def test_leaves_logged_after_the_newest_checkpoint_are_checked_from_the_store(db_url: str) -> None:
    """A log whose newest checkpoint is older than its last leaf (as one from before the stored
    tree): the proof is read from the store, and a changed node under the old checkpoint refused."""
    key = SigningKey.generate()
    engine = grown(db_url, key, 90, 10)
    with begin_write(engine) as conn:
        conn.execute(provenance_checkpoints.delete().where(provenance_checkpoints.c.tree_size == 100))
        old_note = conn.execute(
            sa.select(provenance_checkpoints.c.note).where(provenance_checkpoints.c.tree_size == 90)
        ).scalar_one()
    add_statements(engine, 100, 1)
    with begin_write(engine) as conn:  # (4, 4): under the checkpoint of 90 (its right edge)
        conn.execute(
            provenance_tree.update()
            .where(provenance_tree.c.level == 4, provenance_tree.c.idx == 4)
            .values(hash=b"\x66" * 32)
        )
    with pytest.raises(LogCorrupted, match="first 90 leaves no longer match"):
        integrate(engine, key, ORIGIN, NOW, audit=0)
    with engine.connect() as conn:
        right = merkle.Tree(leaf_hashes(conn, 101)).hashes([(4, 4)])[(4, 4)]
    with begin_write(engine) as conn:
        conn.execute(
            provenance_tree.update()
            .where(provenance_tree.c.level == 4, provenance_tree.c.idx == 4)
            .values(hash=right)
        )
    result = integrate(engine, key, ORIGIN, NOW)
    assert (result.added, result.tree_size) == (1, 101)
    with engine.connect() as conn:
        hashes = [h.hex() for h in consistency(conn, 90, 101)]
        assert root_at(conn, 101) == merkle.Tree(leaf_hashes(conn, 101)).root()
    assert verify_checkpoints(old_note, result.note, hashes, {"k": key.public}).consistent


def pending_value(n: int) -> dict[str, object]:
    statement = {"payloadType": "application/vnd.in-toto+json", "payload": f"record statement {n}"}
    return {
        "object": "Opportunity",
        "record_id": "0065g00000AcmeAAA",
        "sequence": n,
        "digest": hashlib.sha256(f"record {n}".encode()).hexdigest(),
        "envelope": statement,
    }


def test_pending_statements_follow_the_unlogged_ones_and_are_written_once(db_url: str) -> None:
    key = SigningKey.generate()
    engine = grown(db_url, key, 5)
    add_statements(engine, 5, 3)  # citations: log indices 5, 6, 7
    with begin_write(engine) as conn:  # left by the rule, oldest first by updated_at: 2, 1
        conn.execute(
            rule_state.insert(),
            [
                {
                    "key": pending_key("Opportunity", "0065g00000AcmeAAA", n),
                    "value": pending_value(n),
                    "updated_at": at,
                }
                for n, at in ((1, NOW + timedelta(seconds=2)), (2, NOW + timedelta(seconds=1)))
            ],
        )
    updated: list[int] = []  # ids of the statements given a log index by an UPDATE

    def record(
        _conn: object, _cursor: object, statement: str, params: Any, _ctx: object, _many: bool
    ) -> None:
        if statement.startswith("UPDATE provenance_statements"):  # SQLite: (index, hash, id) rows
            updated.extend(row[2] for row in params)
        elif statement.startswith("WITH logged AS"):  # PostgreSQL: the ids as the first array
            updated.extend(params[0])

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        result = integrate(engine, key, ORIGIN, NOW)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert (result.added, result.tree_size) == (5, 10)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                provenance_statements.c.id,
                provenance_statements.c.log_index,
                provenance_statements.c.kind,
                provenance_statements.c.sequence,
                provenance_statements.c.envelope,
                provenance_statements.c.leaf_hash,
            ).order_by(provenance_statements.c.log_index)
        ).all()
        assert conn.execute(sa.select(sa.func.count()).select_from(rule_state)).scalar() == 0
        leaves = leaf_hashes(conn, 10)
        assert root_at(conn, 10) == merkle.Tree(leaves).root()
    assert sorted(updated) == [r.id for r in rows[5:8]]  # the citations only: records written once
    assert [(r.log_index, r.kind, r.sequence) for r in rows[5:]] == [
        (5, "citation", None),
        (6, "citation", None),
        (7, "citation", None),
        (8, "record", 2),
        (9, "record", 1),
    ]
    assert rows[8].envelope == envelope_text(pending_value(2)["envelope"])  # type: ignore[arg-type]
    assert all(r.leaf_hash == merkle.leaf_hash(r.envelope.encode()).hex() for r in rows)


@pytest.mark.postgres
def test_the_sequencers_planner_setting_ends_with_its_transaction(postgres_url: str) -> None:
    """Bitmap scans are off for the sequencer's transaction only (set_config(..., true)), not for
    whatever the pooled connection does next."""
    key = SigningKey.generate()
    engine = grown(postgres_url, key, 3)
    add_statements(engine, 3, 1)
    integrate(engine, key, ORIGIN, NOW)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW enable_bitmapscan").scalar() == "on"


@pytest.mark.postgres
def test_the_unlogged_statements_are_found_by_a_plain_index_scan(postgres_url: str) -> None:
    """In the sequencer's transaction the `log_index IS NULL` lookup is an index scan, which marks
    the NULL entries of logged statements' old row versions dead as it passes (a bitmap scan
    would visit every one of them again on every pass until VACUUM)."""
    from plugin.provenance.log import _PG_LOCK, _PG_LOCK_ID, _state_sql

    key = SigningKey.generate()
    engine = grown(postgres_url, key, 40)
    with begin_write(engine) as conn:
        conn.exec_driver_sql(_PG_LOCK, (_PG_LOCK_ID,))
        plan = "\n".join(
            row[0]
            for row in conn.exec_driver_sql(
                "EXPLAIN " + _state_sql("postgresql"), ("provenance:pending:", "provenance:pending;")
            )
        )
    assert "Bitmap" not in plan, plan
