"""The log's stored tree: the same answers as a full recomputation, checkpoints and their consistency
proofs over HTTP and in `plugin verify`, and a changed past refused by the sequencer and the verifier."""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin import migrate
from plugin.app import create_app
from plugin.cli import main
from plugin.commands import verify as verify_command
from plugin.config import Config
from plugin.provenance import merkle
from plugin.provenance.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from plugin.provenance.keys import SigningKey, keys_from_jwks
from plugin.provenance.log import (
    AUDIT_LEVEL,
    LogCorrupted,
    consistency,
    integrate,
    leaf_hashes,
    proofs,
    root_at,
)
from plugin.provenance.rule import key_store
from plugin.provenance.verify import verify_checkpoints
from plugin.storage import (
    begin_write,
    get_engine,
    provenance_checkpoints,
    provenance_statements,
    provenance_tree,
)
from tests.conftest import make_config

ORIGIN = "onrecord.local/provenance"
TOKEN = "api-token-for-log-tree-tests-0123456"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def add_statements(engine: sa.Engine, first: int, count: int) -> None:
    """Unlogged statements, as the API leaves citations (the sequencer logs them in id order)."""
    rows = [
        {
            "kind": "citation",
            "object": "Opportunity",
            "record_id": f"r{n}",
            "digest": hashlib.sha256(str(n).encode()).hexdigest(),
            "envelope": json.dumps({"payload": f"statement {n}"}),
            "recorded_at": NOW,
        }
        for n in range(first, first + count)
    ]
    if rows:
        with begin_write(engine) as conn:
            conn.execute(provenance_statements.insert(), rows)


def build(engine: sa.Engine, key: SigningKey, batches: list[int]) -> list[int]:
    """A log grown by one sequencer pass per batch; the sizes its checkpoints signed."""
    migrate.upgrade(engine)
    total, sizes = 0, []
    for count in batches:
        add_statements(engine, total, count)
        total += count
        sizes.append(integrate(engine, key, ORIGIN, NOW).tree_size)
    return sizes


def log_engine(db_url: str) -> sa.Engine:
    engine = get_engine(db_url)
    migrate.upgrade(engine)
    return engine


def test_the_migration_creates_the_table_the_code_uses(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from plugin.storage import metadata

    engine = log_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if "provenance_tree" in str(d)] == []


def test_the_stored_tree_answers_as_a_full_recomputation(db_url: str) -> None:
    engine = log_engine(db_url)
    key = SigningKey.generate()
    sizes = build(engine, key, [1, 2, 5, 0, 64, 1, 57, 70])
    assert sizes == [1, 3, 8, 8, 72, 73, 130, 200]
    with engine.connect() as conn:
        leaves = leaf_hashes(conn, 200)
        query = sa.select(provenance_checkpoints.c.tree_size, provenance_checkpoints.c.root_hash)
        signed = {int(size): str(root) for size, root in conn.execute(query)}
    full = merkle.Tree(leaves)
    assert {size: full.root(size).hex() for size in signed} == signed
    assert leaves == [
        merkle.leaf_hash(json.dumps({"payload": f"statement {n}"}).encode()) for n in range(200)
    ]

    with engine.connect() as conn:  # many proofs at once: more keys than one query takes
        every = proofs(conn, list(range(200)), 200)
    assert {i: p["hashes"] for i, p in every.items()} == {
        i: [h.hex() for h in full.inclusion_proof(i, 200)] for i in range(200)
    }

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.integers(1, 200), st.integers(1, 200), st.integers(0, 199))
    def answers(a: int, b: int, index: int) -> None:
        old, new = min(a, b), max(a, b)
        with engine.connect() as conn:
            assert root_at(conn, new) == full.root(new)
            found = proofs(conn, [index % new], new)[index % new]
            assert found["hashes"] == [h.hex() for h in full.inclusion_proof(index % new, new)]
            assert found["root_hash"] == full.root(new).hex()
            assert consistency(conn, old, new) == full.consistency_proof(old, new)

    answers()


def test_a_proof_is_one_round_trip_on_postgres(db_url: str) -> None:
    """On PostgreSQL leaves and nodes come back in one statement whatever their count (arrays, so
    the server plans it once); SQLite, in process, asks for leaves and for nodes apart."""
    engine = log_engine(db_url)
    build(engine, SigningKey.generate(), [77])
    full = merkle.Tree(
        [merkle.leaf_hash(json.dumps({"payload": f"statement {n}"}).encode()) for n in range(77)]
    )
    sent: list[str] = []
    sa.event.listen(
        engine,
        "before_cursor_execute",
        lambda _c, _cu, statement, *_: sent.append(statement) if statement.startswith("SELECT") else None,
    )
    per_call = 1 if engine.dialect.name == "postgresql" else 2  # leaves 4 and 76, and nodes, each time
    with engine.connect() as conn:
        for call, expected in (
            (lambda: proofs(conn, [5], 77)[5]["hashes"], [h.hex() for h in full.inclusion_proof(5, 77)]),
            (lambda: consistency(conn, 13, 77), full.consistency_proof(13, 77)),
        ):
            sent.clear()
            assert call() == expected
            assert len(sent) == per_call, sent


def tree_rows(engine: sa.Engine) -> dict[tuple[int, int], bytes]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(provenance_tree.c.level, provenance_tree.c.idx, provenance_tree.c.hash))
        return {(int(lv), int(i)): bytes(h) for lv, i, h in rows}


def test_each_perfect_subtree_is_stored_once_when_it_completes(db_url: str) -> None:
    engine = log_engine(db_url)
    build(engine, SigningKey.generate(), [3, 1, 9])
    with engine.connect() as conn:
        leaves = leaf_hashes(conn, 13)
    full = merkle.Tree(leaves)
    expected = {(lv, i) for lv in range(1, 4) for i in range(13 >> lv)}
    stored = tree_rows(engine)
    assert set(stored) == expected
    assert stored == full.hashes(expected)


def tamper_node(engine: sa.Engine, node: tuple[int, int]) -> None:
    with begin_write(engine) as conn:
        done = conn.execute(
            provenance_tree.update()
            .where(provenance_tree.c.level == node[0], provenance_tree.c.idx == node[1])
            .values(hash=b"\x66" * 32)
        )
        assert done.rowcount == 1


def tamper_leaf(engine: sa.Engine, index: int, **values: Any) -> None:
    with begin_write(engine) as conn:
        done = conn.execute(
            provenance_statements.update().where(provenance_statements.c.log_index == index).values(**values)
        )
        assert done.rowcount == 1


def test_the_sequencer_refuses_a_changed_right_edge_by_the_consistency_proof(db_url: str) -> None:
    engine = log_engine(db_url)
    key = SigningKey.generate()
    build(engine, key, [300])  # the right edge: (8, 0), (5, 8), (3, 36), (2, 74)
    windows = -(-301 >> AUDIT_LEVEL)  # ceil(301 / 2^AUDIT_LEVEL)
    tamper_node(engine, (5, 8))
    add_statements(engine, 300, 1)
    for window in range(windows):  # whichever window it re-derives, the proof from 300 fails
        with pytest.raises(LogCorrupted, match="first 300 leaves no longer match"):
            integrate(engine, key, ORIGIN, NOW, audit=window)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(provenance_checkpoints.c.tree_size))).scalar() == 300


@pytest.mark.parametrize(
    ("what", "change", "leaf"),
    [
        ("a stored node inside a window", ("node", (3, 2)), 16),
        ("a stored node above the windows", ("node", (7, 0)), 64),
        ("a leaf hash", ("leaf", 70, {"leaf_hash": "ab" * 32}), 70),
        ("a leaf's statement", ("leaf", 5, {"envelope": json.dumps({"payload": "forged"})}), 5),
        ("a lost leaf", ("delete", 130), 130),
    ],
)
def test_the_sequencer_refuses_a_changed_past_found_by_its_audit(
    db_url: str, what: str, change: tuple[Any, ...], leaf: int
) -> None:
    assert 1 << AUDIT_LEVEL <= 64  # (7, 0) is above every window
    engine = log_engine(db_url)
    key = SigningKey.generate()
    build(engine, key, [300])
    if change[0] == "node":
        tamper_node(engine, change[1])
    elif change[0] == "leaf":
        tamper_leaf(engine, change[1], **change[2])
    else:
        with begin_write(engine) as conn:
            conn.execute(provenance_statements.delete().where(provenance_statements.c.log_index == change[1]))
    add_statements(engine, 300, 1)
    with pytest.raises(LogCorrupted):  # the window over that leaf
        integrate(engine, key, ORIGIN, NOW, audit=leaf >> AUDIT_LEVEL)
    # The sweep (a window further each signing pass) finds it within one pass per window.
    caught = 0
    for n in range(2 + (320 >> AUDIT_LEVEL)):  # more passes than windows
        add_statements(engine, 301 + n, 1)
        try:
            integrate(engine, key, ORIGIN, NOW)
        except LogCorrupted:
            caught += 1
    assert caught >= 1, what


# -- over HTTP and in `plugin verify` ------------------------------------------------------------


@pytest.fixture
def served(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FlaskClient, Config]:
    """An OnRecord app, and `plugin verify --url` talking to it (requests.get -> the test client)."""
    config = make_config(db_url, tmp_path, **{"api.tokens": [TOKEN]})
    key_store(config).create(NOW)
    client = create_app(config).test_client()

    class Answer:
        def __init__(self, resp: Any) -> None:
            self.status_code, self.text, self._resp = resp.status_code, resp.get_data(as_text=True), resp

        def json(self) -> Any:
            if self._resp.json is None:
                raise ValueError("not JSON")
            return self._resp.json

        def raise_for_status(self) -> None:
            assert self.status_code == 200

    def get(url: str, headers: dict[str, str] | None = None, timeout: float = 0) -> Answer:
        return Answer(client.get(url.removeprefix("http://onrecord.test"), headers=headers or {}))

    monkeypatch.setattr(verify_command.requests, "get", get)
    return client, config


def current(client: FlaskClient) -> str:
    resp = client.get("/api/provenance/checkpoint", headers=AUTH)
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    return resp.get_data(as_text=True)


def test_the_checkpoint_and_its_consistency_proof_over_http(served: tuple[FlaskClient, Config]) -> None:
    client, config = served
    engine = get_engine(config.storage.url)
    keys = keys_from_jwks(client.get("/.well-known/onrecord-keys.json").json)
    add_statements(engine, 0, 3)
    old = open_checkpoint(current(client), keys.values(), ORIGIN)
    add_statements(engine, 3, 4)
    answer = client.get(f"/api/provenance/checkpoint?from={old.size}", headers=AUTH)
    assert answer.status_code == 200
    body = answer.json
    new = open_checkpoint(body["checkpoint"], keys.values(), ORIGIN)
    assert (old.size, new.size) == (3, 7)
    assert body["consistency_proof"]["from_size"] == 3 and body["consistency_proof"]["tree_size"] == 7
    hashes = [bytes.fromhex(h) for h in body["consistency_proof"]["hashes"]]
    assert merkle.verify_consistency(3, 7, hashes, old.root_hash, new.root_hash)
    earlier = client.get("/api/provenance/checkpoint?from=1&to=3", headers=AUTH).json
    assert open_checkpoint(earlier["checkpoint"], keys.values()) == old
    assert earlier["consistency_proof"]["tree_size"] == 3
    assert (
        client.get("/api/provenance/checkpoint?from=0", headers=AUTH).json["consistency_proof"]["hashes"]
        == []
    )
    for query, status in [("from=8", 400), ("from=-1", 400), ("from=x", 400), ("from=1&to=5", 404)]:
        assert client.get(f"/api/provenance/checkpoint?{query}", headers=AUTH).status_code == status, query
    assert client.get("/api/provenance/checkpoint").status_code == 401


def verify_args(**kw: Any) -> argparse.Namespace:
    values: dict[str, Any] = {"file": None, "record": None, "url": None, "keys": None, "token": TOKEN}
    return argparse.Namespace(**(values | kw))


def test_plugin_verify_checks_a_saved_checkpoint_against_the_log(
    served: tuple[FlaskClient, Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client, config = served
    engine = get_engine(config.storage.url)
    add_statements(engine, 0, 3)
    saved = tmp_path / "old.checkpoint"
    saved.write_text(current(client))
    add_statements(engine, 3, 70)
    newer = tmp_path / "new.checkpoint"
    newer.write_text(current(client))
    url = "http://onrecord.test"

    # A saved checkpoint and the log's current one (the form `python -m plugin verify` has today).
    assert verify_command.run(verify_args(file=str(saved), url=url), config) == 0
    out = capsys.readouterr().out
    assert "older checkpoint: ok, 3 statements" in out and "newer checkpoint: ok, 73 statements" in out
    assert out.strip().endswith("consistent") and "\u2014 onrecord.local/provenance " in out
    # Two saved checkpoints, the proof fetched, or read from a file saved earlier.
    assert verify_command.run(verify_args(checkpoints=[str(saved), str(newer)], url=url), config) == 0
    proof = tmp_path / "proof.json"
    proof.write_text(client.get("/api/provenance/checkpoint?from=3", headers=AUTH).get_data(as_text=True))
    assert (
        verify_command.run(verify_args(checkpoints=[str(saved), str(newer)], proof=str(proof)), config) == 0
    )
    capsys.readouterr()

    # The stored past changed: a node the proof from 3 to 73 needs (the leaf at 2).
    tamper_leaf(engine, 2, leaf_hash="cd" * 32)
    assert verify_command.run(verify_args(file=str(saved), url=url), config) == 1
    out = capsys.readouterr().out
    assert "FAILED  log_inconsistent" in out and out.strip().endswith("NOT consistent")
    assert verify_command.run(verify_args(checkpoints=[str(saved), str(newer)], url=url), config) == 1
    # ... and a stored node: the sequencer refuses to sign, which the verifier reports.
    tamper_leaf(engine, 2, leaf_hash=merkle.leaf_hash(json.dumps({"payload": "statement 2"}).encode()).hex())
    assert verify_command.run(verify_args(file=str(saved), url=url), config) == 0
    tamper_node(engine, (6, 0))
    add_statements(engine, 73, 1)
    assert verify_command.run(verify_args(file=str(saved), url=url), config) == 1
    out = capsys.readouterr().out
    assert "the log says" in out and out.strip().endswith("NOT consistent")
    # The proof file kept from before still holds against the saved checkpoints (nothing new signed).
    assert (
        verify_command.run(verify_args(checkpoints=[str(saved), str(newer)], proof=str(proof)), config) == 0
    )


def test_a_split_view_and_a_shrunk_log_are_named() -> None:
    key = SigningKey.generate()
    keys = {"k": key.public}
    leaves = [merkle.leaf_hash(bytes([n])) for n in range(9)]
    tree, other = merkle.Tree(leaves), merkle.Tree([*leaves[:4], merkle.leaf_hash(b"x"), *leaves[5:]])

    def note(t: merkle.Tree, size: int) -> str:
        return sign_checkpoint(Checkpoint(ORIGIN, size, t.root(size)), key)

    def hexes(hashes: list[bytes]) -> list[str]:
        return [h.hex() for h in hashes]

    assert verify_checkpoints(
        note(tree, 5), note(tree, 9), hexes(tree.consistency_proof(5, 9)), keys
    ).consistent
    forked = verify_checkpoints(note(tree, 5), note(other, 9), hexes(other.consistency_proof(5, 9)), keys)
    assert (forked.consistent, forked.reason) == (False, "log_inconsistent")
    same_size = verify_checkpoints(note(tree, 9), note(other, 9), [], keys)
    assert same_size.reason == "log_inconsistent" and "two different trees" in same_size.detail
    shrunk = verify_checkpoints(note(tree, 9), note(tree, 5), [], keys)
    assert shrunk.reason == "log_inconsistent" and "shrank" in shrunk.detail
    stranger = SigningKey.generate()
    forged = sign_checkpoint(Checkpoint(ORIGIN, 9, tree.root(9)), stranger)
    assert verify_checkpoints(note(tree, 5), forged, hexes(tree.consistency_proof(5, 9)), keys).reason == (
        "checkpoint_invalid"
    )
    empty = verify_checkpoints(note(tree, 0), note(tree, 9), [], keys)
    assert empty.consistent


def test_log_checkpoint_output_is_what_verify_takes(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("ONRECORD_CONFIG", "ONRECORD_API__TOKENS"):
        monkeypatch.delenv(name, raising=False)
    config_file = tmp_path / "onrecord.toml"
    config_file.write_text(f'var_dir = "{tmp_path}/var"\nsecrets_dir = "{tmp_path}/var/secrets"\n')
    monkeypatch.setenv("ONRECORD_CONFIG", str(config_file))
    monkeypatch.setenv("ONRECORD_STORAGE__URL", sqlite_url)
    assert main(["init"]) == 0
    engine = get_engine(sqlite_url)
    add_statements(engine, 0, 5)
    capsys.readouterr()
    assert main(["log", "checkpoint"]) == 0
    note = capsys.readouterr().out
    lines = note.split("\n")
    assert lines[:2] == [ORIGIN, "5"] and lines[3] == "" and lines[4].startswith(f"\u2014 {ORIGIN} ")
    saved = tmp_path / "cp.txt"
    saved.write_text(note)
    add_statements(engine, 5, 2)
    assert main(["log", "checkpoint"]) == 0
    newer = tmp_path / "cp2.txt"
    newer.write_text(capsys.readouterr().out)
    with engine.connect() as conn:
        hashes = [h.hex() for h in consistency(conn, 5, 7)]
    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps({"consistency_proof": {"from_size": 5, "tree_size": 7, "hashes": hashes}}))
    args = verify_args(checkpoints=[str(saved), str(newer)], proof=str(proof), token=None)
    from plugin.config import load_config

    assert verify_command.run(args, load_config()) == 0
    assert capsys.readouterr().out.strip().endswith("consistent")
    # Without --url or a proof the saved checkpoint cannot be checked: say so (exit 2).
    assert main(["verify", str(saved)]) == 2


def test_the_migration_fills_the_tree_from_leaves_logged_before_it(db_url: str) -> None:
    from alembic import command

    from plugin.migrate import alembic_config

    engine = get_engine(db_url)
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), "0006")
        conn.commit()
    key = SigningKey.generate()
    envelopes = [json.dumps({"payload": f"old {n}"}) for n in range(21)]
    leaves = [merkle.leaf_hash(e.encode()) for e in envelopes]
    with begin_write(engine) as conn:  # the log as the sequencer before 0007 left it
        conn.execute(
            provenance_statements.insert(),
            [
                {
                    "kind": "citation",
                    "object": "Opportunity",
                    "record_id": f"old{n}",
                    "digest": hashlib.sha256(e.encode()).hexdigest(),
                    "envelope": e,
                    "recorded_at": NOW,
                    "log_index": n,
                    "leaf_hash": leaves[n].hex(),
                }
                for n, e in enumerate(envelopes)
            ],
        )
        root = merkle.Tree(leaves).root()
        note = sign_checkpoint(Checkpoint(ORIGIN, 21, root), key)
        conn.execute(
            provenance_checkpoints.insert().values(
                tree_size=21, root_hash=root.hex(), note=note, created_at=NOW
            )
        )
    migrate.upgrade(engine)
    stored = tree_rows(engine)
    expected = {(lv, i) for lv in range(1, 5) for i in range(21 >> lv)}
    assert stored == merkle.Tree(leaves).hashes(expected)
    add_statements(engine, 100, 2)
    result = integrate(engine, key, ORIGIN, NOW)
    assert result.tree_size == 23
    with engine.connect() as conn:
        hashes = [h.hex() for h in consistency(conn, 21, 23)]
    assert verify_checkpoints(note, result.note, hashes, {"k": key.public}).consistent
