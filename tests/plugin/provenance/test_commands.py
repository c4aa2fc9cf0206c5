"""`init` makes the key; `keys list|rotate|export`, `log checkpoint`, `verify FILE` as an admin runs them."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from plugin.cli import main
from plugin.config import load_config
from plugin.inbox import insert_events
from plugin.provenance.api import load_chain
from plugin.provenance.keys import keys_from_jwks
from plugin.provenance.rule import key_store
from plugin.rules import load_rules
from plugin.runtime import Runtime
from plugin.storage import begin_write, get_engine
from plugin.worker import Worker

from .support import RECORD, changed


@pytest.fixture
def admin(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installation configured from the environment, after `init`."""
    for name in [n for n in os.environ if n.startswith("ONRECORD_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "onrecord.toml"
    config.write_text(f'var_dir = "{tmp_path}/var"\nsecrets_dir = "{tmp_path}/var/secrets"\n')
    monkeypatch.setenv("ONRECORD_CONFIG", str(config))
    monkeypatch.setenv("ONRECORD_STORAGE__URL", sqlite_url)
    monkeypatch.setenv("ONRECORD_GOVERNED", json.dumps([{"object": "Opportunity", "fields": ["Amount"]}]))
    assert main(["init"]) == 0
    return tmp_path


def chain_file(tmp_path: Path) -> Path:
    """What GET /api/provenance answers for a record with two changes, saved to a file."""
    config = load_config()
    engine = get_engine(config.storage.url)
    with begin_write(engine) as conn:
        insert_events(conn, [changed(0, Amount="1"), changed(1, Amount="2")], datetime.now(UTC))
    Worker(engine, load_rules(config)).run_once()
    rt = Runtime(config=config, engine=engine, committer=None)  # type: ignore[arg-type]
    loaded = load_chain(rt, key_store(config), "Opportunity", RECORD)
    document = {
        "object": "Opportunity",
        "record_id": RECORD,
        "chain": loaded.entries,
        "checkpoint": loaded.checkpoint,
    }
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(document))
    return path


def test_init_creates_the_signing_key_and_keys_rotate_keeps_the_old_public_key(
    capsys: pytest.CaptureFixture[str], admin: Path
) -> None:
    out = capsys.readouterr().out
    first = key_store(load_config()).index()["active"]
    assert f"generated the provenance signing key {first}" in out
    assert main(["keys", "rotate"]) == 0
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()[-2:]
    assert listed[0].split()[0] != first and listed[0].endswith("active")
    assert listed[1].startswith(first) and "retired" in listed[1]
    assert main(["keys", "export"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert len(keys_from_jwks(exported)) == 2 and all("d" not in k for k in exported["keys"])


def test_verify_a_saved_chain_offline_and_name_what_was_tampered(
    admin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = chain_file(admin)
    keys = admin / "keys.json"
    main(["keys", "export"])
    keys.write_text(capsys.readouterr().out)
    assert main(["verify", str(path), "--keys", str(keys)]) == 0
    assert capsys.readouterr().out.strip().endswith("verified")
    document = json.loads(path.read_text())
    newest = document["chain"][0]["envelope"]
    payload = base64.b64decode(newest["payload"]).replace(b'"Amount":2', b'"Amount":9')
    newest["payload"] = base64.b64encode(payload).decode()
    path.write_text(json.dumps(document))
    assert main(["verify", str(path), "--keys", str(keys)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "signature_invalid" in out and out.strip().endswith("NOT verified")


def test_log_checkpoint_prints_the_signed_note(admin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain_file(admin)
    capsys.readouterr()
    assert main(["log", "checkpoint"]) == 0
    note = capsys.readouterr().out
    lines = note.split("\n")
    assert lines[:2] == ["onrecord.local/provenance", "2"] and lines[4].startswith(
        "\u2014 onrecord.local/provenance "
    )
