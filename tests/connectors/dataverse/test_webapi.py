"""The Web API client, through msal, requests and HTTPS, against the Dataverse emulator."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.dataverse.config import DataverseConfig
from connectors.dataverse.webapi import (
    BatchRequest,
    DataverseError,
    ServiceProtectionLimit,
    WebApiClient,
    WebApiSettings,
    retry_after_seconds,
)
from plugin.crm import CrmError, CrmPaused
from tests.connectors.dataverse.conftest import config_for
from tests.dvemu import DataverseEmulator

Factory = Callable[..., WebApiClient]


@pytest.fixture
def make_client(dataverse: DataverseEmulator) -> Iterator[Factory]:
    made: list[WebApiClient] = []

    def make(*, sleep: Callable[[float], None] | None = None, **overrides: Any) -> WebApiClient:
        values: dict[str, Any] = {
            "url": dataverse.url,
            "tenant_id": dataverse.tenant_id,
            "client_id": dataverse.client_id,
            "client_secret": dataverse.client_secret,
            "authority_host": dataverse.url,
            "ca_bundle": dataverse.ca_path,
            "timeout": 5.0,
        }
        values.update(overrides)
        client = WebApiClient(WebApiSettings(**values), **({"sleep": sleep} if sleep else {}))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def token_calls(emu: DataverseEmulator) -> int:
    return sum(1 for c in emu.calls if c.path.endswith("/oauth2/v2.0/token"))


def api_calls(emu: DataverseEmulator, fragment: str = "") -> list[Any]:
    return [c for c in emu.api_calls() if fragment in c.path]


# --- sign-in and headers ---------------------------------------------------------------------------


def test_signs_in_once_with_msal_and_sends_the_odata_headers(
    dataverse: DataverseEmulator, make_client: Factory
) -> None:
    client = make_client()
    who = client.who_am_i()
    assert who["UserId"] == dataverse.application_user_id
    client.get("WhoAmI")
    assert token_calls(dataverse) == 1  # msal serves its cached token the second time
    discovery = [c for c in dataverse.calls if c.path.endswith("/v2.0/.well-known/openid-configuration")]
    assert len(discovery) == 1
    token = next(c for c in dataverse.calls if c.path.endswith("/oauth2/v2.0/token"))
    assert (
        b"scope=" + f"{dataverse.url}/.default".replace(":", "%3A").replace("/", "%2F").encode() in token.body
    )
    call = api_calls(dataverse, "WhoAmI")[0]
    assert call.headers["Odata-Maxversion"] == "4.0" and call.headers["Odata-Version"] == "4.0"
    assert call.headers["Accept"] == "application/json" and call.headers["If-None-Match"] == "null"
    assert call.headers["Authorization"].startswith("Bearer ")


def test_an_expired_token_is_replaced_once_and_the_request_retried(
    dataverse: DataverseEmulator, make_client: Factory
) -> None:
    client = make_client()
    client.who_am_i()
    dataverse.expire_tokens()
    assert client.who_am_i()["UserId"] == dataverse.application_user_id
    assert token_calls(dataverse) == 2
    assert [c.status for c in api_calls(dataverse, "WhoAmI")] == [200, 401, 200]


def test_a_401_right_after_signing_in_again_is_an_error_not_a_loop(
    dataverse: DataverseEmulator, make_client: Factory
) -> None:
    client = make_client()
    client.who_am_i()
    dataverse.fail_next(
        2, status=401, code="0x80072560", message="The user is not a member of the organization."
    )
    with pytest.raises(DataverseError) as caught:
        client.who_am_i()
    assert caught.value.status == 401 and caught.value.code == "0x80072560" and caught.value.retryable
    assert "even right after signing in again" in str(caught.value)
    assert token_calls(dataverse) == 2


def test_a_refused_sign_in_says_what_entra_said(dataverse: DataverseEmulator, make_client: Factory) -> None:
    client = make_client(client_secret="not-the-secret")
    with pytest.raises(CrmError) as caught:
        client.who_am_i()
    assert "invalid_client" in str(caught.value) and "AADSTS7000215" in str(caught.value)
    assert caught.value.retryable  # the records wait for the admin to fix the secret
    assert api_calls(dataverse) == []


def test_tls_is_verified_against_the_configured_ca_bundle(
    dataverse: DataverseEmulator, make_client: Factory
) -> None:
    client = make_client(ca_bundle=None)  # the system's CAs do not know the emulator's
    with pytest.raises(CrmError) as caught:
        client.who_am_i()
    assert "TLS verification failed" in str(caught.value) and caught.value.retryable
    assert dataverse.calls == []


# --- the retry policy ------------------------------------------------------------------------------


def test_429_waits_what_retry_after_says_then_succeeds(
    dataverse: DataverseEmulator, make_client: Factory
) -> None:
    client = make_client()
    client.who_am_i()
    dataverse.fail_next(1, status=429, retry_after=1)
    started = time.monotonic()
    assert client.who_am_i()["UserId"] == dataverse.application_user_id
    assert time.monotonic() - started >= 1.0
    assert [c.status for c in api_calls(dataverse, "WhoAmI")] == [200, 429, 200]
    assert client.paused() is None


def test_503_backs_off_and_gives_up_after_the_retries_as_a_retryable_error(
    dataverse: DataverseEmulator, make_client: Factory
) -> None:
    waits: list[float] = []
    client = make_client(sleep=waits.append)
    dataverse.fail_next(2, status=503, retry_after=None)
    assert client.who_am_i()["UserId"]
    assert waits == [1.0, 2.0]  # no Retry-After: 1 s, 2 s, ...
    waits.clear()
    dataverse.fail_next(4, status=503, retry_after=2)
    with pytest.raises(DataverseError) as caught:
        client.who_am_i()
    assert waits == [2.0, 2.0, 2.0] and caught.value.status == 503 and caught.value.retryable


def test_a_long_service_protection_wait_pauses_the_client_until_then(
    dataverse: DataverseEmulator, make_client: Factory
) -> None:
    waits: list[float] = []
    client = make_client(sleep=waits.append)
    client.who_am_i()
    dataverse.fail_next(1, status=429, retry_after=300, code="0x80072321")
    with pytest.raises(ServiceProtectionLimit) as caught:
        client.who_am_i()
    assert isinstance(caught.value, CrmPaused) and caught.value.retryable
    assert caught.value.code == "0x80072321" and caught.value.retry_after == 300
    assert "Combined execution time" in str(caught.value)
    assert waits == []  # not waited out inside the call
    sent = len(dataverse.calls)
    with pytest.raises(CrmPaused):
        client.who_am_i()
    assert len(dataverse.calls) == sent  # nothing sent before Dataverse's time
    assert "service protection limit" in (client.paused() or "")


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, "0x80048d19", False),
        (403, "0x80042f09", False),
        (404, "0x80040217", False),
        (500, "0x80040333", False),  # duplicate detection: HTTP 500, yet permanent
        (500, "0x80040216", True),
        (502, "", True),
    ],
)
def test_errors_keep_dataverse_code_and_message_and_say_whether_to_retry(
    dataverse: DataverseEmulator, make_client: Factory, status: int, code: str, retryable: bool
) -> None:
    client = make_client(sleep=lambda s: None, max_retries=0)
    client.who_am_i()
    dataverse.fail_next(1, status=status, code=code, message="Dataverse's own words.", retry_after=None)
    with pytest.raises(DataverseError) as caught:
        client.get("WhoAmI")
    err = caught.value
    assert (err.status, err.code, err.message, err.retryable) == (
        status,
        code,
        "Dataverse's own words.",
        retryable,
    )
    assert f"HTTP {status}" in str(err) and "Dataverse's own words." in str(err)


def test_a_timeout_is_a_retryable_error(dataverse: DataverseEmulator, make_client: Factory) -> None:
    client = make_client(timeout=0.3)
    client.who_am_i()
    dataverse.slow_down(1.5)
    with pytest.raises(CrmError) as caught:
        client.who_am_i()
    assert "no answer" in str(caught.value) and caught.value.retryable


def test_a_refused_connection_is_a_retryable_error(make_client: Factory, tmp_path: Path) -> None:
    with DataverseEmulator() as gone:
        url, ca = gone.url, gone.ca_path
        (tmp_path / "ca.pem").write_bytes(Path(ca).read_bytes())
    client = make_client(url=url, authority_host=url, ca_bundle=str(tmp_path / "ca.pem"))
    with pytest.raises(CrmError) as caught:
        client.who_am_i()
    assert "cannot connect" in str(caught.value) and caught.value.retryable


def test_retry_after_may_be_seconds_or_an_http_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= (retry_after_seconds(later) or 0) <= 61


# --- helpers ---------------------------------------------------------------------------------------


def test_entity_sets_come_from_table_definitions_once(
    dataverse: DataverseEmulator, make_client: Factory
) -> None:
    client = make_client()
    assert client.entity_set("opportunity") == "opportunities"
    assert client.entity_set("opportunity") == "opportunities"
    assert client.table("onr_leader_signal").primary_id == "onr_leader_signalid"
    definitions = api_calls(dataverse, "EntityDefinitions")
    assert [c.path for c in definitions] == [
        "/api/data/v9.2/EntityDefinitions(LogicalName='opportunity')?%24select=EntitySetName%2CPrimaryIdAttribute",
        "/api/data/v9.2/EntityDefinitions(LogicalName='onr_leader_signal')?%24select=EntitySetName%2CPrimaryIdAttribute",
    ]
    with pytest.raises(DataverseError) as caught:
        client.entity_set("onr_missing")
    assert caught.value.status == 404 and not caught.value.retryable
    assert "no table onr_missing" in str(caught.value)


def test_get_all_follows_next_links_to_the_last_page(
    dataverse: DataverseEmulator, make_client: Factory
) -> None:
    for i in range(7):
        dataverse.add_record("onr_leader_signals", {"onr_key": f"k{i}"})
    client = make_client()
    rows = list(client.get_all("onr_leader_signals", {"$select": "onr_key"}, page_size=3))
    assert sorted(r["onr_key"] for r in rows) == [f"k{i}" for i in range(7)]
    pages = api_calls(dataverse, "onr_leader_signals")
    assert len(pages) == 3 and all(c.headers["Prefer"] == "odata.maxpagesize=3" for c in pages)


def test_a_next_link_elsewhere_is_refused(make_client: Factory) -> None:
    client = make_client()
    with pytest.raises(CrmError) as caught:
        client.get("https://attacker.example/api/data/v9.2/accounts")
    assert not caught.value.retryable


def test_post_patch_and_batch_answer_in_order(dataverse: DataverseEmulator, make_client: Factory) -> None:
    client = make_client()
    created = client.post("onr_leader_signals", {"onr_key": "a", "onr_score": 1})
    assert created.status_code == 204
    guid = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    client.patch(f"onr_leader_signals({guid})", {"onr_score": 2}, headers={"If-Match": "*"})
    assert dataverse.record("onr_leader_signals", guid)["onr_score"] == 2  # type: ignore[index]
    answers = client.batch(
        [
            BatchRequest("PATCH", "onr_leader_signals(onr_key='b')", {"onr_score": 3}),
            BatchRequest("PATCH", "onr_leader_signals(onr_key='c')", {"onr_nope": 3}),
            BatchRequest("GET", f"onr_leader_signals({guid})?$select=onr_score"),
        ]
    )
    assert [a.status for a in answers] == [204, 400, 200]
    assert answers[1].error()[0] == "0x80048d19"
    assert answers[0].entity_id and dataverse.record("onr_leader_signals", answers[0].entity_id)
    batch_call = api_calls(dataverse, "$batch")[0]
    assert batch_call.headers["Prefer"] == "odata.continue-on-error"
    with pytest.raises(CrmError):
        client.batch([BatchRequest("GET", "WhoAmI")] * 1001)


def test_rate_limit_reports_what_the_last_response_said(
    dataverse: DataverseEmulator, make_client: Factory
) -> None:
    client = make_client()
    assert client.rate_limit() is None
    dataverse.set_requests_remaining(4001)
    client.who_am_i()
    assert client.rate_limit() == (2000, 6000)


def test_settings_come_from_the_dataverse_section(dataverse: DataverseEmulator, tmp_path: Path) -> None:
    config = config_for(
        dataverse, f"sqlite:///{tmp_path}/x.db", tmp_path, **{"dataverse.timeout_seconds": 12}
    )
    settings = WebApiSettings.from_config(config.section("dataverse", DataverseConfig))
    assert (
        settings.url == dataverse.url and settings.timeout == 12 and settings.ca_bundle == dataverse.ca_path
    )
    assert settings.service_root == f"{dataverse.url}/api/data/v9.2/"
    assert dataverse.client_secret not in repr(settings)
    with pytest.raises(ValueError, match=r"dataverse\.client_secret"):
        WebApiSettings(
            url=dataverse.url, tenant_id=dataverse.tenant_id, client_id=dataverse.client_id, client_secret=""
        )
