"""The append-only log of every signed statement: sequencing, stored tree, proofs, checkpoints.

The provenance rule leaves each signed statement in rule state (`provenance:pending:...`), and
the API stores citations directly with no log index. `integrate` is the log's sequencer: in one
transaction (serialised across processes) it gives every unlogged statement the next leaf index
in id order, moves pending statements into `provenance_statements` with the indices after them,
stores the perfect subtrees the new leaves complete, and signs a checkpoint of the new tree. Leaf
data is the statement's DSSE envelope in RFC 8785 JSON, exactly as stored. It runs before the API
answers and for `log checkpoint`; the worker runs it as a job (`sequencer_jobs`).

Storage: level 0 of the RFC 6962 tree is `provenance_statements.leaf_hash` by `log_index`; every
perfect subtree of 2^level >= 2 leaves is one row of `provenance_tree` (level, idx, hash), written
once when it completes. A root, an inclusion proof or a consistency proof reads at most about
2·log2(n) of those rows (`StoredTree`), and an append reads the tree's right edge (log2(n) nodes)
and writes the nodes it completes, so no operation reads every leaf.

Before it signs, the sequencer checks that the signed past is unchanged:

- the newest signed checkpoint must follow from the stored nodes: a consistency proof from its
  size to the new one, built from the stored tree, must verify against its signed root and the
  new root (this covers the right edge, which every later root is built on). The nodes such a
  proof takes from the old tree are exactly its right edge, which the pass has just read to
  append, so it is built from those and the new leaves without reading them twice
  (`_check_extends`);
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


def integrate(
    engine: Engine, key: SigningKey, origin: str, now: datetime, audit: int | None = None
) -> Integrated:
    """Sequence pending and unlogged statements; sign a checkpoint when the tree grew (or has none).

    `audit` names the window of 2^AUDIT_LEVEL leaves to re-derive before signing (by default the
    next one in this process's sweep). LogCorrupted, and nothing signed, if the past changed.

    An append reads what it starts from in one statement (`_State`) and the audit window in one
    more, checks the previous checkpoint by a consistency proof built from what it read and what it
    computed, and writes in three statements on SQLite (the new leaves, the completed nodes, the
    checkpoint) and one on PostgreSQL: four or five statements where it was twelve to fourteen.
    """
    with begin_write(engine) as conn:
        pg = is_postgres(engine)
        if pg:
            conn.exec_driver_sql(_PG_LOCK, (_PG_LOCK_ID,))
        state = _State.read(conn)
        latest, size, unlogged = state.latest, state.size, state.unlogged
        pending = _read_pending(conn) if state.has_pending else []
        if latest is not None and latest.tree_size == size and not unlogged and not pending:
            return Integrated(0, size, latest.note)
        signed = 0 if latest is None else latest.tree_size
        if signed > size:
            raise LogCorrupted(f"the log has {size} leaves, fewer than the {signed} its checkpoint signed")
        right_edge = merkle.range_nodes(0, size) if size else []
        if missing := [node for node in right_edge if node not in state.edge]:
            level, index = min(missing)
            what = f"leaf {index}" if level == 0 else f"the node ({level}, {index})"
            raise LogCorrupted(f"the log has lost {what}: its stored tree no longer holds what was signed")
        edge = [(node, state.edge[node]) for node in right_edge]
        envelopes = [envelope for _, envelope in unlogged] + [envelope_text(p["envelope"]) for p in pending]
        leaves = [merkle.leaf_hash(text.encode()) for text in envelopes]
        frontier, completed = merkle.append_leaves(edge, size, leaves)
        new_size = size + len(leaves)
        root = merkle.fold([h for _, h in frontier])
        # Everything is checked before anything is written: the proof's nodes over the new leaves
        # come from this pass (as the store would give them back), and the audit re-derives a
        # window of the leaves the log already had (the new ones this pass has just derived).
        if latest is not None:
            old_root = _unhex(latest.root_hash)
            if signed == size:
                _check_extends(edge, leaves, completed, old_root, new_size, root)
            else:  # leaves logged after the newest checkpoint (a log from before 0007): from the store
                known = dict(completed) | {(0, size + i): leaf for i, leaf in enumerate(leaves)}
                _check_consistent(_Known(known, StoredTree(conn)), signed, old_root, new_size, root)
        _audit(conn, size, _audit_window(engine, size, audit))
        note = sign_checkpoint(Checkpoint(origin, new_size, root), key)
        logged = [(row_id, size + i, leaves[i].hex()) for i, (row_id, _) in enumerate(unlogged)]
        if pending:
            _log_pending(conn, pending, size + len(unlogged), leaves[len(unlogged) :], now)
        checkpoint = (new_size, root.hex(), note, now.astimezone(UTC))
        if pg:
            _write_postgres(conn, logged, completed, checkpoint)
        else:
            _write(conn, logged, completed, checkpoint)
        return Integrated(len(leaves), new_size, note)


def _write(
    conn: sa.Connection,
    logged: Sequence[tuple[int, int, str]],
    completed: Sequence[tuple[merkle.NodeId, bytes]],
    checkpoint: tuple[int, str, str, datetime],
) -> None:
    """The new leaves (id, log index, leaf hash), the completed nodes and the checkpoint."""
    if logged:
        conn.exec_driver_sql(
            _update_sql(conn.dialect.paramstyle), [(i, h, row_id) for row_id, i, h in logged]
        )
    if completed:
        conn.exec_driver_sql(
            _insert_node_sql(conn.dialect.paramstyle), [(level, index, h) for (level, index), h in completed]
        )
    size, root, note, now = checkpoint
    conn.execute(_INSERT_CHECKPOINT, {"tree_size": size, "root_hash": root, "note": note, "created_at": now})


def _write_postgres(
    conn: sa.Connection,
    logged: Sequence[tuple[int, int, str]],
    completed: Sequence[tuple[merkle.NodeId, bytes]],
    checkpoint: tuple[int, str, str, datetime],
) -> None:
    """`_write` in one round trip: each write a data-modifying WITH of the checkpoint's INSERT, the
    rows as arrays (one statement text whatever their count)."""
    ids, indices, hashes = ([row[k] for row in logged] for k in range(3))
    levels, node_indices = [level for (level, _), _ in completed], [index for (_, index), _ in completed]
    conn.exec_driver_sql(
        _PG_WRITE, (ids, indices, hashes, levels, node_indices, [h for _, h in completed], *checkpoint)
    )


_PG_WRITE = (
    f"WITH logged AS (UPDATE {provenance_statements.name} AS s"  # noqa: S608 - no input in it
    " SET log_index = v.log_index, leaf_hash = v.leaf_hash"
    " FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS v(id, log_index, leaf_hash) WHERE s.id = v.id),"
    f" nodes AS (INSERT INTO {provenance_tree.name} (level, idx, hash)"
    " SELECT * FROM unnest(%s::smallint[], %s::bigint[], %s::bytea[]))"
    f" INSERT INTO {provenance_checkpoints.name} (tree_size, root_hash, note, created_at)"
    " VALUES (%s, %s, %s, %s)"
)


# On PostgreSQL the sequencer's transaction takes the advisory lock, in a statement of its own (a
# statement's snapshot is taken before it waits, so the reads must come after), and turns bitmap
# scans off for itself. Why: a logged statement's old row version keeps its NULL log_index entry in
# uq_provenance_log_index until VACUUM, one per citation logged, and the `log_index IS NULL` lookup
# planned as a bitmap scan visits every one of them on every pass without ever marking them dead
# (20,400 of them cost 4 ms at 20,000 leaves with autovacuum behind; up to a fifth of the table
# between autovacuums). A plain index scan marks them dead as it passes, so the next pass skips
# them (4 ms -> 0.05 ms). Every other statement of the pass is a primary-key or index lookup
# (ranges of several spans go through unnest, not an OR), which needs no bitmap scan.
_PG_LOCK = "SELECT pg_advisory_xact_lock(%s), set_config('enable_bitmapscan', 'off', true)"

_MAX_LEVEL = 62  # log_index is a BIGINT: no perfect subtree has more than 2^62 leaves


@dataclass(frozen=True)
class _Checkpoint:
    """The newest checkpoint as stored."""

    tree_size: int
    root_hash: str
    note: str


@dataclass
class _State:
    """What a sequencer pass starts from, read in one statement (one snapshot): the newest
    checkpoint, the log's size (one past the highest log index), the unlogged statements in id
    order, whether the rule left statements pending, and the stored hashes of the tree's right
    edge (`range_nodes(0, size)`: the node (L, (size >> L) - 1) for each bit L set in the size,
    the leaf size - 1 for bit 0), located by the size in SQL so they come in the same round trip."""

    latest: _Checkpoint | None = None
    size: int = 0
    unlogged: list[tuple[int, str]] = field(default_factory=list)  # (id, envelope)
    has_pending: bool = False
    edge: dict[merkle.NodeId, bytes] = field(default_factory=dict)

    @classmethod
    def read(cls, conn: sa.Connection) -> _State:
        state = cls()
        rows = conn.exec_driver_sql(_state_sql(conn.dialect.name), (PENDING_PREFIX, _PENDING_AFTER)).all()
        for kind, a, b, text, note, h in rows:
            if kind == "e":
                state.edge[(int(a), int(b))] = bytes(h) if h is not None else _unhex(text)
            elif kind == "u":
                state.unlogged.append((int(a), str(text)))
            elif kind == "c":
                state.latest = _Checkpoint(int(a), str(text), str(note))
            elif kind == "n":
                state.size = int(a)
            else:
                state.has_pending = True
        state.unlogged.sort()
        return state


@functools.lru_cache(maxsize=4)
def _state_sql(dialect: str) -> str:
    """The statement `_State.read` runs: rows (kind, a, b, text, note, hash), one or more per kind.

    Each part is an index lookup: the highest log index, the newest checkpoint, the first pending
    key, the unlogged statements (uq_provenance_log_index), and at most 63 nodes by primary key.
    """
    levels = ", ".join(f"({level})" for level in range(1, _MAX_LEVEL + 1))
    mark = "?" if dialect == "sqlite" else "%s"
    blob = "BLOB" if dialect == "sqlite" else "BYTEA"
    statements, tree = provenance_statements.name, provenance_tree.name
    return (
        f"WITH n(size) AS (SELECT coalesce(max(log_index) + 1, 0) FROM {statements}),"  # noqa: S608 - no input in it
        f" lv(level) AS (VALUES {levels})"
        " SELECT 'n' AS kind, n.size AS a, CAST(NULL AS BIGINT) AS b, CAST(NULL AS TEXT) AS text,"
        f" CAST(NULL AS TEXT) AS note, CAST(NULL AS {blob}) AS hash FROM n"
        " UNION ALL SELECT 'c', c.tree_size, NULL, c.root_hash, c.note, NULL FROM"
        f" (SELECT tree_size, root_hash, note FROM {provenance_checkpoints.name}"
        " ORDER BY tree_size DESC LIMIT 1) AS c"
        f" UNION ALL SELECT 'p', NULL, NULL, NULL, NULL, NULL WHERE EXISTS (SELECT 1 FROM {rule_state.name}"
        f" WHERE {rule_state.c.key.name} >= {mark} AND {rule_state.c.key.name} < {mark})"
        f" UNION ALL SELECT 'u', id, NULL, envelope, NULL, NULL FROM {statements} WHERE log_index IS NULL"
        f" UNION ALL SELECT 'e', 0, s.log_index, s.leaf_hash, NULL, NULL FROM n JOIN {statements} AS s"
        " ON s.log_index = n.size - 1 WHERE n.size & 1 = 1"
        f" UNION ALL SELECT 'e', t.level, t.idx, NULL, NULL, t.hash FROM n CROSS JOIN lv JOIN {tree} AS t"
        " ON t.level = lv.level AND t.idx = (n.size >> lv.level) - 1 WHERE (n.size >> lv.level) & 1 = 1"
    )


@functools.lru_cache(maxsize=4)
def _update_sql(paramstyle: str) -> str:
    mark = "?" if paramstyle == "qmark" else "%s"
    return f"UPDATE {provenance_statements.name} SET log_index = {mark}, leaf_hash = {mark} WHERE id = {mark}"  # noqa: S608 - no input in it


@functools.lru_cache(maxsize=4)
def _insert_node_sql(paramstyle: str) -> str:
    mark = "?" if paramstyle == "qmark" else "%s"
    return f"INSERT INTO {provenance_tree.name} (level, idx, hash) VALUES ({mark}, {mark}, {mark})"  # noqa: S608 - no input in it


# Built once: a statement built on every call cost ~0.1 ms of SQLAlchemy's time each pass.
_INSERT_CHECKPOINT = provenance_checkpoints.insert()
_INSERT_STATEMENT = provenance_statements.insert()
_PENDING_AFTER = PENDING_PREFIX[:-1] + chr(ord(PENDING_PREFIX[-1]) + 1)
# A key range (not LIKE): both databases answer it from the primary key's index.
_IS_PENDING = sa.and_(rule_state.c.key >= PENDING_PREFIX, rule_state.c.key < _PENDING_AFTER)
# A key range (not LIKE): both databases answer it from the primary key's index.
# Statements taken per pass: a backlog is sequenced in passes of this many, each its own short
# transaction, so the inbox writer (which acknowledges senders) waits for one pass at most, not for
# all of a backlog at once (5,000 statements held the write lock for seconds).
PENDING_PER_PASS = 250

_SELECT_PENDING = (
    sa.select(rule_state.c.key, rule_state.c.value)
    .where(_IS_PENDING)
    .order_by(rule_state.c.updated_at, rule_state.c.key)
    .limit(PENDING_PER_PASS)
)


def _check_extends(
    edge: Sequence[tuple[merkle.NodeId, bytes]],
    leaves: Sequence[bytes],
    completed: Sequence[tuple[merkle.NodeId, bytes]],
    old_root: bytes,
    new_size: int,
    new_root: bytes,
) -> None:
    """The consistency proof from the newest checkpoint (of as many leaves as the log had) to the new
    tree, built from the right edge this pass read and the leaves and nodes it computed, verified
    against the signed root and the new one.

    The same check as a proof read from the store: every node such a proof takes from the old
    tree is a node of its right edge (each step of RFC 6962's SUBPROOF that goes right takes the
    perfect subtree of the old size's highest remaining bit, and the last takes the rest of them),
    and every other node lies in the new leaves, so the stored proof would read exactly these
    hashes, in the same transaction. What it establishes: the stored right edge still folds to
    the signed root, and the new root extends it.
    """
    old_size = new_size - len(leaves)
    if old_size == 0:
        holds = old_root == merkle.EMPTY_ROOT
    elif not leaves:
        holds = old_root == new_root
    else:
        known = dict(edge) | dict(completed) | {(0, old_size + i): leaf for i, leaf in enumerate(leaves)}
        proof = merkle.consistency_proof_from(_Known(known), old_size, new_size)
        holds = merkle.verify_consistency(old_size, new_size, proof, old_root, new_root)
    if not holds:
        raise LogCorrupted(f"the log's first {old_size} leaves no longer match their signed checkpoint")


class _Known:
    """merkle.NodeSource over hashes this pass holds, and the stored tree for any others."""

    def __init__(self, known: Mapping[merkle.NodeId, bytes], store: StoredTree | None = None) -> None:
        self.known, self.store = known, store

    def hashes(self, ids: Collection[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        found = {node: self.known[node] for node in ids if node in self.known}
        others = [node for node in ids if node not in found]
        if others and self.store is not None:
            found |= self.store.hashes(others)
        elif others:  # cannot happen (see _check_extends); never sign if it does
            raise LogCorrupted(f"no hash for the node {min(others)} of the consistency proof")
        return found


def _check_consistent(store: merkle.NodeSource, old: int, old_root: bytes, new: int, new_root: bytes) -> None:
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


def _audit(conn: sa.Connection, size: int, window: int) -> None:
    """Derive one window of leaves again from their envelopes; check every stored node over it.

    Inside the window each stored node must be the hash of the leaves under it; above a complete
    window, each complete node on its path must be the hash of its two stored children. One
    statement reads the window's statements and every node it checks.
    """
    lo = window << AUDIT_LEVEL
    hi = min(lo + (1 << AUDIT_LEVEL), size)
    if lo >= hi:
        return
    spans: list[tuple[int, int, int]] = []  # (level, begin, end): the stored nodes to read
    width, level = hi - lo, 0
    while width > 1:
        width >>= 1
        level += 1
        spans.append((level, lo >> level, (lo >> level) + width))
    above: list[merkle.NodeId] = []  # each complete node over a complete window
    if hi - lo == 1 << AUDIT_LEVEL:
        level, index = AUDIT_LEVEL + 1, lo >> (AUDIT_LEVEL + 1)
        while (index + 1) << level <= size:
            above.append((level, index))
            spans += [(level, index, index + 1), (level - 1, 2 * index, 2 * index + 2)]
            level, index = level + 1, index >> 1
    window_rows: dict[int, tuple[str, str]] = {}
    stored: dict[merkle.NodeId, bytes] = {}
    for lv, index, envelope, leaf_hash, h in _read_window(conn, lo, hi, spans).all():
        if lv < 0:
            window_rows[int(index)] = (envelope, leaf_hash)
        else:
            stored[(int(lv), int(index))] = bytes(h)
    hashes: list[bytes] = []
    for index in range(lo, hi):
        if (row := window_rows.get(index)) is None:
            raise LogCorrupted(f"the log has lost leaf {index}")
        leaf = merkle.leaf_hash(row[0].encode())
        if leaf.hex() != row[1]:
            raise LogCorrupted(f"the statement at log index {index} is not the leaf logged there")
        hashes.append(leaf)
    derived: dict[merkle.NodeId, bytes] = {}
    level = 0
    while len(hashes) > 1:
        hashes = [merkle.node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes) - 1, 2)]
        level += 1
        derived.update({(level, (lo >> level) + i): h for i, h in enumerate(hashes)})
    needed = set(derived) | {c for lv, i in above for c in ((lv, i), (lv - 1, 2 * i), (lv - 1, 2 * i + 1))}
    if missing := sorted(needed - set(stored)):
        raise LogCorrupted(f"the log has lost the node {missing[0]}")
    for node, h in derived.items():
        if stored[node] != h:
            raise LogCorrupted(f"the stored node {node} differs from the leaves under it")
    for lv, i in above:
        if merkle.node_hash(stored[(lv - 1, 2 * i)], stored[(lv - 1, 2 * i + 1)]) != stored[(lv, i)]:
            raise LogCorrupted(f"the stored node {(lv, i)} differs from the nodes under it")


def _read_window(
    conn: sa.Connection, lo: int, hi: int, spans: Sequence[tuple[int, int, int]]
) -> sa.CursorResult[Any]:
    """Rows (level, index, envelope, leaf hash, hash): the statements at log indices [lo, hi) with
    level -1, then the stored nodes of each span (level, begin, end)."""
    if conn.dialect.name == "postgresql":
        levels, begins, ends = ([span[k] for span in spans] for k in range(3))
        return conn.exec_driver_sql(_PG_WINDOW, (lo, hi, levels, begins, ends))
    params = (lo, hi, *(v for span in spans for v in span))
    return conn.exec_driver_sql(_window_query(len(spans), conn.dialect.paramstyle), params)


_WINDOW_LEAVES = (
    "SELECT -1 AS level, log_index AS idx, envelope, leaf_hash, CAST(NULL AS {blob}) AS hash"  # noqa: S608 - no input in it
    f" FROM {provenance_statements.name} WHERE log_index >= {{mark}} AND log_index < {{mark}}"
)
# PostgreSQL: the spans as arrays, so the statement text (and plan) is one whatever their count.
# OFFSET 0 keeps the subquery from being merged into a join, which the planner answered with a
# hash join over a sequential scan of the whole tree (17 ms at 20,000 leaves); so each span is
# one range scan of the primary key.
_PG_WINDOW_NODES = (
    " UNION ALL SELECT t.level, t.idx, NULL, NULL, t.hash"  # noqa: S608 - no input in it
    " FROM unnest(%s::smallint[], %s::bigint[], %s::bigint[]) AS k(level, lo, hi)"
    f" CROSS JOIN LATERAL (SELECT level, idx, hash FROM {provenance_tree.name}"
    " WHERE level = k.level AND idx >= k.lo AND idx < k.hi OFFSET 0) AS t"
)
_PG_WINDOW = _WINDOW_LEAVES.format(blob="BYTEA", mark="%s") + _PG_WINDOW_NODES


@functools.lru_cache(maxsize=64)
def _window_query(spans: int, paramstyle: str) -> str:
    mark = "?" if paramstyle == "qmark" else "%s"
    where = " OR ".join([f"(level = {mark} AND idx >= {mark} AND idx < {mark})"] * spans)
    leaves = _WINDOW_LEAVES.format(blob="BLOB", mark=mark)
    if not spans:
        return leaves
    return f"{leaves} UNION ALL SELECT level, idx, NULL, NULL, hash FROM {provenance_tree.name} WHERE {where}"  # noqa: S608 - no input in it


def _read_pending(conn: sa.Connection) -> list[dict[str, Any]]:
    """Statements the rule signed and left for the log, oldest first; taken out of rule state."""
    rows = conn.execute(_SELECT_PENDING).all()
    if rows:
        conn.execute(rule_state.delete().where(rule_state.c.key.in_([r.key for r in rows])))
    return [dict(r.value) for r in rows]


def _log_pending(
    conn: sa.Connection,
    pending: Sequence[Mapping[str, Any]],
    first: int,
    leaves: Sequence[bytes],
    now: datetime,
) -> None:
    """Store pending statements with their log indices already given (after the unlogged ones,
    whose ids are all lower: they were committed before this pass read them): no row is written
    twice, so none leaves an old version behind."""
    conn.execute(
        _INSERT_STATEMENT,
        [
            {
                "kind": "record",
                "object": p["object"],
                "record_id": p["record_id"],
                "sequence": p["sequence"],
                "digest": p["digest"],
                "envelope": envelope_text(p["envelope"]),
                "recorded_at": now,
                "log_index": first + i,
                "leaf_hash": leaf.hex(),
            }
            for i, (p, leaf) in enumerate(zip(pending, leaves, strict=True))
        ],
    )


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


def has_work(engine: Engine) -> bool:
    """Whether a sequencer pass would do anything: statements pending or unlogged, or no checkpoint
    yet. Read without the write lock, so an idle job leaves it alone."""
    pending = sa.select(rule_state.c.key).where(_IS_PENDING)
    unlogged = sa.select(provenance_statements.c.id).where(provenance_statements.c.log_index.is_(None))
    checkpoint = sa.select(provenance_checkpoints.c.tree_size)
    with engine.connect() as conn:
        return any(conn.execute(q.limit(1)).first() is not None for q in (pending, unlogged)) or (
            conn.execute(checkpoint.limit(1)).first() is None
        )


def sequencer_jobs(config: Config) -> list[Job]:
    """The log sequencer as a worker job (every second): the log keeps up even when nobody asks.
    A backlog is taken PENDING_PER_PASS statements at a time, each pass its own transaction."""
    if not config.governed:
        return []
    from plugin.provenance.rule import key_store

    def run(state: Mapping[str, Any], now: datetime) -> JobRun:
        engine = get_engine(config.storage.url)
        size = int(state.get("tree_size", 0))
        if not has_work(engine):
            return JobRun(state={"tree_size": size})
        key = key_store(config).signing_key()
        for _ in range(_PASSES_PER_RUN):
            result = integrate(engine, key, config.provenance.log_origin, now)
            size = result.tree_size
            if result.added < PENDING_PER_PASS:
                break
        return JobRun(state={"tree_size": size})

    return [Job(name="provenance.sequencer", interval_seconds=1.0, run=run)]


_PASSES_PER_RUN = 40  # then the job's next run (a second later) goes on: other jobs get their turn
