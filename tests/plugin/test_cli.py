"""The admin's command line, run as an admin runs it: `python -m plugin ...` in a subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from plugin import migrate
from plugin.storage import begin_write, get_engine, inbox, outbox
from tests.support.processes import ROOT, run_plugin


def env_for(tmp_path: Path, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONRECORD_")}
    config = tmp_path / "onrecord.toml"
    config.write_text(f'var_dir = "{tmp_path}/var"\nsecrets_dir = "{tmp_path}/var/secrets"\n')
    env.update(
        {"ONRECORD_CONFIG": str(config), "ONRECORD_STORAGE__URL": db_url, "PYTHONPATH": str(ROOT), **extra}
    )
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_plugin(*args, env=env, timeout=60)


def test_init_generates_dev_secrets_once_with_mode_0600(tmp_path: Path, sqlite_url: str) -> None:
    env = env_for(tmp_path, sqlite_url)
    first = cli(env, "init")
    assert first.returncode == 0, first.stderr
    secret_file = tmp_path / "var" / "secrets" / "salesforce.events_secret"
    secret = secret_file.read_text().strip()
    assert secret.startswith("whsec_") and secret in first.stdout
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700  # the database lives here too
    assert not (secret_file.parent / "salesforce.client_secret").exists()  # Salesforce's, not ours to invent
    again = cli(env, "init")
    assert again.returncode == 0 and secret not in again.stdout  # shown once, never again
    assert secret_file.read_text().strip() == secret
    assert "database ready" in again.stdout


def test_check_passes_after_init(tmp_path: Path, sqlite_url: str) -> None:
    env = env_for(tmp_path, sqlite_url)
    cli(env, "init")
    result = cli(env, "check")
    assert result.returncode == 0, result.stdout
    assert "ok   CRM writer dry_run" in result.stdout


def test_check_names_a_bad_configuration_key(tmp_path: Path, sqlite_url: str) -> None:
    result = cli(env_for(tmp_path, sqlite_url, ONRECORD_SERVER__WORKERS="many"), "check")
    assert result.returncode == 2 and "server.workers" in result.stderr


def test_check_says_exactly_why_the_database_is_unreachable(tmp_path: Path) -> None:
    env = env_for(tmp_path, "postgresql://nobody@127.0.0.1:1/none")
    result = cli(env, "check")
    assert result.returncode == 1
    assert (
        "FAIL database postgresql+psycopg://nobody@127.0.0.1:1/none unreachable: OperationalError"
        in result.stdout
    )


def test_check_reports_a_missing_schema_and_a_missing_secret(tmp_path: Path, sqlite_url: str) -> None:
    result = cli(env_for(tmp_path, sqlite_url), "check")
    assert result.returncode == 1
    assert "has no schema: run `python -m plugin init`" in result.stdout
    assert "off  POST /hooks/salesforce/events: salesforce.events_secret is not set" in result.stdout


def test_outbox_and_deadletters_show_and_requeue(tmp_path: Path, sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    migrate.upgrade(engine)
    now = datetime.now(UTC)
    base = {
        "target": "crm",
        "object": "Opportunity",
        "operation": "update",
        "occurred_at": now,
        "next_attempt_at": now,
        "created_at": now,
        "payload": {"Amount": 1},
    }
    with begin_write(engine) as conn:
        conn.execute(
            outbox.insert(),
            [
                {**base, "record_key": "r1", "status": "pending", "attempts": 0, "last_error": None},
                {
                    **base,
                    "record_key": "r2",
                    "status": "dead",
                    "attempts": 8,
                    "last_error": "FIELD_CUSTOM_VALIDATION_EXCEPTION: nope",
                },
            ],
        )
        conn.execute(
            inbox.insert().values(
                source="test",
                delivery_id="d1",
                kind="record.changed",
                ordering_key="k",
                occurred_at=now,
                received_at=now,
                sender="t",
                raw_digest="0" * 64,
                data={},
                status="parked",
                attempts=1,
                error="RuntimeError: boom",
            )
        )
    env = env_for(tmp_path, sqlite_url)
    shown = json.loads(cli(env, "outbox", "--json").stdout)
    assert shown["counts"] == {"pending": 1, "sent": 0, "dead": 1}
    assert shown["dead"][0]["last_error"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION: nope"
    listed = cli(env, "deadletters", "list")
    assert "write:2" in listed.stdout and "event:1" in listed.stdout and "RuntimeError: boom" in listed.stdout
    assert cli(env, "deadletters", "retry", "write:99").returncode == 1
    assert cli(env, "deadletters", "retry", "banana").returncode == 2
    retried = cli(env, "deadletters", "retry", "--all")
    assert retried.returncode == 0 and "requeued 1 write(s) and 1 event(s)" in retried.stdout
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(outbox.c.status)).scalars()) == {"pending"}
        assert conn.execute(sa.select(inbox.c.status)).scalar() == "pending"


@pytest.mark.parametrize("command", ["init", "serve", "worker", "check", "outbox", "deadletters"])
def test_every_command_has_help(command: str) -> None:
    result = run_plugin(command, "--help", cwd=ROOT, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and "usage:" in result.stdout


def test_the_command_list_shows_no_argparse_internals() -> None:
    result = run_plugin("--help", env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert "SUPPRESS" not in result.stdout and "inbox-writer" not in result.stdout


def test_init_writes_a_starter_config_that_governs_opportunity_and_a_budget_approval(tmp_path: Path) -> None:
    import shutil
    import tomllib

    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "config" / "onrecord.toml").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONRECORD_")}
    env["PYTHONPATH"] = str(ROOT)
    result = run_plugin("init", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    written = tomllib.loads((tmp_path / "config" / "onrecord.toml").read_text())
    opportunity, budget = written["governed"]
    assert opportunity == {"object": "Opportunity", "fields": ["Amount", "StageName", "CloseDate"]}
    assert (budget["object"], budget["approval_field"], budget["form_id"]) == (
        "Budget_Request__c",
        "Status__c",
        "budget-request",
    )
    assert [s["name"] for s in budget["stages"]] == ["business strategy", "finance"]
    # made-up demo people and leaders, clearly fake, that the policy's approver groups name
    people = written["directory"]["people"]
    groups = {g for person in people for g in person.get("groups", [])}
    assert {a for s in budget["stages"] for a in s["approvers"]} <= groups
    emails = [e for person in people for e in person["emails"]]
    leaders = written["leaders"]["users"]
    assert all(e.endswith("@example.com") for e in [*emails, *(u["email"] for u in leaders)])
    assert {u["email"] for u in leaders} <= set(emails)
    assert written["salesforce"]["org_id"]  # the outbound messages of `demo` come from this org
    # every other key is still the example's (the starter only fills the lists it replaces)
    example = tomllib.loads((tmp_path / "config" / "onrecord.example.toml").read_text())
    for section, values in example.items():
        if isinstance(values, dict):
            kept = {k: v for k, v in written[section].items() if k not in ("people", "users", "org_id")}
            assert kept == {k: v for k, v in values.items() if k not in ("people", "users", "org_id")}
    assert (tmp_path / "var" / "onrecord.db").exists()
    check = run_plugin("check", cwd=tmp_path, env=env, timeout=60)
    assert check.returncode == 0, check.stdout
    assert "ok   governed objects: Opportunity, Budget_Request__c" in check.stdout
    assert "rules: approvals" in check.stdout


def test_check_names_a_broken_outbound_wsdl(tmp_path: Path, sqlite_url: str) -> None:
    broken = tmp_path / "broken.wsdl"
    broken.write_text("<definitions>not a wsdl")
    good = ROOT / "connectors" / "salesforce" / "fixtures" / "opportunity_outbound.wsdl"
    env = env_for(tmp_path, sqlite_url, ONRECORD_SALESFORCE__OUTBOUND_WSDLS=f'["{good}"]')
    cli(env, "init")
    ok = cli(env, "check")
    assert "ok   outbound message WSDLs: 1 file(s), typing Opportunity" in ok.stdout
    env["ONRECORD_SALESFORCE__OUTBOUND_WSDLS"] = f'["{good}", "{broken}"]'
    failed = cli(env, "check")
    assert failed.returncode == 1 and "FAIL outbound message WSDLs:" in failed.stdout
    assert "broken.wsdl" in failed.stdout


def test_retrying_a_dead_write_never_resends_a_field_written_again_since(
    tmp_path: Path, sqlite_url: str
) -> None:
    engine = get_engine(sqlite_url)
    migrate.upgrade(engine)
    t0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    base = {
        "target": "crm",
        "object": "Opportunity",
        "record_key": "r1",
        "operation": "update",
        "next_attempt_at": t0,
        "created_at": t0,
        "attempts": 8,
        "last_error": "UNABLE_TO_LOCK_ROW",
    }
    with begin_write(engine) as conn:
        conn.execute(outbox.insert(), [
            {**base, "payload": {"Amount": 1, "StageName": "A"}, "occurred_at": t0, "status": "dead"},
            {**base, "payload": {"Amount": 5}, "occurred_at": t0, "status": "dead", "record_key": "r2"},
            {**base, "payload": {"Amount": 2}, "occurred_at": t0 + timedelta(minutes=1), "status": "sent"},
            {**base, "payload": {"Amount": 6}, "occurred_at": t0 + timedelta(minutes=1), "status": "sent",
             "record_key": "r2"},
        ])  # fmt: skip
    result = cli(env_for(tmp_path, sqlite_url), "deadletters", "retry", "--all")
    assert result.returncode == 0, result.stdout
    assert "write:1 Opportunity/r1: not resending Amount, written again since" in result.stdout
    assert (
        "write:2 Opportunity/r2 stays dead: every field of it was written again since (Amount)"
        in result.stdout
    )
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(outbox))}
    assert (rows[1].status, rows[1].payload) == ("pending", {"StageName": "A"})
    assert rows[2].status == "dead"


def test_outbox_counts_sent_history_only_so_far(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from plugin.commands import outbox as command
    from tests.conftest import make_config

    config = make_config(db_url, tmp_path)
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    now = datetime.now(UTC)
    row = {"target": "salesforce", "object": "Opportunity", "operation": "update", "payload": {"A": 1}}
    row |= {"occurred_at": now, "attempts": 0, "next_attempt_at": now, "created_at": now, "sent_at": now}
    with begin_write(engine) as conn:
        conn.execute(outbox.insert(), [{**row, "record_key": f"k{i}", "status": "sent"} for i in range(5)])
    monkeypatch.setattr(command, "SENT_COUNTED_UP_TO", 3)
    command.run_outbox(argparse.Namespace(json=True, limit=2), config)
    shown = json.loads(capsys.readouterr().out)
    assert shown["counts"] == {"pending": 0, "sent": 3, "dead": 0} and shown["sent_at_least"] is True
    command.run_outbox(argparse.Namespace(json=False, limit=2), config)
    assert "outbox: 0 pending, over 3 sent, 0 dead" in capsys.readouterr().out
    monkeypatch.setattr(command, "SENT_COUNTED_UP_TO", 5)
    command.run_outbox(argparse.Namespace(json=True, limit=2), config)
    shown = json.loads(capsys.readouterr().out)
    assert shown["counts"]["sent"] == 5 and "sent_at_least" not in shown
