"""The worker signs, the sequencer logs; tampering with the store is detected and named."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from plugin import migrate
from plugin.config import Config
from plugin.inbox import insert_events
from plugin.provenance.keys import keys_from_jwks
from plugin.provenance.log import (
    LogCorrupted,
    integrate,
    latest_checkpoint,
    proofs,
    record_chain,
    sequencer_jobs,
)
from plugin.provenance.rule import key_store
from plugin.provenance.verify import ChainCheck, verify_chain
from plugin.rules import load_rules
from plugin.storage import begin_write, get_engine, provenance_statements
from plugin.worker import Worker
from tests.conftest import make_config

from .support import RECORD, changed

ORIGIN = "onrecord.local/provenance"


def provenance_config(db_url: str, tmp_path: Path) -> Config:
    config = make_config(db_url, tmp_path, **{"worker.rules": ["plugin.rules:builtin_rules"]})
    key_store(config).create(datetime.now(UTC))
    return config


def record_three_changes(config: Config) -> sa.Engine:
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    with begin_write(engine) as conn:
        insert_events(
            conn,
            [changed(0, Amount="100"), changed(5, Amount="200"), changed(9, StageName="Closed Won")],
            datetime.now(UTC),
        )
    Worker(engine, load_rules(config)).run_once()
    return engine


def check(config: Config, engine: sa.Engine) -> ChainCheck:
    """What GET /api/provenance does, and what an auditor does with its answer."""
    with engine.connect() as conn:
        rows = record_chain(conn, "Opportunity", RECORD)
        size, note = latest_checkpoint(conn) or (0, None)
        found = proofs(conn, [r["log_index"] for r in rows], size)
    entries = [{"envelope": r["envelope"], "inclusion_proof": found.get(r["log_index"])} for r in rows]
    keys = keys_from_jwks(key_store(config).jwks())
    return verify_chain(entries, keys, note, ORIGIN)


def sign_log(config: Config, engine: sa.Engine) -> None:
    integrate(engine, key_store(config).signing_key(), ORIGIN, datetime.now(UTC))


def test_worker_statements_enter_the_log_and_verify(db_url: str, tmp_path: Path) -> None:
    config = provenance_config(db_url, tmp_path)
    engine = record_three_changes(config)
    sign_log(config, engine)
    result = check(config, engine)
    assert result.verified and result.checkpoint is not None and result.checkpoint.size == 3
    sequences = [e.statement["predicate"]["sequence"] for e in result.entries if e.statement]
    assert sequences == [3, 2, 1]  # newest first
    values = result.entries[0].statement["predicate"]["entity"]["values"]  # type: ignore[index]
    assert values == {"Amount": 200, "StageName": "Closed Won"}


def _update(engine: sa.Engine, sequence: int, **values: object) -> None:
    with begin_write(engine) as conn:
        conn.execute(
            provenance_statements.update()
            .where(provenance_statements.c.sequence == sequence)
            .values(**values)
        )


def _envelope(engine: sa.Engine, sequence: int) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                sa.select(provenance_statements.c.envelope).where(
                    provenance_statements.c.sequence == sequence
                )
            ).scalar_one()
        )


def test_changing_a_byte_of_a_stored_statement_is_named(db_url: str, tmp_path: Path) -> None:
    config = provenance_config(db_url, tmp_path)
    engine = record_three_changes(config)
    sign_log(config, engine)
    envelope = json.loads(_envelope(engine, 2))
    payload = envelope["payload"]
    forged = payload.replace("MjAw", "OTAw", 1) if "MjAw" in payload else payload[:-8] + "AAAAAAA="
    _update(engine, 2, envelope=json.dumps(envelope | {"payload": forged}))
    result = check(config, engine)
    reasons = [e.reason for e in result.entries]
    assert reasons[1] == "signature_invalid"  # the altered statement itself
    assert reasons[0] == "chain_broken"  # the next one no longer links to what is stored
    assert reasons[2] == ""


def test_reordering_the_chain_is_named(db_url: str, tmp_path: Path) -> None:
    config = provenance_config(db_url, tmp_path)
    engine = record_three_changes(config)
    sign_log(config, engine)
    first, second = _envelope(engine, 1), _envelope(engine, 2)
    _update(engine, 1, envelope=second)
    _update(engine, 2, envelope=first)
    assert "chain_broken" in [e.reason for e in check(config, engine).entries]


def test_removing_a_statement_from_the_chain_is_named(db_url: str, tmp_path: Path) -> None:
    config = provenance_config(db_url, tmp_path)
    engine = record_three_changes(config)
    sign_log(config, engine)
    with begin_write(engine) as conn:
        conn.execute(provenance_statements.delete().where(provenance_statements.c.sequence == 2))
    result = check(config, engine)
    # The newer statement no longer follows one; the log, missing a leaf, no longer proves the older.
    assert [e.reason for e in result.entries] == ["chain_broken", "log_mismatch"]


def test_rewriting_the_log_is_named_and_never_signed_over(db_url: str, tmp_path: Path) -> None:
    config = provenance_config(db_url, tmp_path)
    engine = record_three_changes(config)
    sign_log(config, engine)
    # Swap two leaves of the log: every statement still verifies on its own, the log does not.
    with begin_write(engine) as conn:
        conn.execute(
            provenance_statements.update().where(provenance_statements.c.log_index == 0).values(log_index=-1)
        )
        conn.execute(
            provenance_statements.update().where(provenance_statements.c.log_index == 1).values(log_index=0)
        )
        conn.execute(
            provenance_statements.update().where(provenance_statements.c.log_index == -1).values(log_index=1)
        )
    result = check(config, engine)
    assert "log_mismatch" in [e.reason for e in result.entries]
    with begin_write(engine) as conn:
        insert_events(conn, [changed(20, Amount="300")], datetime.now(UTC))
    Worker(engine, load_rules(config)).run_once()
    with pytest.raises(LogCorrupted):
        sign_log(config, engine)  # the sequencer refuses to sign a checkpoint over a changed past


def test_a_forged_checkpoint_is_named(db_url: str, tmp_path: Path) -> None:
    config = provenance_config(db_url, tmp_path)
    engine = record_three_changes(config)
    sign_log(config, engine)
    with engine.connect() as conn:
        rows = record_chain(conn, "Opportunity", RECORD)
        size, note = latest_checkpoint(conn)  # type: ignore[misc]
        found = proofs(conn, [r["log_index"] for r in rows], size)
    entries = [{"envelope": r["envelope"], "inclusion_proof": found[r["log_index"]]} for r in rows]
    forged = note.replace(f"\n{size}\n", f"\n{size + 1}\n", 1)
    result = verify_chain(entries, keys_from_jwks(key_store(config).jwks()), forged, ORIGIN)
    assert {e.reason for e in result.entries} == {"checkpoint_invalid"}


def test_the_sequencer_job_takes_signed_statements_into_the_log(db_url: str, tmp_path: Path) -> None:
    config = provenance_config(db_url, tmp_path)
    engine = record_three_changes(config)
    with engine.connect() as conn:
        assert latest_checkpoint(conn) is None
    [job] = sequencer_jobs(config)
    assert job.run({}, datetime.now(UTC)).state == {"tree_size": 3}
    assert check(config, engine).verified


def test_a_backlog_is_sequenced_in_short_passes_and_an_idle_job_takes_no_lock(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plugin.provenance.log as log

    monkeypatch.setattr(log, "PENDING_PER_PASS", 2)
    monkeypatch.setattr(log, "_SELECT_PENDING", log._SELECT_PENDING.limit(2))
    config = provenance_config(db_url, tmp_path)
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    with begin_write(engine) as conn:
        insert_events(
            conn,
            [changed(i, record_id=f"0065g00000Acm{i:02d}AAA", Amount=str(i)) for i in range(5)],
            datetime.now(UTC),
        )
    Worker(engine, load_rules(config)).run_once()
    passes: list[int] = []
    real = log.integrate

    def counting(*args: object, **kw: object) -> log.Integrated:
        result = real(*args, **kw)  # type: ignore[arg-type]
        passes.append(result.added)
        return result

    monkeypatch.setattr(log, "integrate", counting)
    [job] = sequencer_jobs(config)
    assert job.run({}, datetime.now(UTC)).state == {"tree_size": 5}
    assert passes == [2, 2, 1]  # three transactions, none holding the whole backlog
    assert not log.has_work(engine)
    assert job.run({"tree_size": 5}, datetime.now(UTC)).state == {"tree_size": 5}
    assert passes == [2, 2, 1]  # nothing to do: not even a pass
