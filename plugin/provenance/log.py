"""The append-only log of every signed statement: sequencing, inclusion proofs, checkpoints.

The provenance rule leaves each signed statement in rule state (`provenance:pending:...`), and
the API stores citations directly with no log index. `integrate` is the log's sequencer: in one
transaction (serialised across processes) it moves pending statements into
`provenance_statements`, gives every unlogged statement the next leaf index in id order, and
signs a checkpoint of the new tree. Leaf data is the statement's DSSE envelope in RFC 8785 JSON,
exactly as stored. It runs before the API answers and for `log checkpoint`; the worker can run it
as a job (`sequencer_jobs`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    rule_state,
)

_PG_LOCK_ID = 0x0E1E6962  # serialises sequencers on PostgreSQL (any constant, the same everywhere)


def envelope_text(envelope: Mapping[str, Any]) -> str:
    """The stored (and logged) form of an envelope: RFC 8785 JSON."""
    return canonical_json(dict(envelope)).decode("utf-8")


def leaf_of(envelope: Mapping[str, Any]) -> bytes:
    """The RFC 6962 leaf hash of an envelope."""
    return merkle.leaf_hash(canonical_json(dict(envelope)))


class LogCorrupted(Exception):
    """Stored leaves differ from what an earlier checkpoint signed: the log was tampered with."""


@dataclass(frozen=True)
class Integrated:
    """What one sequencer pass did, and the log's latest signed checkpoint."""

    added: int
    tree_size: int
    note: str


def integrate(engine: Engine, key: SigningKey, origin: str, now: datetime) -> Integrated:
    """Sequence pending and unlogged statements; sign a checkpoint when the tree grew (or has none)."""
    with begin_write(engine) as conn:
        if is_postgres(engine):
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
        _take_pending(conn, now)
        size = conn.execute(
            sa.select(sa.func.count())
            .select_from(provenance_statements)
            .where(provenance_statements.c.log_index.is_not(None))
        ).scalar_one()
        unlogged = conn.execute(
            sa.select(provenance_statements.c.id, provenance_statements.c.envelope)
            .where(provenance_statements.c.log_index.is_(None))
            .order_by(provenance_statements.c.id)
        ).all()
        for offset, row in enumerate(unlogged):
            conn.execute(
                provenance_statements.update()
                .where(provenance_statements.c.id == row.id)
                .values(log_index=size + offset, leaf_hash=merkle.leaf_hash(row.envelope.encode()).hex())
            )
        size += len(unlogged)
        latest = conn.execute(
            sa.select(provenance_checkpoints.c.tree_size, provenance_checkpoints.c.note)
            .order_by(provenance_checkpoints.c.tree_size.desc())
            .limit(1)
        ).first()
        if latest is not None and latest.tree_size == size:
            return Integrated(0, size, latest.note)
        tree = merkle.Tree(leaf_hashes(conn, size))
        if latest is not None:
            signed = conn.execute(
                sa.select(provenance_checkpoints.c.root_hash).where(
                    provenance_checkpoints.c.tree_size == latest.tree_size
                )
            ).scalar_one()
            if latest.tree_size > tree.size or tree.root(latest.tree_size).hex() != signed:
                # Never sign over a log whose past no longer matches what was signed.
                raise LogCorrupted(
                    f"the log's first {latest.tree_size} leaves no longer match their signed checkpoint"
                )
        root = tree.root()
        note = sign_checkpoint(Checkpoint(origin, size, root), key)
        conn.execute(
            provenance_checkpoints.insert().values(
                tree_size=size, root_hash=root.hex(), note=note, created_at=now
            )
        )
        return Integrated(len(unlogged), size, note)


def _take_pending(conn: sa.Connection, now: datetime) -> None:
    rows = conn.execute(
        sa.select(rule_state.c.key, rule_state.c.value)
        .where(rule_state.c.key.like(PENDING_PREFIX + "%"))
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
    """The first `size` leaf hashes, in log order."""
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


def proofs(conn: sa.Connection, indices: Sequence[int], size: int) -> dict[int, dict[str, Any]]:
    """Inclusion proofs (as the API shows them) of leaves in the tree of `size`."""
    tree = merkle.Tree(leaf_hashes(conn, size))
    root = tree.root().hex()
    return {
        i: {
            "log_index": i,
            "tree_size": size,
            "root_hash": root,
            "hashes": [h.hex() for h in tree.inclusion_proof(i)],
        }
        for i in indices
        if 0 <= i < tree.size  # fewer leaves than the tree had: the log lost some, no proof
    }


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
