"""The Dataverse directory job: the environment's systemusers, read over HTTPS from the emulator
through the Web API client, become the people directory's "dataverse" rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.dataverse.users import (
    FIELDS,
    JOB_NAME,
    SOURCE,
    directory_job,
    people_from_rows,
    refresh_directory_now,
    user_type,
)
from plugin.config import Config
from plugin.directory import Directory
from plugin.directory_store import load_directory, stored_people
from plugin.migrate import upgrade
from plugin.storage import get_engine
from tests.connectors.dataverse.conftest import config_for
from tests.dvemu import DataverseEmulator
from tests.dvemu.people import add_user

ANA = "6F1C2D3E-4A5B-4C6D-8E9F-0A1B2C3D4E5F"
ANA_ENTRA = "11111111-2222-4333-8444-555555555555"
BEN = "7a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
APP = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def row(user_id: str, **over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "systemuserid": user_id,
        "fullname": "Someone",
        "internalemailaddress": None,
        "domainname": None,
        "azureactivedirectoryobjectid": None,
        "isdisabled": False,
        "accessmode": 0,
        "applicationid": None,
    }
    values.update(over)
    return values


# --- pure: rows -> people ---------------------------------------------------------------------------


def test_a_user_row_becomes_a_person_known_by_its_guid_its_entra_id_and_its_addresses() -> None:
    (ana,) = people_from_rows(
        [
            row(
                ANA,
                fullname="Ana Ruiz",
                internalemailaddress="Ana.Ruiz@Contoso.com",
                domainname="ana@contoso.onmicrosoft.com",
                azureactivedirectoryobjectid=ANA_ENTRA.upper(),
            )
        ]
    )

    assert ana.key == ANA.lower()
    assert ana.name == "Ana Ruiz"
    assert ana.crm_ids == (ANA.lower(), ANA_ENTRA)
    assert ana.emails == ("ana.ruiz@contoso.com", "ana@contoso.onmicrosoft.com")
    assert ana.active is True
    assert ana.user_type == "Standard"
    # Power Automate names an approver by the Entra object id: it finds the same person.
    directory = Directory((ana,))
    assert directory.same_person(ANA_ENTRA, "ana.ruiz@contoso.com")
    assert directory.same_person(ANA.lower(), "ANA@contoso.onmicrosoft.com")


def test_addresses_are_lower_case_without_repeats_and_only_when_they_look_like_one() -> None:
    (ana, ben) = people_from_rows(
        [
            row(ANA, internalemailaddress="ANA@contoso.com", domainname="ana@contoso.com"),
            row(BEN, internalemailaddress="not an address", domainname="CONTOSO\\ben"),
        ]
    )

    assert ana.emails == ("ana@contoso.com",)
    assert ben.emails == ()
    assert ben.name == "Someone"


def test_a_disabled_user_stays_inactive_and_a_nameless_one_is_named_by_its_user_name() -> None:
    (ana,) = people_from_rows([row(ANA, fullname="", domainname="ana@contoso.com", isdisabled=True)])

    assert ana.active is False
    assert ana.name == "ana@contoso.com"


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({}, "Standard"),
        ({"applicationid": APP}, "Application"),
        ({"accessmode": 4}, "Application"),
        ({"accessmode": 3}, "Support User"),
        ({"accessmode": 5}, "Delegated Admin"),
        ({"accessmode": 1}, "Administrative"),
    ],
)
def test_user_type_tells_application_users_from_people(over: dict[str, Any], expected: str) -> None:
    assert user_type(row(ANA, **over)) == expected
    assert people_from_rows([row(ANA, **over)])[0].user_type == expected


def test_rows_without_a_systemuserid_are_skipped_and_people_come_in_key_order() -> None:
    people = people_from_rows([row(BEN), row("not-a-guid"), {"fullname": "nobody"}, row(ANA)])

    assert [p.key for p in people] == sorted([ANA.lower(), BEN])


def test_an_address_two_users_carry_is_kept_by_the_user_whose_user_name_it_is() -> None:
    people = people_from_rows(
        [
            # the integration user carries the admin's mailbox as its primary e-mail
            row(APP, fullname="Integration", internalemailaddress="admin@contoso.com", applicationid=APP),
            row(
                ANA,
                fullname="Admin",
                internalemailaddress="admin@contoso.com",
                domainname="admin@contoso.com",
            ),
        ]
    )
    by_key = {p.key: p for p in people}

    assert by_key[ANA.lower()].emails == ("admin@contoso.com",)
    assert by_key[APP].emails == ()
    found = Directory(tuple(people)).find("admin@contoso.com")
    assert found is not None and found.key == ANA.lower()


def test_an_address_two_users_carry_goes_to_the_only_enabled_one_else_to_nobody() -> None:
    shared = "team@contoso.com"
    one_enabled = people_from_rows(
        [row(ANA, internalemailaddress=shared), row(BEN, internalemailaddress=shared, isdisabled=True)]
    )
    both_enabled = people_from_rows(
        [row(ANA, internalemailaddress=shared), row(BEN, internalemailaddress=shared)]
    )

    assert {p.key: p.emails for p in one_enabled} == {ANA.lower(): (shared,), BEN: ()}
    assert {p.key: p.emails for p in both_enabled} == {ANA.lower(): (), BEN: ()}
    # one address never joins two CRM users into one person
    assert len(Directory(tuple(both_enabled)).people) == 2


# --- through the emulator ---------------------------------------------------------------------------


def dv_config(dv: DataverseEmulator, tmp_path: Path, **more: Any) -> Config:
    return config_for(dv, f"sqlite:///{tmp_path}/onrecord.db", tmp_path, **more)


def test_the_refresh_reads_every_page_of_systemusers_into_the_directory(
    dataverse: DataverseEmulator, tmp_path: Path
) -> None:
    dv = dataverse
    dv.state.max_page_size = 2  # four users and the application user: three pages
    ana = add_user(
        dv.state,
        "Ana Ruiz",
        email="ana.ruiz@contoso.com",
        domainname="ana@contoso.com",
        entra_object_id=ANA_ENTRA,
    )
    ben = add_user(dv.state, "Ben Ode", email="ben@contoso.com", domainname="ben@contoso.com")
    add_user(dv.state, "Old Timer", email="old@contoso.com", domainname="old@contoso.com", disabled=True)
    add_user(dv.state, "Support", domainname="support@microsoft.example", access_mode=3)
    config = dv_config(dv, tmp_path)
    engine = get_engine(config.storage.url)
    upgrade(engine)

    result = refresh_directory_now(config, engine, owner="test")

    assert result.state["users"] == 5
    assert result.state["added"] == 5
    people = {p.key: p for p in stored_people(engine, SOURCE)}
    assert {ana, ben, dv.application_user_id} <= set(people) and len(people) == 5
    assert people[ana].crm_ids == (ana, ANA_ENTRA)
    assert people[ana].emails == ("ana.ruiz@contoso.com", "ana@contoso.com")
    assert people[dv.application_user_id].user_type == "Application"
    assert [p.active for p in people.values() if p.name == "Old Timer"] == [False]
    queries = [c.path for c in dv.api_calls() if c.path.startswith("/api/data/v9.2/systemusers")]
    assert len(queries) == 3
    assert all(name in queries[0] for name in FIELDS)
    directory = load_directory(engine, config)
    assert directory.same_person(ANA_ENTRA, "ana@contoso.com")


def test_a_second_refresh_updates_a_disabled_user_and_removes_a_deleted_one(
    dataverse: DataverseEmulator, tmp_path: Path
) -> None:
    dv = dataverse
    ana = add_user(dv.state, "Ana Ruiz", domainname="ana@contoso.com")
    ben = add_user(dv.state, "Ben Ode", domainname="ben@contoso.com")
    config = dv_config(dv, tmp_path)
    engine = get_engine(config.storage.url)
    upgrade(engine)
    refresh_directory_now(config, engine, owner="test")
    with dv.state.lock:
        dv.state.tables["systemusers"][ana]["isdisabled"] = True
        del dv.state.tables["systemusers"][ben]

    again = refresh_directory_now(config, engine, owner="test")

    assert (again.state["added"], again.state["updated"], again.state["removed"]) == (0, 1, 1)
    people = {p.key: p for p in stored_people(engine, SOURCE)}
    assert people[ana].active is False
    assert ben not in people


def test_the_job_is_named_and_scheduled_by_the_directory_refresh_interval(
    dataverse: DataverseEmulator, tmp_path: Path
) -> None:
    dv = dataverse
    config = dv_config(dv, tmp_path, **{"directory.refresh_seconds": 900})

    job = directory_job(config)

    assert job.name == JOB_NAME == "directory.dataverse"
    assert job.interval_seconds == 900
