"""The directory table: a source's people replaced whole, merged with configuration, cached."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors.salesforce.ids import to_18
from plugin import migrate
from plugin.cli import main
from plugin.config import Config
from plugin.directory import Person
from plugin.directory_store import (
    DirectoryCache,
    configured_person,
    load_directory,
    replace_people,
    stored_people,
)
from plugin.storage import directory, get_engine
from tests.conftest import make_config

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
ANA = to_18("0055g00000AnaRz")
BO = to_18("0055g00000BoChn")


def user(user_id: str, name: str, *emails: str, groups: tuple[str, ...] = (), active: bool = True) -> Person:
    return Person(
        key=user_id,
        name=name,
        emails=emails,
        crm_ids=(user_id,),
        groups=groups,
        active=active,
        user_type="Standard",
    )


@pytest.fixture
def engine(config: Config) -> sa.Engine:
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    return engine


def rows(engine: sa.Engine) -> dict[str, sa.Row[tuple[str, str, datetime]]]:
    with engine.connect() as conn:
        query = sa.select(directory.c.key, directory.c.source, directory.c.updated_at)
        return {r.key: r for r in conn.execute(query)}


def test_the_migration_creates_the_table_the_code_uses(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from plugin.storage import metadata

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if "directory" in str(d)] == []
    assert migrate.current_revision(engine) is not None


def test_replace_people_inserts_updates_deletes_and_leaves_the_unchanged_alone(engine: sa.Engine) -> None:
    first = replace_people(
        engine,
        "salesforce",
        [user(ANA, "Ana Ruiz", "ana.ruiz@contoso.com"), user(BO, "Bo Chen", "bo.chen@contoso.com")],
        now=T0,
    )
    assert (first.added, first.updated, first.removed, first.unchanged) == (2, 0, 0, 0)
    assert str(first) == "2 added, 0 updated, 0 removed, 0 unchanged"

    later = T0 + timedelta(hours=1)
    again = replace_people(engine, "salesforce", [user(ANA, "Ana Ruiz", "ana.ruiz@contoso.com")], now=later)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 1, 1)
    assert set(rows(engine)) == {ANA}
    assert rows(engine)[ANA].updated_at == T0  # not rewritten: nothing changed

    changed = replace_people(
        engine, "salesforce", [user(ANA, "Ana Ruiz", "ana.ruiz@contoso.com", active=False)], now=later
    )
    assert (changed.updated, changed.unchanged) == (1, 0)
    assert rows(engine)[ANA].updated_at == later
    (ana,) = stored_people(engine, "salesforce")
    assert ana == user(ANA, "Ana Ruiz", "ana.ruiz@contoso.com", active=False)


def test_replace_people_touches_only_its_own_source(engine: sa.Engine) -> None:
    replace_people(engine, "other", [user(BO, "Bo Chen", "bo.chen@contoso.com")], now=T0)
    replace_people(engine, "salesforce", [user(ANA, "Ana Ruiz")], now=T0)
    replace_people(engine, "salesforce", [], now=T0)

    assert {k: r.source for k, r in rows(engine).items()} == {BO: "other"}


def test_a_change_always_moves_the_newest_stamp_forward_even_when_the_clock_does_not(
    engine: sa.Engine,
) -> None:
    replace_people(engine, "salesforce", [user(ANA, "Ana")], now=T0)
    replace_people(engine, "salesforce", [user(ANA, "Ana Ruiz")], now=T0 - timedelta(minutes=5))

    assert rows(engine)[ANA].updated_at == T0 + timedelta(microseconds=1)


def test_load_directory_merges_configuration_into_the_crms_people(db_url: str, tmp_path: Path) -> None:
    config = make_config(
        db_url,
        tmp_path,
        **{
            "directory.people": [
                {"name": "Ana Ruiz", "emails": ["Ana@Gmail.example"], "salesforce_id": ANA[:15]},
                {"name": "Carl Ode", "emails": ["carl@contoso.com"], "groups": ["Board"]},
            ]
        },
    )
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    replace_people(engine, "salesforce", [user(ANA, "ana.ruiz", "ana.ruiz@contoso.com", groups=("Finance",))])

    people = load_directory(engine, config)

    assert [p.name for p in people.people] == ["Ana Ruiz", "Carl Ode"]
    assert people.same_person("ana@gmail.example", "ANA.RUIZ@contoso.com")
    assert people.name_of(ANA) == "Ana Ruiz"
    ana = people.find(ANA[:15])
    assert ana is not None and ana.key == ANA and ana.crm_ids == (ANA,) and ana.groups == ("Finance",)
    assert [p.name for p in people.group("board")] == ["Carl Ode"]
    assert configured_person(config.directory.people[0]).key == ANA  # 18 characters
    assert configured_person(config.directory.people[1]).key == "carl@contoso.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_rereads_only_after_max_age_and_only_when_the_table_changed(
    engine: sa.Engine, config: Config
) -> None:
    clock = Clock()
    cache = DirectoryCache(engine, config, max_age_seconds=5.0, clock=clock)
    replace_people(engine, "salesforce", [user(ANA, "Ana Ruiz", "ana.ruiz@contoso.com")], now=T0)

    first = cache.current()
    assert first.name_of(ANA) == "Ana Ruiz" and cache.loads == 1

    replace_people(engine, "salesforce", [user(ANA, "Ana R.", "ana.ruiz@contoso.com")], now=T0)
    clock.now += 4.0
    assert cache.current() is first  # within max_age: not even checked

    clock.now += 2.0
    second = cache.current()
    assert second is not first and second.name_of(ANA) == "Ana R." and cache.loads == 2

    clock.now += 60.0
    assert cache.current() is second and cache.loads == 2  # checked, unchanged: not rebuilt

    replace_people(engine, "salesforce", [], now=T0)  # a deletion alone is a change too
    cache.invalidate()
    assert cache.current().find(ANA) is None and cache.loads == 3


def test_the_cache_keeps_its_snapshot_when_the_database_is_briefly_away(
    engine: sa.Engine, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    cache = DirectoryCache(engine, config, clock=clock)
    replace_people(engine, "salesforce", [user(ANA, "Ana Ruiz")], now=T0)
    first = cache.current()

    def unreachable(_engine: sa.Engine) -> tuple[int, str | None]:
        raise sa.exc.OperationalError("SELECT count(*)", {}, Exception("connection refused"))

    monkeypatch.setattr("plugin.directory_store.directory_stamp", unreachable)
    clock.now += 10.0
    assert cache.current() is first
    fresh = DirectoryCache(engine, config, clock=clock)
    with pytest.raises(sa.exc.OperationalError):
        fresh.current()


# --- the command line, without Salesforce ---


def test_directory_command_lists_the_configured_people(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "onrecord.toml").write_text(
        "[[directory.people]]\n"
        'name = "Ana Ruiz"\n'
        'emails = ["ana.ruiz@contoso.com", "ana@contoso.onmicrosoft.com"]\n'
        f'salesforce_id = "{ANA[:15]}"\n'
        'groups = ["Finance Approvers"]\n'
    )
    monkeypatch.setenv("ONRECORD_CONFIG", str(tmp_path / "onrecord.toml"))
    monkeypatch.setenv("ONRECORD_STORAGE__URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("ONRECORD_VAR_DIR", str(tmp_path / "var"))

    assert main(["directory"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("directory: 1 person (0 from the CRM, 1 configured)\n")
    assert "  Ana Ruiz\n" in out
    assert "      e-mails: ana.ruiz@contoso.com, ana@contoso.onmicrosoft.com\n" in out
    assert f"      ids:     {ANA}\n" in out and "      groups:  Finance Approvers\n" in out

    assert main(["directory", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["configured"] == 1 and shown["stored"] == 0
    assert shown["people"] == [
        {
            "key": ANA,
            "name": "Ana Ruiz",
            "emails": ["ana.ruiz@contoso.com", "ana@contoso.onmicrosoft.com"],
            "crm_ids": [ANA],
            "groups": ["Finance Approvers"],
            "active": True,
            "user_type": "",
        }
    ]

    assert main(["directory", "--refresh"]) == 2
    assert "salesforce.client_id" in capsys.readouterr().err
