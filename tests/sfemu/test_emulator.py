"""The emulator behaves like Salesforce where OnRecord depends on it: OAuth token flows, REST error
shapes, sObject Collections results, the Sforce-Limit-Info header, query/queryMore, record ids."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from tests.sfemu import KeyPair, SalesforceEmulator, checksum, is_valid_id, make_consumer_keypair, to18

CLIENT_ID = "3MVG9emulatorTestConsumerKey"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return make_consumer_keypair()


@pytest.fixture
def emu(keypair: KeyPair) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(api_limit=10_000, query_batch_size=3) as emulator:
        emulator.register_consumer(
            CLIENT_ID,
            certificate_pem=keypair.certificate_pem,
            client_secret="s3cret",
            run_as="cc-integration@onrecord.example",
            approved_users=[emulator.username],
        )
        yield emulator
    assert emulator.errors == []


def assertion(emu: SalesforceEmulator, key_pem: bytes, **overrides: Any) -> str:
    claims = {"iss": CLIENT_ID, "sub": emu.username, "aud": emu.base_url, "exp": int(time.time()) + 180}
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key_pem, algorithm="RS256")


def token(emu: SalesforceEmulator, keypair: KeyPair) -> dict[str, Any]:
    data = {"grant_type": JWT_GRANT, "assertion": assertion(emu, keypair.private_key_pem)}
    response = requests.post(
        f"{emu.base_url}/services/oauth2/token", data=data, verify=emu.ca_path, timeout=5
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def sf(emu: SalesforceEmulator, keypair: KeyPair) -> Salesforce:
    tok = token(emu, keypair)
    return Salesforce(
        instance_url=tok["instance_url"],
        session_id=tok["access_token"],
        version="62.0",
        session=emu.http_session(),
    )


def rest(emu: SalesforceEmulator, sf: Salesforce, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {sf.session_id}"}
    timeout = kwargs.pop("timeout", 5)
    url = f"{emu.base_url}/services/data/v62.0/{path}"
    return requests.request(method, url, headers=headers, verify=emu.ca_path, timeout=timeout, **kwargs)


def error_code(exc: Exception) -> str:
    """The errorCode of a simple-salesforce exception's [{"message","errorCode",...}] content."""
    content: Any = getattr(exc, "content", None)
    return str(content[0]["errorCode"])


# --- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("id15", "id18"),
    [
        ("001D000000IqhSL", "001D000000IqhSLIAZ"),
        ("a00D0000008pQSN", "a00D0000008pQSNIA2"),
        ("005D0000001QX8W", "005D0000001QX8WIAW"),
        ("00190000001pPvH", "00190000001pPvHAAU"),
    ],
)
def test_18_char_id_checksum_matches_published_ids(id15: str, id18: str) -> None:
    assert id15 + checksum(id15) == id18
    assert to18(id15) == id18
    assert to18(id18.lower()) == id18  # 18-character ids are case-insensitive
    assert not is_valid_id(id15 + "9AA")  # not a checksum character
    assert not is_valid_id(id15[:14] + "!")
    assert not is_valid_id("001D000000IqhSLBAZ")  # flags an upper-case letter where a digit is


def test_generated_ids_are_18_chars_with_the_object_key_prefix(emu: SalesforceEmulator) -> None:
    account = emu.insert_record("Account", {"Name": "Acme"})
    custom = emu.insert_record("OnRecord_Violation__c", {"Rule__c": "x"})
    assert len(account) == 18 and account.startswith("001") and to18(account[:15]) == account
    assert len(custom) == 18 and custom.startswith("a0") and to18(custom[:15]) == custom
    assert emu.org_id.startswith("00D") and emu.user_id().startswith("005")


# --- OAuth -------------------------------------------------------------------------------------


def test_jwt_bearer_flow_returns_a_salesforce_token_response(
    emu: SalesforceEmulator, keypair: KeyPair
) -> None:
    body = token(emu, keypair)
    assert set(body) == {
        "access_token",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
        "signature",
        "scope",
    }
    assert body["token_type"] == "Bearer"
    assert body["instance_url"] == emu.base_url
    assert body["id"] == f"{emu.base_url}/id/{emu.org_id}/{emu.user_id()}"
    assert body["access_token"].startswith(emu.org_id[:15] + "!")


@pytest.mark.parametrize(
    ("claims", "error", "description"),
    [
        ({"aud": "https://login.salesforce.com"}, "invalid_grant", "audience is invalid"),
        ({"exp": int(time.time()) - 60}, "invalid_grant", "expired authorization code"),
        ({"exp": None}, "invalid_grant", "invalid assertion"),
        ({"sub": "someone-else@onrecord.example"}, "invalid_grant", "user hasn't approved this consumer"),
        ({"iss": "3MVG9unknown"}, "invalid_client_id", "client identifier invalid"),
    ],
)
def test_jwt_bearer_flow_rejects_bad_claims_as_salesforce_does(
    emu: SalesforceEmulator, keypair: KeyPair, claims: dict[str, Any], error: str, description: str
) -> None:
    data = {"grant_type": JWT_GRANT, "assertion": assertion(emu, keypair.private_key_pem, **claims)}
    response = requests.post(
        f"{emu.base_url}/services/oauth2/token", data=data, verify=emu.ca_path, timeout=5
    )
    assert response.status_code == 400
    assert response.json() == {"error": error, "error_description": description}


def test_jwt_signed_with_another_key_is_an_invalid_assertion(emu: SalesforceEmulator) -> None:
    other = make_consumer_keypair()
    data = {"grant_type": JWT_GRANT, "assertion": assertion(emu, other.private_key_pem)}
    response = requests.post(
        f"{emu.base_url}/services/oauth2/token", data=data, verify=emu.ca_path, timeout=5
    )
    assert (response.status_code, response.json()["error_description"]) == (400, "invalid assertion")


def test_client_credentials_flow_accepts_form_or_basic_auth_and_rejects_a_wrong_secret(
    emu: SalesforceEmulator,
) -> None:
    url = f"{emu.base_url}/services/oauth2/token"
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "s3cret"}
    by_form = requests.post(url, data=form, verify=emu.ca_path, timeout=5)
    by_basic = requests.post(
        url,
        data={"grant_type": "client_credentials"},
        auth=(CLIENT_ID, "s3cret"),
        verify=emu.ca_path,
        timeout=5,
    )
    wrong = requests.post(url, data={**form, "client_secret": "nope"}, verify=emu.ca_path, timeout=5)
    assert by_form.status_code == by_basic.status_code == 200
    assert by_form.json()["id"].endswith("/" + emu.user_id("cc-integration@onrecord.example"))
    assert (wrong.status_code, wrong.json()) == (
        400,
        {"error": "invalid_client", "error_description": "invalid client credentials"},
    )


# --- REST basics -------------------------------------------------------------------------------


def test_expired_session_answers_401_invalid_session_id(emu: SalesforceEmulator, sf: Salesforce) -> None:
    assert rest(emu, sf, "GET", "limits").status_code == 200
    emu.expire_sessions()
    response = rest(emu, sf, "GET", "limits")
    assert response.status_code == 401
    assert response.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID", "fields": []}
    ]


def test_every_rest_response_carries_sforce_limit_info_and_counts_one_call(
    emu: SalesforceEmulator, sf: Salesforce
) -> None:
    emu.set_api_usage(41)
    ok = rest(emu, sf, "GET", "limits")
    missing = rest(emu, sf, "GET", "sobjects/Account/001D000000IqhSLIAZ")
    assert ok.headers["Sforce-Limit-Info"] == "api-usage=42/10000"
    assert ok.json()["DailyApiRequests"] == {"Max": 10000, "Remaining": 9958}
    assert missing.status_code == 404 and missing.json()[0]["errorCode"] == "NOT_FOUND"
    assert missing.headers["Sforce-Limit-Info"] == "api-usage=43/10000"
    assert emu.api_usage == (43, 10000)


def test_calls_beyond_the_daily_limit_answer_403_request_limit_exceeded(
    emu: SalesforceEmulator, sf: Salesforce
) -> None:
    emu.set_api_usage(10_000)
    response = rest(emu, sf, "GET", "limits")
    assert response.status_code == 403
    assert response.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert emu.api_usage == (10_000, 10_000)


def test_injected_failures_answer_5xx_then_recover(emu: SalesforceEmulator, sf: Salesforce) -> None:
    emu.fail_next(2, status=503)
    statuses = [rest(emu, sf, "GET", "limits").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert [c.status for c in emu.calls if c.path.endswith("/limits")] == [503, 503, 200]


def test_slow_down_delays_answers(emu: SalesforceEmulator, sf: Salesforce) -> None:
    emu.slow_down(0.3, count=1)
    start = time.monotonic()
    rest(emu, sf, "GET", "limits")
    assert time.monotonic() - start >= 0.3
    with pytest.raises(requests.Timeout):
        emu.slow_down(1.0, count=1)
        rest(emu, sf, "GET", "limits", timeout=0.2)


def test_single_record_upsert_creates_with_201_then_updates_with_200(
    emu: SalesforceEmulator, sf: Salesforce
) -> None:
    first = rest(emu, sf, "PATCH", "sobjects/Account/Ext__c/K-1", json={"Name": "Acme"})
    second = rest(emu, sf, "PATCH", "sobjects/Account/Ext__c/K-1", json={"Name": "Acme Ltd"})
    assert first.status_code == 201 and first.json()["created"] is True
    assert second.status_code == 200 and second.json() == {
        "id": first.json()["id"],
        "success": True,
        "errors": [],
        "created": False,
    }
    got: Any = sf.restful(f"sobjects/Account/{first.json()['id']}", params={"fields": "Name,Ext__c"})
    assert got["Name"] == "Acme Ltd" and got["Ext__c"] == "K-1" and got["attributes"]["type"] == "Account"


# --- sObject Collections -----------------------------------------------------------------------


def upsert(sf: Salesforce, keys: list[str], all_or_none: bool = False) -> list[dict[str, Any]]:
    records = [{"attributes": {"type": "Account"}, "Ext__c": k, "Name": f"Name {k}"} for k in keys]
    result = sf.restful(
        "composite/sobjects/Account/Ext__c",
        method="PATCH",
        json={"allOrNone": all_or_none, "records": records},
    )
    assert isinstance(result, list)
    return result


def test_collection_upsert_answers_one_result_per_record_in_order(
    emu: SalesforceEmulator, sf: Salesforce
) -> None:
    created = upsert(sf, ["A", "B"])
    again = upsert(sf, ["B", "C"])
    assert [(r["success"], r["created"], r["errors"]) for r in created] == [
        (True, True, []),
        (True, True, []),
    ]
    assert again[0] == {"id": created[1]["id"], "success": True, "errors": [], "created": False}
    assert again[1]["created"] is True
    assert sorted(r["Ext__c"] for r in emu.records("Account")) == ["A", "B", "C"]
    assert [(c.method, c.records, c.status) for c in emu.calls if "composite" in c.path] == [
        ("PATCH", 2, 200),
        ("PATCH", 2, 200),
    ]


def test_locked_and_invalid_records_fail_alone_with_status_codes(
    emu: SalesforceEmulator, sf: Salesforce
) -> None:
    emu.lock_rows("Account", ["B"], attempts=1)
    emu.reject_records("Account", ["C"], "Budget must be approved through the form", fields=["Status__c"])
    results = upsert(sf, ["A", "B", "C"])
    assert results[0]["success"] is True
    assert results[1] == {
        "success": False,
        "errors": [
            {
                "statusCode": "UNABLE_TO_LOCK_ROW",
                "message": "unable to obtain exclusive access to this record or 1 records",
                "fields": [],
            }
        ],
    }
    assert results[2]["errors"] == [
        {
            "statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "message": "Budget must be approved through the form",
            "fields": ["Status__c"],
        }
    ]
    retry = upsert(sf, ["B", "C"])  # the lock was for one attempt; the validation rule stays
    assert [r["success"] for r in retry] == [True, False]


def test_all_or_none_rolls_back_every_record(emu: SalesforceEmulator, sf: Salesforce) -> None:
    emu.reject_records("Account", ["B"], "nope")
    results = upsert(sf, ["A", "B"], all_or_none=True)
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert emu.records("Account") == []


def test_collections_take_at_most_200_records(emu: SalesforceEmulator, sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as err:
        upsert(sf, [f"K{i}" for i in range(201)])
    assert error_code(err.value) == "EXCEEDED_ID_LIMIT"
    assert len(upsert(sf, [f"K{i}" for i in range(200)])) == 200


def test_collection_update_by_id_reports_unknown_and_malformed_ids(
    emu: SalesforceEmulator, sf: Salesforce
) -> None:
    account = emu.insert_record("Account", {"Name": "Old"})
    records = [
        {"attributes": {"type": "Account"}, "Id": account[:15], "Name": "New"},
        {"attributes": {"type": "Account"}, "Id": "001Dn0000000000AAA", "Name": "x"},
        {"attributes": {"type": "Account"}, "Id": "bogus", "Name": "x"},
    ]
    results: Any = sf.restful(
        "composite/sobjects", method="PATCH", json={"allOrNone": False, "records": records}
    )
    assert results[0] == {"id": account, "success": True, "errors": []}
    assert results[1]["errors"][0]["statusCode"] == "INVALID_CROSS_REFERENCE_KEY"
    assert results[2]["errors"][0]["statusCode"] == "MALFORMED_ID"
    assert emu.record("Account", account)["Name"] == "New"  # type: ignore[index]


def test_strict_objects_reject_unknown_fields_with_invalid_field(
    emu: SalesforceEmulator, sf: Salesforce
) -> None:
    emu.define_object(
        "OnRecord_Leader_Signal__c", ["Score__c"], strict=True, external_ids=["OnRecord_Key__c"]
    )
    body = {
        "allOrNone": False,
        "records": [{"attributes": {"type": "OnRecord_Leader_Signal__c"}, "Nope__c": 1}],
    }
    response = rest(
        emu, sf, "PATCH", "composite/sobjects/OnRecord_Leader_Signal__c/OnRecord_Key__c", json=body
    )
    assert response.status_code == 400 and response.json()[0]["errorCode"] == "INVALID_FIELD"
    wrong_ext = rest(emu, sf, "PATCH", "composite/sobjects/OnRecord_Leader_Signal__c/Score__c", json=body)
    assert wrong_ext.status_code == 404


# --- SOQL --------------------------------------------------------------------------------------


def test_query_pages_with_next_records_url_until_done(emu: SalesforceEmulator, sf: Salesforce) -> None:
    for i in range(7):
        emu.insert_record("Account", {"Name": f"N{i}"})
    first = sf.query("SELECT Id, Name FROM Account ORDER BY Name")
    assert (first["totalSize"], first["done"], len(first["records"])) == (7, False, 3)
    assert first["nextRecordsUrl"].startswith("/services/data/v62.0/query/01g")
    assert first["records"][0]["attributes"]["type"] == "Account"
    pages = [first]
    while not pages[-1]["done"]:
        pages.append(sf.query_more(pages[-1]["nextRecordsUrl"], identifier_is_url=True))
    assert [len(p["records"]) for p in pages] == [3, 3, 1]
    assert "nextRecordsUrl" not in pages[-1]
    assert [r["Name"] for p in pages for r in p["records"]] == [f"N{i}" for i in range(7)]


def test_login_history_is_queryable_with_datetime_and_in_filters(
    emu: SalesforceEmulator, sf: Salesforce
) -> None:
    leader = emu.add_user("ceo@onrecord.example")
    base = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
    for hours, login_type in [
        (0, "Application"),
        (5, "Remote Access 2.0"),
        (30, "Application"),
        (50, "SAML Idp"),
    ]:
        emu.add_login_history(leader, base + dt.timedelta(hours=hours), login_type=login_type)
    emu.add_login_history(emu.user_id(), base, status="Invalid Password")
    soql = (
        "SELECT Id, UserId, LoginTime, LoginType, Status FROM LoginHistory "  # noqa: S608 - test data
        f"WHERE UserId = '{leader}' AND LoginTime >= 2025-03-01T10:00:00Z "
        "AND LoginTime < 2025-03-03T11:00:00.000+0000 "
        "AND LoginType IN ('Application', 'Remote Access 2.0') ORDER BY LoginTime DESC LIMIT 5"
    )
    rows = sf.query_all(soql)["records"]
    assert [(r["LoginType"], r["LoginTime"]) for r in rows] == [
        ("Application", "2025-03-02T15:00:00.000+0000"),
        ("Remote Access 2.0", "2025-03-01T14:00:00.000+0000"),
    ]
    assert list(rows[0]) == ["attributes", "Id", "UserId", "LoginTime", "LoginType", "Status"]
    failed = sf.query("SELECT Id FROM LoginHistory WHERE Status != 'Success'")
    assert failed["totalSize"] == 1


@pytest.mark.parametrize(
    ("soql", "code"),
    [
        ("SELECT Id FROM Account WHERE Name = 'a' OR Name = 'b'", "MALFORMED_QUERY"),
        ("SELECT COUNT() FROM Account", "MALFORMED_QUERY"),
        ("SELEC Id FROM Account", "MALFORMED_QUERY"),
        ("SELECT Id FROM NoSuchThing__c", "INVALID_TYPE"),
        ("SELECT Bogus FROM LoginHistory", "INVALID_FIELD"),
    ],
)
def test_unsupported_or_invalid_soql_is_answered_with_salesforce_error_codes(
    emu: SalesforceEmulator, sf: Salesforce, soql: str, code: str
) -> None:
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.query(soql)
    assert error_code(err.value) == code


# --- control API -------------------------------------------------------------------------------


def test_faults_and_inspection_are_available_over_http(emu: SalesforceEmulator, sf: Salesforce) -> None:
    control = f"{emu.base_url}/__emulator"
    post = requests.post(
        f"{control}/faults", json={"api_usage": {"used": 7, "limit": 100}}, verify=emu.ca_path, timeout=5
    )
    assert post.status_code == 200
    upsert(sf, ["A"])
    assert requests.get(f"{control}/usage", verify=emu.ca_path, timeout=5).json() == {"used": 8, "limit": 100}
    records = requests.get(f"{control}/records/Account", verify=emu.ca_path, timeout=5).json()
    assert [r["Ext__c"] for r in records] == ["A"]
    calls = requests.get(f"{control}/calls", verify=emu.ca_path, timeout=5).json()
    assert calls[-1]["method"] == "PATCH" and calls[-1]["records"] == 1
    user_id = emu.user_id()
    requests.post(f"{control}/reset", verify=emu.ca_path, timeout=5)
    assert emu.records("Account") == [] and emu.calls == [] and emu.api_usage == (0, 10_000)
    assert emu.user_id() == user_id
