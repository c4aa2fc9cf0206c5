"""The real SalesforceWriter, through simple-salesforce and HTTPS, against the Salesforce emulator."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from connectors.salesforce.auth import jwt_audience
from connectors.salesforce.writer import SalesforceWriter, SalesforceWriterSettings
from plugin.crm import CrmError, CrmPaused, CrmWriter, RecordWrite, WriteBatch
from tests.sfemu import KeyPair, SalesforceEmulator, make_consumer_keypair
from tests.sfemu.tls import make_ca

CLIENT_ID = "3MVG9OnRecordWriterTestKey"
SIGNAL = "OnRecord_Leader_Signal__c"
KEY = "OnRecord_Key__c"

Factory = Callable[..., SalesforceWriter]


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return make_consumer_keypair()


@pytest.fixture
def emu(keypair: KeyPair) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(api_limit=10_000, query_batch_size=3) as emulator:
        emulator.register_consumer(
            CLIENT_ID,
            certificate_pem=keypair.certificate_pem,
            client_secret="cc-secret",
            run_as="cc-integration@onrecord.example",
            approved_users=[emulator.username],
        )
        yield emulator
    assert emulator.errors == []


@pytest.fixture
def make_writer(emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path) -> Iterator[Factory]:
    key_path, _ = keypair.write(tmp_path, "jwt")
    made: list[SalesforceWriter] = []

    def make(**overrides: Any) -> SalesforceWriter:
        settings: dict[str, Any] = {
            "login_url": emu.base_url,
            "client_id": CLIENT_ID,
            "username": emu.username,
            "private_key_path": str(key_path),
            "ca_bundle": emu.ca_path,
            "timeout": 5.0,
        }
        settings.update(overrides)
        clock = settings.pop("clock", None)
        writer = SalesforceWriter(SalesforceWriterSettings(**settings), **({"clock": clock} if clock else {}))
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close()


def signals(*keys: str, **fields: Any) -> WriteBatch:
    records = [RecordWrite(k, {"Score__c": 10, "Period__c": "2025-Q1", **fields}) for k in keys]
    return WriteBatch(object=SIGNAL, operation="upsert", external_id_field=KEY, records=records)


def composite_calls(emu: SalesforceEmulator) -> list[tuple[str, int, int]]:
    return [(c.method, c.records, c.status) for c in emu.calls if "/composite/" in c.path]


# --- writing -----------------------------------------------------------------------------------


def test_writer_satisfies_the_crm_writer_protocol(make_writer: Factory) -> None:
    writer: CrmWriter = make_writer()
    assert writer.name == "salesforce"


def test_200_records_are_upserted_in_one_sobject_collections_call(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    keys = [f"005Dn000000LEAD{i:03d}|2025-Q1" for i in range(200)]
    results = make_writer().write_batch(signals(*keys))
    assert len(results) == 200 and all(r.ok and not r.error for r in results)
    stored = {r[KEY]: r for r in emu.records(SIGNAL)}
    assert set(stored) == set(keys)
    assert [r.crm_id for r in results] == [stored[k]["Id"] for k in keys]  # same order as the batch
    assert stored[keys[0]]["Score__c"] == 10 and stored[keys[0]]["Period__c"] == "2025-Q1"
    assert composite_calls(emu) == [("PATCH", 200, 200)]
    assert any(c.path.endswith(f"/composite/sobjects/{SIGNAL}/{KEY}") for c in emu.calls)


def test_upserting_the_same_keys_again_updates_instead_of_duplicating(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    writer = make_writer()
    first = writer.write_batch(signals("k1", "k2"))
    second = writer.write_batch(signals("k1", "k2", Score__c=99))
    assert [r.crm_id for r in first] == [r.crm_id for r in second]
    assert sorted(r["Score__c"] for r in emu.records(SIGNAL)) == [99, 99]


def test_update_by_record_id_writes_through_composite_sobjects(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    opp = emu.insert_record("Opportunity", {"Name": "Budget 2025", "OnRecord_Approval__c": "Pending"})
    stamped = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)
    fields = {
        "OnRecord_Approval__c": "Verified",
        "OnRecord_Recorded_At__c": stamped,
        "Amount": decimal.Decimal("5"),
    }
    batch = WriteBatch("Opportunity", "update", None, [RecordWrite(opp[:15], fields)])
    [result] = make_writer().write_batch(batch)
    assert result.ok and result.crm_id == opp
    record = emu.record("Opportunity", opp)
    assert record is not None
    assert record["OnRecord_Approval__c"] == "Verified"
    assert record["OnRecord_Recorded_At__c"] == "2025-03-01T09:30:00.000Z"
    assert composite_calls(emu) == [("PATCH", 1, 200)]


def test_locked_records_are_retryable_while_the_others_succeed(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    emu.lock_rows(SIGNAL, ["k2", "k4"])
    results = make_writer().write_batch(signals("k1", "k2", "k3", "k4"))
    assert [(r.ok, r.retryable) for r in results] == [
        (True, False),
        (False, True),
        (True, False),
        (False, True),
    ]
    assert results[1].error.startswith("UNABLE_TO_LOCK_ROW: unable to obtain exclusive access")
    assert sorted(r[KEY] for r in emu.records(SIGNAL)) == ["k1", "k3"]


def test_validation_errors_are_permanent_and_keep_salesforces_code_and_message(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    emu.reject_records(SIGNAL, ["k2"], "Score must be between 0 and 100", fields=["Score__c"])
    results = make_writer().write_batch(signals("k1", "k2"))
    assert results[0].ok
    assert (results[1].ok, results[1].retryable) == (False, False)
    assert (
        results[1].error
        == "FIELD_CUSTOM_VALIDATION_EXCEPTION: Score must be between 0 and 100 (fields: Score__c)"
    )


def test_expired_session_reauthenticates_once_and_the_call_succeeds(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    writer = make_writer()
    writer.write_batch(signals("k1"))
    emu.expire_sessions()
    [result] = writer.write_batch(signals("k2"))
    assert result.ok
    assert composite_calls(emu) == [("PATCH", 1, 200), ("PATCH", 1, 401), ("PATCH", 1, 200)]
    assert [c.status for c in emu.calls if c.path.endswith("/oauth2/token")] == [200, 200]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retryable(emu: SalesforceEmulator, make_writer: Factory, status: int) -> None:
    writer = make_writer()
    assert writer.ready()[0]
    emu.fail_next(1, status=status)
    with pytest.raises(CrmError) as err:
        writer.write_batch(signals("k1"))
    assert err.value.retryable and not isinstance(err.value, CrmPaused)
    assert f"HTTP {status}" in str(err.value)
    assert writer.write_batch(signals("k1"))[0].ok  # and the next attempt goes through


def test_a_timeout_is_retryable(emu: SalesforceEmulator, make_writer: Factory) -> None:
    writer = make_writer(timeout=0.25)
    assert writer.ready()[0]
    emu.slow_down(1.0, count=1)
    with pytest.raises(CrmError) as err:
        writer.write_batch(signals("k1"))
    assert err.value.retryable
    assert "no answer from https://127.0.0.1" in str(err.value) and "within 0.25s" in str(err.value)


def test_an_unreachable_org_is_retryable(
    emu: SalesforceEmulator, make_writer: Factory, tmp_path: Path
) -> None:
    ca_copy = tmp_path / "ca.pem"
    ca_copy.write_bytes(Path(emu.ca_path).read_bytes())
    writer = make_writer(ca_bundle=str(ca_copy))
    assert writer.ready()[0]
    emu.stop()
    with pytest.raises(CrmError) as err:
        writer.write_batch(signals("k1"))
    assert err.value.retryable
    assert "cannot connect to https://127.0.0.1" in str(err.value) and "Connection refused" in str(err.value)


def test_a_missing_ca_bundle_file_is_reported(make_writer: Factory, tmp_path: Path) -> None:
    ok, reason = make_writer(ca_bundle=str(tmp_path / "gone.pem")).ready()
    assert not ok and f"cannot use CA bundle {tmp_path / 'gone.pem'}" in reason


def test_a_request_rejected_as_malformed_is_not_retryable(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    emu.define_object(SIGNAL, ["Score__c", "Period__c"], strict=True, external_ids=[KEY])
    with pytest.raises(CrmError) as err:
        make_writer().write_batch(signals("k1", Unknown__c=1))
    assert not err.value.retryable
    assert "HTTP 400 INVALID_FIELD: No such column 'Unknown__c'" in str(err.value)


def test_request_limit_exceeded_is_retryable_and_pauses_writes(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    writer = make_writer(api_budget_share=1.0)
    assert writer.ready()[0]
    emu.set_api_usage(10_000)
    with pytest.raises(CrmError) as err:
        writer.write_batch(signals("k1"))
    assert err.value.retryable and "REQUEST_LIMIT_EXCEEDED" in str(err.value)
    calls_before = len(emu.calls)
    with pytest.raises(CrmPaused):
        writer.write_batch(signals("k1"))
    assert len(emu.calls) == calls_before


# --- API budget --------------------------------------------------------------------------------


def test_at_85_percent_of_the_daily_limit_writes_pause_without_calling(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    emu.set_api_usage(8_500)
    writer = make_writer()
    with pytest.raises(CrmPaused) as err:
        writer.write_batch(signals("k1"))
    assert composite_calls(emu) == []
    assert str(err.value).startswith("API budget: 85% of daily limit used (8501/10000), writes paused until")
    ok, reason = writer.ready()
    assert not ok and reason.startswith("API budget: 85% of daily limit used (8501/10000)")
    assert writer.api_usage() == (8501, 10_000)


def test_writes_resume_once_a_later_reading_is_below_the_share(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    now = [1000.0]
    writer = make_writer(clock=lambda: now[0], budget_recheck_seconds=300)
    assert writer.write_batch(signals("k1"))[0].ok
    emu.set_api_usage(8_200)
    assert writer.write_batch(signals("k2"))[0].ok  # this call's header shows 82%
    with pytest.raises(CrmPaused):
        writer.write_batch(signals("k3"))
    emu.set_api_usage(1_000)  # the rolling 24 h window moved on
    now[0] += 299
    with pytest.raises(CrmPaused):
        writer.write_batch(signals("k3"))  # not re-read yet: at most one limits call per interval
    now[0] += 2
    assert writer.write_batch(signals("k3"))[0].ok
    assert writer.ready() == (True, f"authenticated to {emu.base_url}; API usage 1002/10000")
    assert sum(1 for c in emu.calls if c.path.rstrip("/").endswith("/limits")) == 2


# --- readiness and authentication --------------------------------------------------------------


def test_ready_authenticates_and_reports_usage(emu: SalesforceEmulator, make_writer: Factory) -> None:
    emu.set_api_usage(41)
    assert make_writer().ready() == (True, f"authenticated to {emu.base_url}; API usage 42/10000")


def test_client_credentials_flow_writes_as_the_run_as_user(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    writer = make_writer(
        auth="client_credentials", client_secret="cc-secret", username=None, private_key_path=None
    )
    [result] = writer.write_batch(signals("k1"))
    assert result.ok
    assert emu.records(SIGNAL)[0]["CreatedById"] == emu.user_id("cc-integration@onrecord.example")


def test_ready_says_the_private_key_does_not_match_the_connected_app(
    make_writer: Factory, tmp_path: Path
) -> None:
    other_key, _ = make_consumer_keypair().write(tmp_path, "other")
    ok, reason = make_writer(private_key_path=str(other_key)).ready()
    assert not ok
    assert "invalid_grant: invalid assertion" in reason
    assert "private key does not match the certificate uploaded to the connected app" in reason


def test_ready_says_the_key_file_is_missing_or_not_a_key(make_writer: Factory, tmp_path: Path) -> None:
    missing = make_writer(private_key_path=str(tmp_path / "nope.key")).ready()
    (tmp_path / "garbage.key").write_text("not a key")
    garbage = make_writer(private_key_path=str(tmp_path / "garbage.key")).ready()
    assert missing == (
        False,
        f"Salesforce JWT: cannot read private key file {tmp_path / 'nope.key'}: No such file or directory",
    )
    assert not garbage[0] and "is not an unencrypted PEM private key" in garbage[1]


def test_ready_says_the_user_is_not_pre_authorized(make_writer: Factory) -> None:
    ok, reason = make_writer(username="intruder@onrecord.example").ready()
    assert not ok and "user hasn't approved this consumer" in reason and "pre-authorize" in reason


def test_ready_says_the_login_url_is_not_salesforce(emu: SalesforceEmulator, make_writer: Factory) -> None:
    ok, reason = make_writer(login_url=emu.base_url + "/not-a-login").ready()
    assert not ok
    assert f"login_url {emu.base_url}/not-a-login does not look like a Salesforce login URL" in reason
    assert "answered HTTP 404" in reason


def test_tls_with_the_wrong_ca_fails_with_a_clear_error(
    emu: SalesforceEmulator, make_writer: Factory, tmp_path: Path
) -> None:
    wrong_ca = tmp_path / "wrong-ca.pem"
    wrong_ca.write_bytes(make_ca("Some other CA")[0].public_bytes(Encoding.PEM))
    writer = make_writer(ca_bundle=str(wrong_ca))
    ok, reason = writer.ready()
    assert not ok
    assert reason == (
        f"Salesforce JWT bearer login of {emu.username} failed: TLS verification failed for {emu.base_url}: "
        f"certificate verify failed: unable to get local issuer certificate (trusting CA bundle {wrong_ca})"
    )
    with pytest.raises(CrmError) as err:
        writer.write_batch(signals("k1"))
    assert err.value.retryable and "TLS verification failed" in str(err.value)
    assert emu.calls == []  # nothing reached the org


def test_ca_bundle_wins_over_requests_ca_bundle_environment(
    emu: SalesforceEmulator, make_writer: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wrong_ca = tmp_path / "env-ca.pem"
    wrong_ca.write_bytes(make_ca("Environment CA")[0].public_bytes(Encoding.PEM))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(wrong_ca))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(wrong_ca))
    assert make_writer().ready()[0]


# --- reading -----------------------------------------------------------------------------------


def test_read_fields_returns_the_values_or_none_for_an_unknown_record(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    opp = emu.insert_record("Opportunity", {"Name": "Budget", "StageName": "Approved", "Amount": 5000})
    writer = make_writer()
    assert writer.read_fields("Opportunity", opp, ["StageName", "Amount"]) == {
        "StageName": "Approved",
        "Amount": 5000,
    }
    assert writer.read_fields("Opportunity", "006Dn0000000000AAA", ["StageName"]) is None
    assert writer.read_fields("Opportunity", "../../limits", ["StageName"]) is None


def test_query_follows_query_more_to_the_last_page(emu: SalesforceEmulator, make_writer: Factory) -> None:
    leader = emu.add_user("cfo@onrecord.example")
    start = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.UTC)
    for i in range(7):
        emu.add_login_history(leader, start + dt.timedelta(hours=i))
    soql = (
        "SELECT Id, UserId, LoginTime, LoginType FROM LoginHistory "
        "WHERE LoginTime >= 2025-03-01T00:00:00Z ORDER BY LoginTime"
    )
    rows = list(make_writer().query(soql))
    assert [r["LoginTime"][11:13] for r in rows] == ["08", "09", "10", "11", "12", "13", "14"]
    assert set(rows[0]) == {"Id", "UserId", "LoginTime", "LoginType"}
    assert [c.path.split("/")[-2] for c in emu.calls if "/query" in c.path][-2:] == ["query", "query"]
    assert sum(1 for c in emu.calls if "/query/01g" in c.path) == 2  # 3 + 3 + 1 rows


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"login_url": "http://login.salesforce.com"}, "salesforce.login_url"),
        ({"private_key_path": None}, "salesforce.private_key_path"),
        ({"auth": "client_credentials"}, "salesforce.client_secret"),
        ({"api_version": "v62"}, "salesforce.api_version"),
        ({"api_budget_share": 1.5}, "salesforce.api_budget_share"),
    ],
)
def test_settings_errors_name_the_key(overrides: dict[str, Any], key: str) -> None:
    settings = {
        "login_url": "https://login.salesforce.com",
        "client_id": CLIENT_ID,
        "username": "integration@example.com",
        "private_key_path": "/keys/jwt.key",
    }
    with pytest.raises(ValueError, match=key):
        SalesforceWriterSettings(**{**settings, **overrides})


@pytest.mark.parametrize(
    ("login_url", "audience"),
    [
        ("https://login.salesforce.com", "https://login.salesforce.com"),
        ("https://acme.my.salesforce.com", "https://login.salesforce.com"),
        ("https://acme--uat.sandbox.my.salesforce.com", "https://test.salesforce.com"),
        ("https://test.salesforce.com/", "https://test.salesforce.com"),
        ("https://acme.my.site.com/customers", "https://acme.my.site.com/customers"),
    ],
)
def test_jwt_audience_follows_salesforce_rules(login_url: str, audience: str) -> None:
    assert jwt_audience(login_url) == audience


def test_a_batch_over_200_records_or_with_a_bad_api_name_is_refused_before_calling(
    emu: SalesforceEmulator, make_writer: Factory
) -> None:
    writer = make_writer()
    with pytest.raises(CrmError, match="at most 200"):
        writer.write_batch(signals(*[f"k{i}" for i in range(201)]))
    with pytest.raises(CrmError, match="not a Salesforce API name"):
        writer.write_batch(WriteBatch("Account/../x", "update", None, [RecordWrite("001", {})]))
    assert emu.calls == []
