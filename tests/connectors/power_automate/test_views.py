"""POST /hooks/power-automate/*: fixtures in, inbox rows out; every bad credential refused, nothing stored."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from plugin.app import create_app
from plugin.config import Config
from plugin.storage import get_engine, inbox
from tests.conftest import make_config
from tests.connectors.power_automate.support import API_CLIENT_ID, API_KEY, FLOW_CLIENT_ID, ROLE, TENANT
from tests.support.jwks_server import JwksServer, RsaKey, TokenFactory

FIXTURES = Path(__file__).resolve().parents[3] / "connectors" / "power_automate" / "fixtures"
OTHER_TENANT = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.fixture(scope="module")
def keys() -> dict[str, RsaKey]:
    return {name: RsaKey.generate(f"kid-{name}") for name in ("current", "attacker")}


@pytest.fixture
def jwks(keys: dict[str, RsaKey]) -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.set_keys([keys["current"]])
        yield server


def tokens(key: RsaKey, **overrides: Any) -> TokenFactory:
    values: dict[str, Any] = {
        "tenant_id": TENANT,
        "audience": API_CLIENT_ID,
        "client_id": FLOW_CLIENT_ID,
        "role": ROLE,
    }
    values.update(overrides)
    return TokenFactory(key, **values)


def entra_settings(jwks: JwksServer) -> dict[str, Any]:
    return {
        "power_automate.entra_tenant_id": TENANT,
        "power_automate.entra_audiences": [API_CLIENT_ID],
        "power_automate.entra_allowed_client_ids": [FLOW_CLIENT_ID],
        "power_automate.entra_required_role": ROLE,
        "power_automate.entra_jwks_url": jwks.url(TENANT),
    }


def client_for(config: Config) -> FlaskClient:
    return create_app(config).test_client()


@pytest.fixture
def config(db_url: str, tmp_path: Path, jwks: JwksServer) -> Config:
    return make_config(db_url, tmp_path, **entra_settings(jwks), **{"power_automate.api_key": [API_KEY]})


@pytest.fixture
def client(config: Config) -> FlaskClient:
    return client_for(config)


def stored(config: Config) -> list[Any]:
    with get_engine(config.storage.url).connect() as conn:
        return list(conn.execute(sa.select(inbox).order_by(inbox.c.id)))


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def post(client: FlaskClient, endpoint: str, body: bytes, **headers: str) -> Any:
    return client.post(
        f"/hooks/power-automate/{endpoint}",
        data=body,
        headers={"Content-Type": "application/json", **headers},
    )


def bearer(token: str) -> str:
    return f"Bearer {token}"


@pytest.mark.parametrize(
    ("endpoint", "name", "kinds"),
    [
        ("forms", "forms__submitted.json", ["form.submitted"]),
        ("approvals", "approvals__stage1_approved.json", ["approval.decided"]),
        ("approvals", "approvals__two_responders.json", ["approval.decided", "approval.decided"]),
        ("signals", "signals__training_attended.json", ["training.attended"]),
    ],
)
def test_fixture_with_entra_token_is_stored_as_its_events(
    client: FlaskClient, config: Config, keys: dict[str, RsaKey], endpoint: str, name: str, kinds: list[str]
) -> None:
    resp = post(client, endpoint, fixture(name), Authorization=bearer(tokens(keys["current"]).v2()))
    assert resp.status_code == 200, resp.json
    assert resp.json == {"stored": len(kinds), "duplicates": 0, "ignored": 0}
    rows = stored(config)
    assert [r.kind for r in rows] == kinds
    assert {r.source for r in rows} == {f"power_automate.{endpoint}"}
    assert {r.sender for r in rows} == {f"entra:{TENANT}/{FLOW_CLIENT_ID}"}
    assert all(r.status == "pending" and len(r.raw_digest) == 64 for r in rows)


def test_retried_delivery_is_acknowledged_and_stored_once(
    client: FlaskClient, config: Config, keys: dict[str, RsaKey]
) -> None:
    auth = bearer(tokens(keys["current"]).v2())
    for endpoint, name in [
        ("forms", "forms__submitted.json"),
        ("approvals", "approvals__two_responders.json"),
    ]:
        first = post(client, endpoint, fixture(name), Authorization=auth)
        again = post(client, endpoint, fixture(name), Authorization=auth)  # Power Automate's retry
        assert first.status_code == again.status_code == 200
        assert again.json["stored"] == 0 and again.json["duplicates"] == first.json["stored"]
    rows = stored(config)
    assert len(rows) == 3
    assert rows[0].delivery_id.startswith("form:") and rows[0].delivery_id.endswith(":42")
    assert len({r.delivery_id for r in rows}) == 3


def test_api_key_mode_accepts_the_configured_key(client: FlaskClient, config: Config) -> None:
    resp = post(client, "signals", fixture("signals__training_attended.json"), **{"X-OnRecord-Key": API_KEY})
    assert resp.status_code == 200 and resp.json["stored"] == 1
    (row,) = stored(config)
    assert row.sender == "api_key:0" and row.actor == "jane.doe@contoso.com"


def _bad(kind: str, keys: dict[str, RsaKey]) -> dict[str, str]:
    good = tokens(keys["current"])
    now = int(time.time())
    token = {
        "wrong_audience": lambda: tokens(keys["current"], audience="https://graph.microsoft.com").v2(),
        "wrong_tenant": lambda: tokens(keys["current"], tenant_id=OTHER_TENANT).v2(),
        "expired": lambda: good.v2(iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "alg_none": lambda: good.alg_none(),
        "hs256_with_public_key": lambda: good.hs256_with_public_key(),
        "unknown_kid": lambda: tokens(keys["attacker"]).v2(),
        "missing_role": lambda: good.v2(roles=["Something.Else"]),
        "caller_not_allowed": lambda: tokens(
            keys["current"], client_id="99998888-7777-4666-8555-444433332222"
        ).v2(),
        "tampered": lambda: good.tampered(roles=[ROLE, "Admin"]),
        "delegated_user_token": lambda: good.v2(scp="Events.Write"),
    }.get(kind)
    if token is not None:
        return {"Authorization": bearer(token())}
    return {
        "no_credentials": {},
        "basic_auth": {"Authorization": "Basic dXNlcjpwYXNz"},
        "wrong_api_key": {"X-OnRecord-Key": "not-the-key-0123456789"},
        "empty_api_key": {"X-OnRecord-Key": ""},
    }[kind]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("wrong_audience", "wrong_audience"),
        ("wrong_tenant", "wrong_tenant"),
        ("expired", "expired"),
        ("alg_none", "bad_algorithm"),
        ("hs256_with_public_key", "bad_algorithm"),
        ("unknown_kid", "unknown_key"),
        ("missing_role", "missing_role"),
        ("caller_not_allowed", "caller_not_allowed"),
        ("tampered", "bad_signature"),
        ("delegated_user_token", "caller_not_allowed"),
        ("no_credentials", "missing_token"),
        ("basic_auth", "missing_token"),
        ("wrong_api_key", "caller_not_allowed"),
        ("empty_api_key", "missing_token"),
    ],
)
def test_bad_credentials_are_refused_with_401_and_nothing_is_stored(
    sqlite_url: str, tmp_path: Path, jwks: JwksServer, keys: dict[str, RsaKey], kind: str, reason: str
) -> None:
    config = make_config(
        sqlite_url, tmp_path, **entra_settings(jwks), **{"power_automate.api_key": [API_KEY]}
    )
    client = client_for(config)
    resp = post(client, "forms", fixture("forms__submitted.json"), **_bad(kind, keys))
    assert resp.status_code == 401, resp.json
    assert resp.json["reason"] == reason
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert stored(config) == []


def test_credentials_are_checked_before_the_body_is_read(client: FlaskClient, config: Config) -> None:
    resp = post(client, "forms", b"not json at all", **{"X-OnRecord-Key": "wrong-key-0123456789abc"})
    assert resp.status_code == 401


def test_unconfigured_source_fails_closed_with_503(db_url: str, tmp_path: Path) -> None:
    config = make_config(db_url, tmp_path)
    resp = post(client_for(config), "forms", fixture("forms__submitted.json"), **{"X-OnRecord-Key": API_KEY})
    assert resp.status_code == 503 and resp.json["reason"] == "not_configured"
    assert resp.headers["Retry-After"]
    assert stored(config) == []


def test_a_mode_left_out_of_auth_modes_is_refused(sqlite_url: str, tmp_path: Path, jwks: JwksServer) -> None:
    config = make_config(
        sqlite_url,
        tmp_path,
        **entra_settings(jwks),
        **{"power_automate.api_key": [API_KEY], "power_automate.auth_modes": ["entra"]},
    )
    resp = post(client_for(config), "forms", fixture("forms__submitted.json"), **{"X-OnRecord-Key": API_KEY})
    assert resp.status_code == 401 and resp.json["reason"] == "missing_token"
    assert stored(config) == []


def test_key_only_configuration_refuses_a_bearer_token(
    sqlite_url: str, tmp_path: Path, keys: dict[str, RsaKey]
) -> None:
    config = make_config(sqlite_url, tmp_path, **{"power_automate.api_key": [API_KEY]})
    resp = post(
        client_for(config),
        "forms",
        fixture("forms__submitted.json"),
        Authorization=bearer(tokens(keys["current"]).v2()),
    )
    assert resp.status_code == 401 and resp.json["reason"] == "missing_token"


def test_unreachable_signing_keys_answer_503_so_the_flow_retries(
    sqlite_url: str, tmp_path: Path, jwks: JwksServer, keys: dict[str, RsaKey]
) -> None:
    jwks.fail_with(503)
    config = make_config(sqlite_url, tmp_path, **entra_settings(jwks))
    resp = post(
        client_for(config),
        "forms",
        fixture("forms__submitted.json"),
        Authorization=bearer(tokens(keys["current"]).v2()),
    )
    assert resp.status_code == 503 and resp.json["reason"] == "jwks_unavailable"
    assert stored(config) == []


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in FIXTURES.glob("malformed__*.json")),
)
def test_payload_power_automate_would_not_send_is_refused_with_400(
    client: FlaskClient, config: Config, name: str
) -> None:
    endpoint = name.split("__")[1]
    resp = post(client, endpoint, fixture(name), **{"X-OnRecord-Key": API_KEY})
    assert resp.status_code == 400, resp.json
    assert resp.json["reason"] and resp.json["error"]
    assert stored(config) == []


def test_unknown_signal_kind_is_acknowledged_and_ignored(client: FlaskClient, config: Config) -> None:
    resp = post(client, "signals", fixture("signals__unknown_kind.json"), **{"X-OnRecord-Key": API_KEY})
    assert resp.status_code == 200 and resp.json == {"stored": 0, "duplicates": 0, "ignored": 1}
    assert stored(config) == []


def test_oversized_body_is_refused_with_413(client: FlaskClient, config: Config) -> None:
    form = json.loads(fixture("forms__submitted.json"))
    form["answers"] = {f"q{i}": "x" * 3000 for i in range(400)}  # ~1.2 MB, under the server's limit
    resp = post(client, "forms", json.dumps(form).encode(), **{"X-OnRecord-Key": API_KEY})
    assert resp.status_code == 413 and resp.json["reason"] == "too_large"
    assert stored(config) == []


def test_long_form_and_response_ids_still_fit_the_inbox(client: FlaskClient, config: Config) -> None:
    form = json.loads(fixture("forms__submitted.json"))
    form["form_id"], form["response_id"] = "f" * 200, "r" * 200
    for _ in range(2):
        resp = post(client, "forms", json.dumps(form).encode(), **{"X-OnRecord-Key": API_KEY})
        assert resp.status_code == 200, resp.json
    (row,) = stored(config)
    assert len(row.delivery_id) <= 255 and row.delivery_id.startswith("form:sha256:")
