"""The append-only log of every signed statement: sequencing, stored tree, proofs, checkpoints.

The provenance rule leaves each signed statement in rule state (`provenance:pending:...`), and
the API stores citations directly with no log index. `integrate` is the log's sequencer: in one
transaction (serialised across processes) it moves pending statements into
`provenance_statements`, gives every unlogged statement the next leaf index in id order, stores
the perfect subtrees the new leaves complete, and signs a checkpoint of the new tree. Leaf data is
the statement's DSSE envelope in RFC 8785 JSON, exactly as stored. It runs before the API answers
and for `log checkpoint`; the worker runs it as a job (`sequencer_jobs`).

Storage: level 0 of the RFC 6962 tree is `provenance_statements.leaf_hash` by `log_index`; every
perfect subtree of 2^level >= 2 leaves is one row of `provenance_tree` (level, idx, hash), written
once when it completes. A root, an inclusion proof or a consistency proof reads at most about
2·log2(n) of those rows (`StoredTree`), and an append reads the tree's right edge (log2(n) nodes)
and writes the nodes it completes, so no operation reads every leaf.

Before it signs, the sequencer checks that the signed past is unchanged:

- the newest signed checkpoint must follow from the stored nodes: a consistency proof from its
  size to the new one, built from the stored tree, must verify against its signed root and the
  new root (this covers the right edge, which every later root is built on);
- one window of 2^AUDIT_LEVEL leaves is derived again from the stored envelopes, with every stored
  node inside it and each node above it checked against its two children. The window moves on by
  one each pass (from a random one when a process starts), so the whole log is re-derived every
  n / 2^AUDIT_LEVEL passes while each pass costs the same whatever n.

Any difference raises LogCorrupted and nothing is signed.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin.config import Config
from plugin.jobs import Job, JobRun
from plugin.provenance import merkle
from plugin.provenance.canonical import canonical_json
from plugin.provenance.checkpoint import Checkpoint, sign_checkpoint
from plugin.provenance.keys import SigningKey
from plugin.provenance.rule import PENDING_PREFIX
from plugin.storage import (
    begin_write,
    get_engine,
    is_postgres,
    provenance_checkpoints,
    provenance_statements,
    provenance_tree,
    rule_state,
)

_PG_LOCK_ID = 0x0E1E6962  # serialises sequencers on PostgreSQL (any constant, the same everywhere)
AUDIT_LEVEL = 5  # each signing pass re-derives 2^5 = 32 leaves and the nodes over them
_audit_next: dict[str, int] = {}  # per database: the next window this process audits


def envelope_text(envelope: Mapping[str, Any]) -> str:
    """The stored (and logged) form of an envelope: RFC 8785 JSON."""
    return canonical_json(dict(envelope)).decode("utf-8")


def leaf_of(envelope: Mapping[str, Any]) -> bytes:
    """The RFC 6962 leaf hash of an envelope."""
    return merkle.leaf_hash(canonical_json(dict(envelope)))


class LogCorrupted(Exception):
    """The stored log differs from what an earlier checkpoint signed: it was tampered with."""


@dataclass(frozen=True)
class Integrated:
    """What one sequencer pass did, and the log's latest signed checkpoint."""

    added: int
    tree_size: int
    note: str


class StoredTree:
    """The log's tree in the database, as a merkle.NodeSource: one query for leaves, one for nodes
    (on PostgreSQL one for both).

    Plain driver SQL, rendered once per number of keys: building a SQLAlchemy expression of forty
    terms for each proof cost more than the lookups themselves.
    """

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def lookup(self, ids: Collection[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        """The stored hashes of those of `ids` that are stored."""
        leaves = sorted({index for level, index in ids if level == 0})
        nodes = sorted({node for node in ids if node[0] > 0})
        if self.conn.dialect.name == "postgresql":
            return self._lookup_postgres(leaves, nodes)
        found: dict[merkle.NodeId, bytes] = {}
        style = self.conn.dialect.paramstyle
        for start in range(0, len(leaves), _KEYS_PER_QUERY):
            some = leaves[start : start + _KEYS_PER_QUERY]
            for index, text in self.conn.exec_driver_sql(_leaf_query(len(some), style), tuple(some)):
                found[(0, int(index))] = _unhex(text)
        for start in range(0, len(nodes), _KEYS_PER_QUERY):
            part = nodes[start : start + _KEYS_PER_QUERY]
            params = tuple(v for node in part for v in node)
            for level, index, value in self.conn.exec_driver_sql(_node_query(len(part), style), params):
                found[(int(level), int(index))] = bytes(value)
        return found

    def _lookup_postgres(self, leaves: list[int], nodes: list[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        """Leaves and nodes in one round trip, by arrays: one statement text whatever the count,
        so the server plans it once (psycopg prepares it), where an OR of forty key lookups was
        planned on every call. At 10 million leaves, interleaved on one database: inclusion proof
        1.20 -> 0.84 ms, consistency proof 1.21 -> 0.69 ms, root 0.27 -> 0.35 ms (bench/growth.py)."""
        levels, indices = [level for level, _ in nodes], [index for _, index in nodes]
        if leaves and nodes:
            rows = self.conn.exec_driver_sql(
                _PG_LEAVES + " UNION ALL " + _PG_NODES, (leaves, levels, indices)
            )
        elif nodes:
            rows = self.conn.exec_driver_sql(_PG_NODES, (levels, indices))
        elif leaves:
            rows = self.conn.exec_driver_sql(_PG_LEAVES, (leaves,))
        else:
            return {}
        return {
            (int(level), int(index)): _unhex(text) if level == 0 else bytes(value)
            for level, index, text, value in rows
        }

    def spans(self, spans: Sequence[tuple[int, int, int]]) -> dict[merkle.NodeId, bytes]:
        """The stored nodes (level, idx) with begin <= idx < end, for each (level, begin, end)."""
        if not spans:
            return {}
        sql = _span_query(len(spans), self.conn.dialect.paramstyle)
        params = tuple(v for span in spans for v in span)
        return {(int(lv), int(i)): bytes(h) for lv, i, h in self.conn.exec_driver_sql(sql, params)}

    def hashes(self, ids: Collection[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        """merkle.NodeSource: the hashes of `ids`; MissingNode if one is not stored."""
        found = self.lookup(ids)
        missing = [node for node in ids if node not in found]
        if missing:
            level, index = min(missing)
            what = f"leaf {index}" if level == 0 else f"the node ({level}, {index})"
            raise merkle.MissingNode(f"the log has lost {what}")
        return found


_KEYS_PER_QUERY = 200  # well within SQLite's expression depth (1000) and bound-parameter limits

# StoredTree.lookup on PostgreSQL: leaf hashes by log index and nodes by (level, idx), from arrays
# (an index scan per key). No input in them: the keys are bound.
_PG_LEAVES = (
    f"SELECT 0 AS level, log_index AS idx, leaf_hash, NULL::bytea AS hash FROM {provenance_statements.name}"  # noqa: S608 - no input in it
    " WHERE log_index = ANY(%s::bigint[])"
)
_PG_NODES = (
    "SELECT t.level, t.idx, NULL AS leaf_hash, t.hash"  # noqa: S608 - no input in it
    " FROM unnest(%s::smallint[], %s::bigint[]) AS k(level, idx)"
    f" JOIN {provenance_tree.name} AS t ON t.level = k.level AND t.idx = k.idx"
)


@functools.lru_cache(maxsize=_KEYS_PER_QUERY + 1)
def _node_query(count: int, paramstyle: str) -> str:
    """SELECT of `count` nodes by key: an OR of primary-key lookups, rendered once per count.

    Not a row-value IN ((level, idx), ...): SQLite answers that by scanning the whole table. And
    plain driver SQL: building and caching a SQLAlchemy expression of 40 terms costs more than the
    lookups themselves.
    """
    mark = "?" if paramstyle == "qmark" else "%s"
    where = " OR ".join([f"(level = {mark} AND idx = {mark})"] * count)
    return f"SELECT level, idx, hash FROM {provenance_tree.name} WHERE {where}"  # noqa: S608 - no input in it


@functools.lru_cache(maxsize=_KEYS_PER_QUERY + 1)
def _leaf_query(count: int, paramstyle: str) -> str:
    """SELECT of `count` leaf hashes by log index."""
    marks = ", ".join(["?" if paramstyle == "qmark" else "%s"] * count)
    table = provenance_statements.name
    return f"SELECT log_index, leaf_hash FROM {table} WHERE log_index IN ({marks})"  # noqa: S608 - no input in it


@functools.lru_cache(maxsize=64)
def _span_query(count: int, paramstyle: str) -> str:
    """SELECT of `count` runs of nodes on one level each (primary-key range scans)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    where = " OR ".join([f"(level = {mark} AND idx >= {mark} AND idx < {mark})"] * count)
    return f"SELECT level, idx, hash FROM {provenance_tree.name} WHERE {where}"  # noqa: S608 - no input in it


def _unhex(text: str | None) -> bytes:
    try:
        return bytes.fromhex(text or "")
    except ValueError:
        return b""  # not a hash: it verifies as nothing


def logged_size(conn: sa.Connection) -> int:
    """How many leaves the log has: one past the highest log index (an index lookup, not a count)."""
    last = conn.execute(sa.select(sa.func.max(provenance_statements.c.log_index))).scalar()
    return 0 if last is None else int(last) + 1


def integrate(
    engine: Engine, key: SigningKey, origin: str, now: datetime, audit: int | None = None
) -> Integrated:
    """Sequence pending and unlogged statements; sign a checkpoint when the tree grew (or has none).

    `audit` names the window of 2^AUDIT_LEVEL leaves to re-derive before signing (by default the
    next one in this process's sweep). LogCorrupted, and nothing signed, if the past changed.
    """
    with begin_write(engine) as conn:
        if is_postgres(engine):
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
        _take_pending(conn, now)
        latest = conn.execute(
            sa.select(
                provenance_checkpoints.c.tree_size,
                provenance_checkpoints.c.root_hash,
                provenance_checkpoints.c.note,
            )
            .order_by(provenance_checkpoints.c.tree_size.desc())
            .limit(1)
        ).first()
        size = logged_size(conn)
        unlogged = conn.execute(
            sa.select(provenance_statements.c.id, provenance_statements.c.envelope)
            .where(provenance_statements.c.log_index.is_(None))
            .order_by(provenance_statements.c.id)
        ).all()
        if latest is not None and latest.tree_size == size and not unlogged:
            return Integrated(0, size, latest.note)
        signed = 0 if latest is None else int(latest.tree_size)
        if signed > size:
            raise LogCorrupted(f"the log has {size} leaves, fewer than the {signed} its checkpoint signed")
        store = StoredTree(conn)
        right_edge = merkle.range_nodes(0, size) if size else []
        try:
            found = store.hashes(right_edge)
        except merkle.MissingNode as exc:
            raise LogCorrupted(f"{exc}: its stored tree no longer holds what was signed") from exc
        leaves = [merkle.leaf_hash(row.envelope.encode()) for row in unlogged]
        frontier, completed = merkle.append_leaves([(n, found[n]) for n in right_edge], size, leaves)
        if unlogged:
            conn.execute(
                provenance_statements.update()
                .where(provenance_statements.c.id == sa.bindparam("row_id"))
                .values(log_index=sa.bindparam("new_index"), leaf_hash=sa.bindparam("new_hash")),
                [
                    {"row_id": row.id, "new_index": size + i, "new_hash": leaf.hex()}
                    for i, (row, leaf) in enumerate(zip(unlogged, leaves, strict=True))
                ],
            )
        if completed:
            conn.execute(
                provenance_tree.insert(),
                [{"level": level, "idx": index, "hash": h} for (level, index), h in completed],
            )
        size += len(unlogged)
        root = merkle.fold([h for _, h in frontier])
        if latest is not None:
            _check_consistent(store, signed, _unhex(latest.root_hash), size, root)
        _audit(conn, store, size, _audit_window(engine, size, audit))
        note = sign_checkpoint(Checkpoint(origin, size, root), key)
        conn.execute(
            provenance_checkpoints.insert().values(
                tree_size=size, root_hash=root.hex(), note=note, created_at=now
            )
        )
        return Integrated(len(unlogged), size, note)


def _check_consistent(store: StoredTree, old: int, old_root: bytes, new: int, new_root: bytes) -> None:
    """Never sign over a log whose past no longer matches what was signed."""
    if old == new:
        holds = old_root == new_root
    elif old == 0:
        holds = old_root == merkle.EMPTY_ROOT
    else:
        try:
            proof = merkle.consistency_proof_from(store, old, new)
        except merkle.MissingNode as exc:
            raise LogCorrupted(f"{exc}: its stored tree no longer holds what was signed") from exc
        holds = merkle.verify_consistency(old, new, proof, old_root, new_root)
    if not holds:
        raise LogCorrupted(f"the log's first {old} leaves no longer match their signed checkpoint")


def _audit_window(engine: Engine, size: int, chosen: int | None) -> int:
    windows = -(-size >> AUDIT_LEVEL)  # ceil(size / 2^AUDIT_LEVEL)
    if windows == 0:
        return 0
    if chosen is not None:
        return chosen % windows
    key = str(engine.url)
    window = _audit_next.get(key, secrets.randbelow(windows)) % windows
    _audit_next[key] = window + 1
    return window


def _audit(conn: sa.Connection, store: StoredTree, size: int, window: int) -> None:
    """Derive one window of leaves again from their envelopes; check every stored node over it.

    Inside the window each stored node must be the hash of the leaves under it; above a complete
    window, each complete node on its path must be the hash of its two stored children.
    """
    lo = window << AUDIT_LEVEL
    hi = min(lo + (1 << AUDIT_LEVEL), size)
    if lo >= hi:
        return
    sql = _window_query(conn.dialect.paramstyle)
    rows = conn.exec_driver_sql(sql, (lo, hi)).all()
    if [int(r[0]) for r in rows] != list(range(lo, hi)):
        lost = min(set(range(lo, hi)) - {int(r[0]) for r in rows})
        raise LogCorrupted(f"the log has lost leaf {lost}")
    hashes: list[bytes] = []
    for index, envelope, stored_leaf in rows:
        leaf = merkle.leaf_hash(envelope.encode())
        if leaf.hex() != stored_leaf:
            raise LogCorrupted(f"the statement at log index {index} is not the leaf logged there")
        hashes.append(leaf)
    derived: dict[merkle.NodeId, bytes] = {}
    spans: list[tuple[int, int, int]] = []
    level = 0
    while len(hashes) > 1:
        hashes = [merkle.node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes) - 1, 2)]
        level += 1
        derived.update({(level, (lo >> level) + i): h for i, h in enumerate(hashes)})
        spans.append((level, lo >> level, (lo >> level) + len(hashes)))
    above: list[merkle.NodeId] = []  # each complete node over a complete window
    if hi - lo == 1 << AUDIT_LEVEL:
        level, index = AUDIT_LEVEL + 1, lo >> (AUDIT_LEVEL + 1)
        while (index + 1) << level <= size:
            above.append((level, index))
            spans += [(level, index, index + 1), (level - 1, 2 * index, 2 * index + 2)]
            level, index = level + 1, index >> 1
    stored = store.spans(spans)
    needed = set(derived) | {c for lv, i in above for c in ((lv, i), (lv - 1, 2 * i), (lv - 1, 2 * i + 1))}
    if missing := sorted(needed - set(stored)):
        raise LogCorrupted(f"the log has lost the node {missing[0]}")
    for node, h in derived.items():
        if stored[node] != h:
            raise LogCorrupted(f"the stored node {node} differs from the leaves under it")
    for lv, i in above:
        if merkle.node_hash(stored[(lv - 1, 2 * i)], stored[(lv - 1, 2 * i + 1)]) != stored[(lv, i)]:
            raise LogCorrupted(f"the stored node {(lv, i)} differs from the nodes under it")


@functools.lru_cache(maxsize=4)
def _window_query(paramstyle: str) -> str:
    mark = "?" if paramstyle == "qmark" else "%s"
    return (
        f"SELECT log_index, envelope, leaf_hash FROM {provenance_statements.name}"  # noqa: S608 - no input in it
        f" WHERE log_index >= {mark} AND log_index < {mark} ORDER BY log_index"
    )


def _take_pending(conn: sa.Connection, now: datetime) -> None:
    # A key range (not LIKE): both databases answer it from the primary key's index.
    after = PENDING_PREFIX[:-1] + chr(ord(PENDING_PREFIX[-1]) + 1)
    rows = conn.execute(
        sa.select(rule_state.c.key, rule_state.c.value)
        .where(rule_state.c.key >= PENDING_PREFIX, rule_state.c.key < after)
        .order_by(rule_state.c.updated_at, rule_state.c.key)
    ).all()
    if not rows:
        return
    conn.execute(
        provenance_statements.insert(),
        [
            {
                "kind": "record",
                "object": r.value["object"],
                "record_id": r.value["record_id"],
                "sequence": r.value["sequence"],
                "digest": r.value["digest"],
                "envelope": envelope_text(r.value["envelope"]),
                "recorded_at": now,
            }
            for r in rows
        ],
    )
    conn.execute(rule_state.delete().where(rule_state.c.key.in_([r.key for r in rows])))


def leaf_hashes(conn: sa.Connection, size: int) -> list[bytes]:
    """The first `size` leaf hashes, in log order (reads every leaf: for audits and tests)."""
    hashes = conn.execute(
        sa.select(provenance_statements.c.leaf_hash)
        .where(provenance_statements.c.log_index < size)
        .order_by(provenance_statements.c.log_index)
    ).scalars()
    return [bytes.fromhex(h) for h in hashes]


def latest_checkpoint(conn: sa.Connection) -> tuple[int, str] | None:
    """(tree size, signed note) of the newest checkpoint."""
    row = conn.execute(
        sa.select(provenance_checkpoints.c.tree_size, provenance_checkpoints.c.note)
        .order_by(provenance_checkpoints.c.tree_size.desc())
        .limit(1)
    ).first()
    return None if row is None else (int(row.tree_size), str(row.note))


def checkpoint_at(conn: sa.Connection, size: int) -> str | None:
    """The signed note of the checkpoint the log signed at `size`, if it signed one."""
    note = conn.execute(
        sa.select(provenance_checkpoints.c.note).where(provenance_checkpoints.c.tree_size == size)
    ).scalar()
    return None if note is None else str(note)


def proofs(conn: sa.Connection, indices: Sequence[int], size: int) -> dict[int, dict[str, Any]]:
    """Inclusion proofs (as the API shows them) of leaves in the tree of `size`, from stored nodes.

    A leaf whose proof needs a node the log has lost gets none (its statement then fails as
    log_mismatch): the log cannot show it where its checkpoint says.
    """
    wanted = sorted({i for i in indices if 0 <= i < size})
    if not wanted:
        return {}
    plans = {i: [merkle.range_nodes(b, e) for b, e in merkle.inclusion_ranges(i, size)] for i in wanted}
    top = merkle.range_nodes(0, size)
    found = StoredTree(conn).lookup({n for plan in plans.values() for part in plan for n in part} | set(top))
    if any(n not in found for n in top):
        return {}
    root = merkle.fold([found[n] for n in top]).hex()
    return {
        i: {
            "log_index": i,
            "tree_size": size,
            "root_hash": root,
            "hashes": [merkle.fold([found[n] for n in part]).hex() for part in plan],
        }
        for i, plan in plans.items()
        if all(n in found for part in plan for n in part)
    }


def consistency(conn: sa.Connection, old: int, new: int) -> list[bytes]:
    """The consistency proof from the tree of `old` leaves to the tree of `new`, from stored nodes.

    Empty when old is 0 or equals new; ValueError if old > new; LogCorrupted if a node is lost.
    """
    try:
        return merkle.consistency_proof_from(StoredTree(conn), old, new)
    except merkle.MissingNode as exc:
        raise LogCorrupted(str(exc)) from exc


def root_at(conn: sa.Connection, size: int) -> bytes:
    """The root of the tree of the first `size` leaves, from stored nodes."""
    try:
        return merkle.root_from(StoredTree(conn), size)
    except merkle.MissingNode as exc:
        raise LogCorrupted(str(exc)) from exc


def record_chain(conn: sa.Connection, obj: str, record_id: str) -> list[dict[str, Any]]:
    """The record's statements, newest first: {"envelope", "log_index", "digest"}."""
    rows = conn.execute(
        sa.select(provenance_statements)
        .where(
            provenance_statements.c.kind == "record",
            provenance_statements.c.object == obj,
            provenance_statements.c.record_id == record_id,
        )
        .order_by(provenance_statements.c.sequence.desc())
    ).all()
    return [{"envelope": json.loads(r.envelope), "log_index": r.log_index, "digest": r.digest} for r in rows]


def sequencer_jobs(config: Config) -> list[Job]:
    """The log sequencer as a worker job (every 5 s): the log keeps up even when nobody asks."""
    if not config.governed:
        return []
    from plugin.provenance.rule import key_store

    def run(state: Mapping[str, Any], now: datetime) -> JobRun:
        result = integrate(
            get_engine(config.storage.url), key_store(config).signing_key(), config.provenance.log_origin, now
        )
        return JobRun(state={"tree_size": result.tree_size})

    return [Job(name="provenance.sequencer", interval_seconds=5.0, run=run)]
