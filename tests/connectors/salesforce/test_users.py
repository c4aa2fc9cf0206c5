"""The directory job: Salesforce's users and public groups, read over HTTPS from the emulator
through the writer's query(), become the people directory's CRM side."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from connectors.salesforce.ids import to_18
from connectors.salesforce.users import (
    GROUP_QUERY,
    JOB_NAME,
    ROLE_QUERY,
    USER_QUERY,
    directory_job,
    looks_like_address,
    read_people,
    refresh_directory_now,
)
from connectors.salesforce.wiring import build_salesforce_writer
from plugin.cli import main
from plugin.config import Config
from plugin.directory import Directory
from plugin.directory_store import load_directory, stored_people
from plugin.jobs import builtin_jobs
from plugin.migrate import upgrade
from plugin.storage import get_engine
from tests.conftest import make_config
from tests.connectors.salesforce.emulated_org import cli_environment, connect, overrides
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair
from tests.sfemu.state import OrgState


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return make_consumer_keypair()


@pytest.fixture
def emu(keypair: KeyPair) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(query_batch_size=3) as emulator:  # every query pages
        connect(emulator, keypair)
        yield emulator
    assert emulator.errors == []


def sf_config(emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path, **more: Any) -> Config:
    return make_config(
        f"sqlite:///{tmp_path}/onrecord.db", tmp_path, **overrides(emu, keypair, tmp_path), **more
    )


def org(emu: SalesforceEmulator) -> OrgState:
    """The emulated org, for the set-up helpers (users with names and e-mails, groups)."""
    return emu._state


def directory_now(config: Config) -> Directory:
    return load_directory(get_engine(config.storage.url), config)


# --- the emulator answers what the job asks ---


def test_the_emulator_answers_the_user_group_and_member_queries(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    state = org(emu)
    director = state.add_role("Sales Director")
    ana = state.add_user(
        "ana@acme.example",
        name="Ana Ruiz",
        email="ana.ruiz@contoso.com",
        federation_identifier="ana@contoso.com",
        role_id=director,
    )
    finance = state.add_group("Finance Approvers", [ana])
    state.add_group("Support", [ana], group_type="Queue")
    query = build_salesforce_writer(sf_config(emu, keypair, tmp_path)).query

    (row,) = [r for r in query(USER_QUERY) if r["Id"] == ana]
    assert row == {
        "Id": ana,
        "Name": "Ana Ruiz",
        "Email": "ana.ruiz@contoso.com",
        "Username": "ana@acme.example",
        "FederationIdentifier": "ana@contoso.com",
        "IsActive": True,
        "UserType": "Standard",
        "UserRoleId": director,
    }
    assert director.startswith("00E")
    assert [(r["Id"], r["Name"]) for r in query(ROLE_QUERY)] == [(director, "Sales Director")]
    assert [(g["Id"], g["Name"], g["DeveloperName"]) for g in query(GROUP_QUERY)] == [
        (finance, "Finance Approvers", "Finance_Approvers")
    ]
    members = f"SELECT Id, GroupId, UserOrGroupId FROM GroupMember WHERE GroupId = '{finance}'"  # noqa: S608
    (member,) = query(members)
    assert member["UserOrGroupId"] == ana and member["Id"].startswith("011")
    assert state.remove_group_member(finance, ana) and not state.remove_group_member(finance, ana)
    assert list(query(members)) == []


# --- the job against the emulator ---


def test_users_and_their_public_groups_end_up_in_the_directory(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    state = org(emu)
    ana = state.add_user(
        "ana@acme.example",
        name="Ana Ruiz",
        email="Ana.Ruiz@Contoso.com",
        federation_identifier="ana.ruiz@contoso.onmicrosoft.com",
    )
    bo = state.add_user(
        "bo@acme.example", name="Bo Chen", email="bo.chen@contoso.com", federation_identifier="E1042"
    )
    carl = state.add_user("carl@acme.example", name="Carl Ode", email="carl@contoso.com")
    bot = state.add_user("autoproc@00d.example", name="Automated Process", user_type="AutomatedProcess")
    board = state.add_group("Board", [carl])
    state.add_group("Finance Approvers", [ana, bo, board], developer_name="FinanceApprovers")
    state.add_group("Finance Queue", [carl], group_type="Queue")  # a queue: not a public group
    config = sf_config(emu, keypair, tmp_path)
    engine = get_engine(config.storage.url)
    upgrade(engine)

    result = refresh_directory_now(config, engine, owner="test")

    assert result.state["users"] == 5 and result.state["groups"] == 2  # the integration user too
    assert result.state["added"] == 5 and result.state["removed"] == 0
    people = directory_now(config)
    assert people.same_person("ana.ruiz@contoso.com", ana[:15])
    assert people.same_person("ANA.RUIZ@contoso.onmicrosoft.com", "ana@acme.example")
    assert people.name_of(bo) == "Bo Chen" and people.name_of("carl@contoso.com") == "Carl Ode"
    ana_p, bo_p, carl_p = people.find(ana), people.find(bo), people.find(carl)
    assert ana_p is not None and bo_p is not None and carl_p is not None
    assert ana_p.key == ana and ana_p.crm_ids == (to_18(ana),)
    assert ana_p.emails == ("ana.ruiz@contoso.com", "ana@acme.example", "ana.ruiz@contoso.onmicrosoft.com")
    assert bo_p.emails == ("bo.chen@contoso.com", "bo@acme.example")  # "E1042" is no address
    assert ana_p.groups == ("Finance Approvers", "FinanceApprovers")
    assert carl_p.groups == ("Board", "Finance Approvers", "FinanceApprovers")  # through Board
    assert [p.name for p in people.group("finance approvers")] == ["Ana Ruiz", "Bo Chen", "Carl Ode"]
    assert people.group("Finance Queue") == ()
    automated = people.find(bot)
    assert automated is not None and automated.user_type == "AutomatedProcess"
    assert not people.same_person(ana, bo)
    assert {p.key for p in stored_people(engine, "salesforce")} >= {ana, bo, carl, bot}


def test_each_users_role_ends_up_in_the_directory(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    state = org(emu)
    vp, director = state.add_role("VP Sales"), state.add_role("Sales Director")
    ana = state.add_user("ana@acme.example", name="Ana Ruiz", role_id=vp)
    bo = state.add_user("bo@acme.example", name="Bo Chen", role_id=director)
    carl = state.add_user("carl@acme.example", name="Carl Ode")  # no role
    config = sf_config(emu, keypair, tmp_path)
    engine = get_engine(config.storage.url)
    upgrade(engine)

    result = refresh_directory_now(config, engine, owner="test")

    assert result.state["roles"] == 2
    people = directory_now(config)
    roles = {p.key: p.roles for p in (people.find(ana), people.find(bo), people.find(carl)) if p}
    assert roles == {ana: ("VP Sales",), bo: ("Sales Director",), carl: ()}
    stored = {p.key: p.to_json() for p in stored_people(engine, "salesforce")}
    assert stored[ana]["roles"] == ["VP Sales"] and "roles" not in stored[carl]

    state.set_user(bo, UserRoleId=vp)  # promoted
    again = refresh_directory_now(config, engine, owner="test")
    assert again.state["updated"] == 1
    promoted = directory_now(config).find(bo)
    assert promoted is not None and promoted.roles == ("VP Sales",)


def test_a_deactivated_user_stays_inactive_and_a_removed_member_loses_the_group(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    state = org(emu)
    ana = state.add_user("ana@acme.example", name="Ana Ruiz", email="ana.ruiz@contoso.com")
    bo = state.add_user("bo@acme.example", name="Bo Chen", email="bo.chen@contoso.com")
    finance = state.add_group("Finance Approvers", [ana, bo])
    config = sf_config(emu, keypair, tmp_path)
    engine = get_engine(config.storage.url)
    upgrade(engine)
    refresh_directory_now(config, engine, owner="test")

    state.set_user(bo, IsActive=False)
    state.remove_group_member(finance, ana)
    second = refresh_directory_now(config, engine, owner="test")

    assert (second.state["updated"], second.state["removed"]) == (2, 0)
    people = directory_now(config)
    bo_p, ana_p = people.find("bo.chen@contoso.com"), people.find(ana)
    assert bo_p is not None and bo_p.active is False and bo_p.name == "Bo Chen"
    assert ana_p is not None and ana_p.groups == () and ana_p.active is True
    assert [p.name for p in people.group("Finance Approvers")] == ["Bo Chen"]

    third = refresh_directory_now(config, engine, owner="test")
    assert (third.state["added"], third.state["updated"], third.state["removed"]) == (0, 0, 0)


def test_an_address_two_users_carry_identifies_neither_unless_one_owns_it(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    state = org(emu)
    admin = state.add_user("admin@contoso.com", name="Dee Admin")
    # Integration users often carry an admin's address: it must not make them one person.
    robot = state.add_user("robot@acme.example", name="Integration", email="admin@contoso.com")
    ana = state.add_user("ana@acme.example", name="Ana Ruiz", email="shared@contoso.com")
    old = state.add_user(
        "ana.old@acme.example", name="Ana Ruiz (old)", email="shared@contoso.com", active=False
    )
    eve = state.add_user("eve@acme.example", name="Eve", email="team@contoso.com")
    fay = state.add_user("fay@acme.example", name="Fay", email="team@contoso.com")
    config = sf_config(emu, keypair, tmp_path)
    engine = get_engine(config.storage.url)
    upgrade(engine)

    result = refresh_directory_now(config, engine, owner="test")

    people = directory_now(config)
    assert result.state["ambiguous_addresses"] == 1  # team@: two active users, no owner
    assert people.find("admin@contoso.com") is people.find(admin)  # the Username wins
    assert not people.same_person(admin, robot)
    assert people.find("shared@contoso.com") is people.find(ana)  # the only active one
    assert not people.same_person(ana, old)
    assert people.find("team@contoso.com") is None and not people.same_person(eve, fay)


def test_configuration_names_and_joins_the_crms_people(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    state = org(emu)
    ana = state.add_user("ana@acme.example", name="ana ruiz", email="ana.ruiz@contoso.com")
    people_conf = [{"name": "Ana Ruiz", "emails": ["ana@gmail.example"], "salesforce_id": ana[:15]}]
    config = sf_config(emu, keypair, tmp_path, **{"directory.people": people_conf})
    engine = get_engine(config.storage.url)
    upgrade(engine)
    refresh_directory_now(config, engine, owner="test")

    people = directory_now(config)

    assert people.name_of("ana.ruiz@contoso.com") == "Ana Ruiz"
    assert people.same_person("ana@gmail.example", ana)


def test_the_job_is_scheduled_only_with_salesforce_and_a_refresh_interval(
    emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path
) -> None:
    config = sf_config(emu, keypair, tmp_path, **{"directory.refresh_seconds": 900})

    (job,) = [j for j in builtin_jobs(config) if j.name == JOB_NAME]

    assert job.interval_seconds == 900
    assert directory_job(config).name == JOB_NAME
    never = sf_config(emu, keypair, tmp_path, **{"directory.refresh_seconds": 0})
    assert JOB_NAME not in [j.name for j in builtin_jobs(never)]
    dry_run = make_config(f"sqlite:///{tmp_path}/dry.db", tmp_path)
    assert JOB_NAME not in [j.name for j in builtin_jobs(dry_run)]
    default = sf_config(emu, keypair, tmp_path)
    assert [j.interval_seconds for j in builtin_jobs(default) if j.name == JOB_NAME] == [3600.0]


# --- the pieces alone ---


class FakeOrg:
    def __init__(self, groups: int) -> None:
        self.user = to_18("0055g00000AnaRz")
        self.groups = [to_18(f"00G5g00000G{n:04d}") for n in range(groups)]
        self.queries: list[str] = []

    def query(self, soql: str) -> Iterator[Mapping[str, Any]]:
        self.queries.append(soql)
        if soql == USER_QUERY:
            yield {"Id": self.user, "Name": "Ana", "Username": "ana@acme.example", "IsActive": True}
        elif soql == GROUP_QUERY:
            for n, group in enumerate(self.groups):
                yield {"Id": group, "Name": f"G{n:04d}", "DeveloperName": f"G{n:04d}"}
        else:
            asked = soql.split("IN (")[1].rstrip(")").replace("'", "").split(", ")
            for group in asked:
                yield {"GroupId": group, "UserOrGroupId": self.user}


def test_members_are_read_for_public_groups_only_200_groups_a_query() -> None:
    fake = FakeOrg(groups=450)

    (person,), counts = read_people(fake.query)

    member_queries = fake.queries[2:]
    assert len(member_queries) == 3 and all(
        q.startswith("SELECT GroupId, UserOrGroupId") for q in member_queries
    )
    assert max(len(q) for q in member_queries) < 100_000
    assert counts == {"users": 1, "groups": 450, "ambiguous_addresses": 0}
    assert len(person.groups) == 450 and person.groups[0] == "G0000"  # Name = DeveloperName: once


def test_no_public_groups_means_no_member_query() -> None:
    fake = FakeOrg(groups=0)
    read_people(fake.query)
    assert fake.queries == [USER_QUERY, GROUP_QUERY]  # and no user has a role: no role query


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ana@contoso.com", True),
        ("ana.ruiz@contoso.onmicrosoft.com", True),
        ("E1042", False),
        ("", False),
        ("@contoso.com", False),
        ("ana@", False),
        ("a@b@c", False),
        ("ana ruiz@contoso.com", False),
    ],
)
def test_what_counts_as_an_address(value: str, expected: bool) -> None:
    assert looks_like_address(value) is expected


# --- the command line ---


def test_directory_refresh_command_reads_salesforce_and_lists_everyone(
    emu: SalesforceEmulator,
    keypair: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_environment(monkeypatch, tmp_path, emu, keypair)
    state = org(emu)
    ana = state.add_user("ana@acme.example", name="Ana Ruiz", email="ana.ruiz@contoso.com")
    state.add_group("Finance Approvers", [ana])

    assert main(["directory", "--refresh"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "refreshed from Salesforce: 2 users, 1 public groups (2 added, 0 updated, 0 removed)\n"
    )
    assert "directory: 2 people (2 from the CRM, 0 configured)\n" in out
    assert "  Ana Ruiz\n      e-mails: ana.ruiz@contoso.com, ana@acme.example\n" in out
    assert f"      ids:     {ana}\n      groups:  Finance Approvers, Finance_Approvers\n" in out

    state.set_user(ana, IsActive=False)
    assert main(["directory", "--refresh", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["refresh"]["updated"] == 1 and shown["stored"] == 2
    (entry,) = [p for p in shown["people"] if p["key"] == ana]
    assert entry["active"] is False and entry["groups"] == ["Finance Approvers", "Finance_Approvers"]

    assert main(["directory"]) == 0
    assert "  Ana Ruiz (inactive)\n" in capsys.readouterr().out
