"""The Dataverse emulator behaves as Microsoft documents Dataverse and Entra ID (see its modules'
docstrings for the pages), through real HTTPS, requests and msal."""

from __future__ import annotations

import json
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import msal
import pytest
import requests

from connectors.dataverse.webapi import parse_batch_response
from tests.dvemu import DataverseEmulator, server
from tests.dvemu.model import provision

SIGNALS = "onr_leader_signals"


@pytest.fixture
def emu() -> Iterator[DataverseEmulator]:
    with DataverseEmulator() as emulator:
        provision(emulator.state)
        yield emulator
    assert emulator.errors == []


@pytest.fixture
def http(emu: DataverseEmulator) -> requests.Session:
    return emu.http_session()


def msal_app(emu: DataverseEmulator, secret: str | None = None) -> Any:
    session = emu.http_session(signed_in=False)
    return msal.ConfidentialClientApplication(
        emu.client_id,
        client_credential=secret or emu.client_secret,
        authority=f"{emu.url}/{emu.tenant_id}",
        http_client=session,
        instance_discovery=False,
    )


def error(response: requests.Response) -> tuple[str, str]:
    body = response.json()["error"]
    return body["code"], body["message"]


def batch_body(boundary: str, parts: list[str]) -> bytes:
    return ("".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n").encode()


def http_part(
    method: str, url: str, body: dict[str, Any] | None = None, *, content_id: str | None = None
) -> str:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id:
        head += f"Content-ID: {content_id}\r\n"
    request = f"{method} {url} HTTP/1.1\r\n"
    if body is not None:
        request += "Content-Type: application/json; type=entry\r\n\r\n" + json.dumps(body)
    else:
        request += "\r\n"
    return head + "\r\n" + request


# --- Entra ID --------------------------------------------------------------------------------------


def test_msal_signs_in_with_client_credentials_through_discovery_and_the_token_endpoint(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    result = msal_app(emu).acquire_token_for_client(scopes=[f"{emu.url}/.default"])
    assert result["token_type"] == "Bearer" and result["access_token"]
    paths = [c.path for c in emu.calls]
    assert paths == [
        f"/{emu.tenant_id}/v2.0/.well-known/openid-configuration",
        f"/{emu.tenant_id}/oauth2/v2.0/token",
    ]
    token_call = emu.calls[-1]
    assert b"grant_type=client_credentials" in token_call.body
    answer = http.get(
        emu.service_root + "WhoAmI", headers={"Authorization": f"Bearer {result['access_token']}"}
    )
    assert answer.status_code == 200 and answer.json()["UserId"] == emu.application_user_id


@pytest.mark.parametrize(
    ("secret", "scope", "error_code", "aadsts"),
    [
        ("wrong secret", None, "invalid_client", "AADSTS7000215"),
        (None, "https://other.crm.dynamics.com/.default", "invalid_scope", "AADSTS1002012"),
    ],
)
def test_the_token_endpoint_refuses_a_wrong_secret_and_a_wrong_scope_like_entra(
    emu: DataverseEmulator, secret: str | None, scope: str | None, error_code: str, aadsts: str
) -> None:
    result = msal_app(emu, secret).acquire_token_for_client(scopes=[scope or f"{emu.url}/.default"])
    assert "access_token" not in result
    assert result["error"] == error_code and result["error_description"].startswith(aadsts)


def test_web_api_calls_need_a_valid_token_and_an_expired_one_gets_401(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    anonymous = emu.http_session(signed_in=False)
    refused = anonymous.get(emu.service_root + "WhoAmI")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert http.get(emu.service_root + "WhoAmI").status_code == 200
    emu.expire_tokens()
    assert http.get(emu.service_root + "WhoAmI").status_code == 401


# --- table definitions -----------------------------------------------------------------------------


def test_entity_definitions_answer_selected_properties_attributes_keys_and_lookups(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    root = emu.service_root
    one = http.get(root + "EntityDefinitions(LogicalName='opportunity')?$select=EntitySetName").json()
    assert one["EntitySetName"] == "opportunities" and "LogicalName" not in one and "MetadataId" in one
    attributes = http.get(root + "EntityDefinitions(LogicalName='onr_leader_signal')/Attributes").json()
    kinds = {a["LogicalName"]: a["AttributeType"] for a in attributes["value"]}
    assert (
        kinds["onr_leader"] == "Lookup" and kinds["onr_score"] == "Decimal" and kinds["onr_key"] == "String"
    )
    keys = http.get(root + "EntityDefinitions(LogicalName='onr_leader_signal')/Keys").json()["value"]
    assert keys[0]["KeyAttributes"] == ["onr_key"]
    lookups = http.get(root + "EntityDefinitions(LogicalName='onr_violation')/ManyToOneRelationships").json()
    (actor,) = lookups["value"]
    assert actor["ReferencingAttribute"] == "onr_actor" and actor["ReferencedEntity"] == "systemuser"
    assert actor["ReferencingEntityNavigationPropertyName"] == "onr_Actor"  # case-sensitive, schema name
    missing = http.get(root + "EntityDefinitions(LogicalName='nosuchtable')")
    assert missing.status_code == 404
    bad = http.get(root + "EntityDefinitions(LogicalName='opportunity')?$select=Nope")
    assert bad.status_code == 400 and "Could not find a property named 'Nope'" in error(bad)[1]


# --- rows ------------------------------------------------------------------------------------------


def test_patch_with_if_match_star_never_creates_and_without_it_upserts(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    guid = "6f1c1a4e-2f7e-4b1a-9a59-0a4d1c0e0001"
    url = f"{emu.service_root}opportunities({guid})"
    refused = http.patch(url, json={"name": "x"}, headers={"If-Match": "*"})
    assert refused.status_code == 404
    assert error(refused) == ("0x80040217", f"opportunity With Id = {guid} Does Not Exist")
    assert emu.record("opportunities", guid) is None
    created = http.patch(url, json={"name": "Budget"})
    assert created.status_code == 204 and created.headers["OData-EntityId"] == url
    updated = http.patch(url, json={"stepname": "Qualify"}, headers={"If-Match": "*"})
    assert updated.status_code == 204
    assert emu.record("opportunities", guid) == {
        "opportunityid": guid,
        "name": "Budget",
        "stepname": "Qualify",
    }


def test_upsert_by_alternate_key_creates_once_then_updates_and_undeclared_keys_are_refused(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    url = f"{emu.service_root}{SIGNALS}(onr_key='Ann''s 2025-03')"
    first = http.patch(url, json={"onr_score": 1.5})
    second = http.patch(url, json={"onr_score": 2.5})
    assert first.status_code == second.status_code == 204
    assert first.headers["OData-EntityId"] == second.headers["OData-EntityId"]
    (row,) = emu.records(SIGNALS)
    assert row["onr_key"] == "Ann's 2025-03" and row["onr_score"] == 2.5
    by_case = http.patch(f"{emu.service_root}{SIGNALS}(onr_key='ANN''S 2025-03')", json={"onr_score": 3})
    assert by_case.headers["OData-EntityId"] == first.headers["OData-EntityId"]  # keys ignore case
    undeclared = http.patch(f"{emu.service_root}{SIGNALS}(onr_period='2025-03')", json={"onr_score": 1})
    assert undeclared.status_code == 400
    assert error(undeclared)[1].startswith("The key in the request URI is not valid for resource")
    unsafe = http.patch(f"{emu.service_root}{SIGNALS}(onr_key='a:b')", json={"onr_score": 1})
    assert unsafe.status_code == 404 and len(emu.records(SIGNALS)) == 1


def test_bodies_are_checked_columns_values_and_lookup_bindings(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    user = emu.add_user("Leader")
    url = f"{emu.service_root}{SIGNALS}(onr_key='k1')"
    unknown = http.patch(url, json={"onr_nope": 1})
    assert unknown.status_code == 400 and error(unknown)[0] == "0x80048d19"
    assert (
        "The property 'onr_nope' does not exist on type 'Microsoft.Dynamics.CRM.onr_leader_signal'"
        in error(unknown)[1]
    )
    assert http.patch(url, json={"onr_champion_candidate": "yes"}).status_code == 400
    assert http.patch(url, json={"onr_period_start": "2025-03-01T00:00:00Z"}).status_code == 400  # date only
    assert http.patch(url, json={"onr_leader": user}).status_code == 400  # a lookup needs @odata.bind
    assert (
        http.patch(url, json={"onr_leader@odata.bind": f"/systemusers({user})"}).status_code == 400
    )  # nav name
    missing = http.patch(
        url, json={"onr_Leader@odata.bind": "/systemusers(6f1c1a4e-2f7e-4b1a-9a59-0a4d1c0e0009)"}
    )
    assert missing.status_code == 404
    assert emu.records(SIGNALS) == []
    bound = http.patch(
        url, json={"onr_Leader@odata.bind": f"/systemusers({user})", "onr_period_start": "2025-03-01"}
    )
    assert bound.status_code == 204
    row = http.get(url + "?$select=_onr_leader_value,onr_period_start").json()
    assert row["_onr_leader_value"] == user and row["onr_period_start"] == "2025-03-01"
    assert http.patch(url, json={"onr_Leader@odata.bind": None}).status_code == 204
    assert emu.records(SIGNALS)[0]["onr_leader"] is None
    too_long = http.patch(url, json={"onr_period": "x" * 21})
    assert too_long.status_code == 400 and error(too_long)[0] == "0x80044331"


def test_collections_filter_select_and_page_with_next_links(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    for i in range(5):
        emu.add_record(SIGNALS, {"onr_key": f"k{i}", "onr_period": "2025-03" if i % 2 else "2025-04"})
    first = http.get(
        f"{emu.service_root}{SIGNALS}?$select=onr_key&$filter=onr_period eq '2025-03' or onr_key eq 'K0'",
        headers={"Prefer": "odata.maxpagesize=2"},
    )
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=2"
    page = first.json()
    keys = [r["onr_key"] for r in page["value"]]
    second = http.get(page["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=2"}).json()
    keys += [r["onr_key"] for r in second["value"]]
    assert sorted(keys) == ["k0", "k1", "k3"] and "@odata.nextLink" not in second
    assert set(page["value"][0]) == {"@odata.etag", "onr_key", "onr_leader_signalid"}


# --- $batch ----------------------------------------------------------------------------------------


def test_a_change_set_is_atomic_and_its_failure_is_one_response(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    emu.fail_record("bad", "0x80040265", "Rejected by a plug-in.")
    root = emu.service_root
    changeset = batch_body(
        "changeset_1",
        [
            http_part("PATCH", f"{root}{SIGNALS}(onr_key='good')", {"onr_score": 1}, content_id="1"),
            http_part("PATCH", f"{root}{SIGNALS}(onr_key='bad')", {"onr_score": 2}, content_id="2"),
        ],
    ).decode()
    body = batch_body(
        "batch_A",
        [
            "Content-Type: multipart/mixed; boundary=changeset_1\r\n\r\n" + changeset,
            http_part("PATCH", f"{root}{SIGNALS}(onr_key='after')", {"onr_score": 3}),
        ],
    )
    answer = http.post(
        root + "$batch",
        data=body,
        headers={"Content-Type": "multipart/mixed; boundary=batch_A", "Prefer": "odata.continue-on-error"},
    )
    assert answer.status_code == 200
    parts = parse_batch_response(answer.headers["Content-Type"], answer.content)
    assert [p.status for p in parts] == [400, 204]  # the change set answers once, for all of it
    assert parts[0].error() == ("0x80040265", "Rejected by a plug-in.")
    assert [r["onr_key"] for r in emu.records(SIGNALS)] == ["after"]  # 'good' was rolled back
    assert b"Content-ID: 2" in answer.content


def test_without_continue_on_error_the_batch_stops_at_the_first_failure(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    emu.fail_record("second", "0x80044331", "A validation error occurred.")
    root = emu.service_root
    body = batch_body(
        "batch_B",
        [
            http_part("PATCH", f"{root}{SIGNALS}(onr_key='{k}')", {"onr_score": 1})
            for k in ("first", "second", "third")
        ],
    )
    headers = {"Content-Type": 'multipart/mixed; boundary="batch_B"'}
    stopped = http.post(root + "$batch", data=body, headers=headers)
    assert stopped.status_code == 400
    parts = parse_batch_response(stopped.headers["Content-Type"], stopped.content)
    assert [p.status for p in parts] == [204, 400]
    assert sorted(r["onr_key"] for r in emu.records(SIGNALS)) == ["first"]
    emu.fail_record("second", "0x80044331", "A validation error occurred.")
    went_on = http.post(root + "$batch", data=body, headers={**headers, "Prefer": "odata.continue-on-error"})
    assert went_on.status_code == 200 and went_on.headers["Preference-Applied"] == "odata.continue-on-error"
    parts = parse_batch_response(went_on.headers["Content-Type"], went_on.content)
    assert [p.status for p in parts] == [204, 400, 204]
    inner = [c for c in emu.calls if c.batch == "batch_B"]
    assert [c.method for c in inner] == ["PATCH"] * 5


def test_a_batch_holds_at_most_1000_requests_and_no_get_in_a_change_set(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    root = emu.service_root
    parts = [http_part("PATCH", f"{root}{SIGNALS}(onr_key='k{i}')", {"onr_score": 1}) for i in range(1001)]
    headers = {"Content-Type": "multipart/mixed; boundary=batch_C"}
    too_many = http.post(root + "$batch", data=batch_body("batch_C", parts), headers=headers)
    assert too_many.status_code == 400 and "up to 1000" in error(too_many)[1]
    assert emu.records(SIGNALS) == []
    changeset = batch_body("changeset_2", [http_part("GET", f"{root}{SIGNALS}")]).decode()
    body = batch_body("batch_C", ["Content-Type: multipart/mixed; boundary=changeset_2\r\n\r\n" + changeset])
    assert http.post(root + "$batch", data=body, headers=headers).status_code == 400


# --- faults and limits -----------------------------------------------------------------------------


def test_injected_failures_carry_dataverse_bodies_retry_after_and_the_rate_limit_headers(
    emu: DataverseEmulator, http: requests.Session
) -> None:
    emu.set_requests_remaining(100)
    emu.fail_next(1, status=429, retry_after=7)
    emu.fail_next(1, status=503, retry_after=None)
    throttled = http.get(emu.service_root + "WhoAmI")
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
    assert error(throttled) == (
        "0x80072322",
        "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    )
    unavailable = http.get(emu.service_root + "WhoAmI")
    assert unavailable.status_code == 503 and "Retry-After" not in unavailable.headers
    ok = http.get(emu.service_root + "WhoAmI")
    assert ok.status_code == 200 and ok.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "97"


def test_slow_down_delays_the_next_request(emu: DataverseEmulator, http: requests.Session) -> None:
    emu.slow_down(0.5)
    started = time.monotonic()
    assert http.get(emu.service_root + "WhoAmI").status_code == 200
    assert time.monotonic() - started >= 0.5


# --- extensions ------------------------------------------------------------------------------------


def test_extension_modules_register_their_routes_and_missing_ones_are_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Any] = []
    module = types.ModuleType("tests.dvemu._fake_extension")

    def register(app: Any, state: Any) -> None:
        seen.append(state)

        @app.get("/api/data/v<version>/onr_things")
        def things(version: str) -> Any:
            from tests.dvemu.odata import json_response

            return json_response({"value": [{"n": len(state.tables)}]})

    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests.dvemu._fake_extension", module)
    monkeypatch.setattr(server, "EXTENSIONS", ("tests.dvemu._fake_extension", "tests.dvemu._not_there"))
    with DataverseEmulator() as emu:
        answer = emu.http_session().get(emu.service_root + "onr_things")
        anonymous = emu.http_session(signed_in=False).get(emu.service_root + "onr_things")
    assert seen == [emu.state]
    assert answer.status_code == 200 and answer.json()["value"][0]["n"] == len(emu.state.tables)
    assert anonymous.status_code == 401  # an extension's route gets the same token check
    assert [c.path for c in emu.calls if "onr_things" in c.path] == ["/api/data/v9.2/onr_things"] * 2
