"""/api/subscriptions (the custom connector's webhook trigger) and delivering notifications to callbacks.

Deliveries go through real HTTPS to a receiver on loopback whose CA is made at test start; the
loopback address is reachable only because these tests set api.callback_allow_private_addresses,
except where a test shows what happens without it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from flask.testing import FlaskClient

from connectors.power_automate.subscriptions import CallbackNotifier
from plugin import migrate
from plugin.app import create_app
from plugin.config import Config
from plugin.dispatch import Dispatcher
from plugin.dryrun import DryRunWriter
from plugin.storage import begin_write, get_engine, outbox, subscriptions
from tests.conftest import make_config
from tests.connectors.power_automate.support import (
    API_CLIENT_ID,
    API_TOKEN,
    CALLBACK_KEY,
    FLOW_CLIENT_ID,
    OLD_CALLBACK_KEY,
    ROLE,
    TENANT,
    CallbackReceiver,
)
from tests.support.jwks_server import JwksServer, RsaKey, TokenFactory

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[CallbackReceiver]:
    with CallbackReceiver(tmp_path / "tls") as r:
        yield r


def settings(receiver: CallbackReceiver, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "api.tokens": [API_TOKEN],
        "api.callback_key": [CALLBACK_KEY],
        "api.callback_hosts": [f"localhost:{receiver.port}", f"callback.test:{receiver.port}"],
        "api.callback_allow_private_addresses": True,
        "api.callback_ca_bundle": str(receiver.ca_file),
        "dispatch.backoff_base_seconds": 0.01,
        "dispatch.max_attempts": 3,
    }
    values.update(overrides)
    return values


@pytest.fixture
def config(db_url: str, tmp_path: Path, receiver: CallbackReceiver) -> Config:
    return make_config(db_url, tmp_path, **settings(receiver))


@pytest.fixture
def client(config: Config) -> FlaskClient:
    return create_app(config).test_client()


def subscribe(client: FlaskClient, url: str, events: list[str] | None = None, **headers: str) -> Any:
    return client.post(
        "/api/subscriptions",
        json={"callback_url": url, "events": events or ["approval.blocked"]},
        headers={**AUTH, **headers},
    )


def notify(config: Config, topic: str = "approval.blocked", **data: Any) -> int:
    """A notification outbox row, as the worker writes it for a rule's Notification."""
    engine = get_engine(config.storage.url)
    now = datetime.now(UTC)
    with begin_write(engine) as conn:
        row_id: int = conn.execute(
            outbox.insert()
            .values(
                target="notification",
                object=topic,
                record_key="Opportunity/0065g00000AbCdEAAV",
                operation="notify",
                payload={"object": "Opportunity", "record_id": "0065g00000AbCdEAAV", **data},
                occurred_at=now,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            .returning(outbox.c.id)
        ).scalar_one()
    return row_id


def dispatch(config: Config, notifier: CallbackNotifier | None = None) -> None:
    engine = get_engine(config.storage.url)
    d = config.dispatch
    Dispatcher(
        engine,
        DryRunWriter(engine),
        owner="test",
        max_attempts=d.max_attempts,
        backoff_base_seconds=d.backoff_base_seconds,
        notifier=notifier or CallbackNotifier(engine, config),
    ).run_once()


def outbox_row(config: Config, row_id: int) -> Any:
    with get_engine(config.storage.url).connect() as conn:
        return conn.execute(sa.select(outbox).where(outbox.c.id == row_id)).one()


def subscription_rows(config: Config) -> list[Any]:
    with get_engine(config.storage.url).connect() as conn:
        return list(conn.execute(sa.select(subscriptions)))


def make_due(config: Config, row_id: int) -> None:
    with begin_write(get_engine(config.storage.url)) as conn:
        conn.execute(outbox.update().where(outbox.c.id == row_id).values(next_attempt_at=datetime.now(UTC)))


# -- subscribe / unsubscribe --------------------------------------------------------------------


def test_subscribe_answers_201_with_location_and_delete_is_idempotent(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    resp = subscribe(client, receiver.url(), ["approval.blocked", "leader.champion", "approval.blocked"])
    assert resp.status_code == 201, resp.json
    assert resp.json["events"] == ["approval.blocked", "leader.champion"]
    location = resp.headers["Location"]
    assert location == f"http://localhost/api/subscriptions/{resp.json['id']}"
    (row,) = subscription_rows(config)
    assert row.created_by == "api_token:0"
    path = location.removeprefix("http://localhost")
    assert client.delete(path, headers=AUTH).status_code == 204
    assert subscription_rows(config) == []
    assert client.delete(path, headers=AUTH).status_code == 204  # Power Automate may repeat it


def test_delete_without_a_token_works_only_with_that_subscriptions_secret(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    # microsoft/PowerPlatformConnectors#3678: the trigger's DELETE may arrive without the API key.
    first, second = subscribe(client, receiver.url()).json["id"], subscribe(client, receiver.url()).json["id"]
    first_id, first_secret = first.split(".", 1)
    second_id, second_secret = second.split(".", 1)
    stored = {row.id: row.secret_hash for row in subscription_rows(config)}
    assert stored[first_id] == hashlib.sha256(first_secret.encode()).hexdigest()
    assert first_secret not in str(stored) and len(first_secret) >= 40
    for path in (
        f"/api/subscriptions/{first_id}",  # the bare id
        f"/api/subscriptions/{first_id}.{second_secret}",  # another subscription's secret
        f"/api/subscriptions/{first_id}.{first_secret}x",
        f"/api/subscriptions/{first_id}.",
        f"/api/subscriptions/nope.{first_secret}",
    ):
        resp = client.delete(path)
        assert resp.status_code == 401 and resp.json["reason"] == "missing_token", path
    assert len(subscription_rows(config)) == 2
    assert client.delete(f"/api/subscriptions/{first}").status_code == 204
    assert [row.id for row in subscription_rows(config)] == [second_id]
    # Gone: its secret matches nothing any more, so a repeat needs the token (then 204 as always).
    assert client.delete(f"/api/subscriptions/{first}").status_code == 401
    assert client.delete(f"/api/subscriptions/{first}", headers=AUTH).status_code == 204


def test_delete_with_a_valid_token_works_as_before(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    handle = subscribe(client, receiver.url()).json["id"]
    subscription_id = handle.split(".", 1)[0]
    assert client.delete(f"/api/subscriptions/{subscription_id}.wrong", headers=AUTH).status_code == 204
    assert subscription_rows(config) == []


def test_a_subscription_without_a_stored_secret_needs_the_token(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    handle = subscribe(client, receiver.url()).json["id"]
    subscription_id, _secret = handle.split(".", 1)
    with begin_write(get_engine(config.storage.url)) as conn:  # as made before revision 0008
        conn.execute(subscriptions.update().values(secret_hash=None))
    assert client.delete(f"/api/subscriptions/{handle}").status_code == 401
    assert client.delete(f"/api/subscriptions/{subscription_id}", headers=AUTH).status_code == 204


def test_connection_test_answers_who_the_token_is(client: FlaskClient) -> None:
    resp = client.get("/api/connection", headers=AUTH)
    assert resp.status_code == 200 and resp.json == {"ok": True, "caller": "api_token:0"}
    refused = client.get("/api/connection", headers={"Authorization": f"Bearer {API_TOKEN}x"})
    assert refused.status_code == 401 and refused.json["reason"] == "invalid_token"


def test_location_uses_the_public_url_when_configured(
    tmp_path: Path, sqlite_url: str, receiver: CallbackReceiver
) -> None:
    config = make_config(
        sqlite_url, tmp_path, **settings(receiver, **{"api.public_url": "https://onrecord.contoso.com/"})
    )
    resp = subscribe(create_app(config).test_client(), receiver.url())
    assert resp.headers["Location"] == f"https://onrecord.contoso.com/api/subscriptions/{resp.json['id']}"


def test_callback_url_is_stored_encrypted_and_never_logged(
    client: FlaskClient, config: Config, receiver: CallbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = receiver.url()
    assert subscribe(client, url).status_code == 201
    (row,) = subscription_rows(config)
    assert "SECRETSIG" not in row.callback and "localhost" not in row.callback
    assert Fernet(CALLBACK_KEY.encode()).decrypt(row.callback.encode()).decode() == url
    notify(config)
    dispatch(config)
    receiver.wait_for(1)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "SECRETSIG" not in logged and "/workflows/" not in logged


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://localhost:{port}/workflows/x?sig=s", "not_https"),
        ("https://elsewhere.example.com/workflows/x?sig=s", "host_not_allowed"),
        ("https://localhost:1/workflows/x?sig=s", "host_not_allowed"),
        ("https://127.0.0.1:{port}/workflows/x?sig=s", "not_public"),
    ],
)
def test_subscribing_a_callback_outside_the_policy_is_refused(
    sqlite_url: str, tmp_path: Path, receiver: CallbackReceiver, url: str, reason: str
) -> None:
    overrides = {
        "api.callback_allow_private_addresses": False,
        "api.callback_hosts": [f"localhost:{receiver.port}", f"127.0.0.1:{receiver.port}"],
    }
    config = make_config(sqlite_url, tmp_path, **settings(receiver, **overrides))
    resp = subscribe(create_app(config).test_client(), url.format(port=receiver.port))
    assert resp.status_code == 400 and resp.json["reason"] == reason
    assert subscription_rows(config) == []


@pytest.mark.parametrize(
    "body",
    [
        {"events": ["approval.blocked"]},
        {"callback_url": "https://localhost/x", "events": []},
        {"callback_url": "https://localhost/x", "events": ["record.changed"]},
        {"callback_url": "https://localhost/x", "events": "approval.blocked"},
        ["not", "an", "object"],
    ],
)
def test_malformed_subscription_is_refused(client: FlaskClient, config: Config, body: Any) -> None:
    resp = client.post("/api/subscriptions", json=body, headers=AUTH)
    assert resp.status_code == 400 and resp.json["reason"]
    assert subscription_rows(config) == []


@pytest.mark.parametrize("control", ["\r\nX-Injected: 1", "\n", "\x00"])
def test_a_callback_url_with_control_characters_is_refused(
    client: FlaskClient, config: Config, receiver: CallbackReceiver, control: str
) -> None:
    resp = subscribe(client, receiver.url() + control)
    assert resp.status_code == 400 and resp.json["reason"] == "bad_url"
    assert subscription_rows(config) == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            b'{"callback_url": "https://a", "callback_url": "https://b", "events": ["approval.blocked"]}',
            "duplicate_key",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"events": NaN}', "not_a_number"),
    ],
)
def test_a_hostile_subscription_body_is_400_naming_the_problem(
    client: FlaskClient, config: Config, raw: bytes, reason: str
) -> None:
    resp = client.post("/api/subscriptions", data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json["reason"] == reason
    assert subscription_rows(config) == []


def test_subscribing_without_a_callback_key_fails_closed(
    sqlite_url: str, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    config = make_config(sqlite_url, tmp_path, **settings(receiver, **{"api.callback_key": []}))
    resp = subscribe(create_app(config).test_client(), receiver.url())
    assert resp.status_code == 503 and resp.json["reason"] == "not_configured"


# -- /api/* authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_token"),
        ({"Authorization": "Bearer "}, "missing_token"),
        ({"Authorization": f"Bearer {API_TOKEN}x"}, "invalid_token"),
        ({"Authorization": "Bearer a.b.c"}, "invalid_token"),  # a JWT, but no Entra ID configured
        ({"X-OnRecord-Key": API_TOKEN}, "missing_token"),
    ],
)
def test_api_without_a_valid_bearer_token_is_refused_with_401(
    client: FlaskClient, config: Config, receiver: CallbackReceiver, headers: dict[str, str], reason: str
) -> None:
    for resp in (
        client.post(
            "/api/subscriptions",
            json={"callback_url": receiver.url(), "events": ["approval.blocked"]},
            headers=headers,
        ),
        client.delete("/api/subscriptions/abc", headers=headers),
    ):
        assert resp.status_code == 401 and resp.json["reason"] == reason
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert subscription_rows(config) == []


def test_api_without_tokens_or_entra_fails_closed(
    sqlite_url: str, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    config = make_config(sqlite_url, tmp_path, **settings(receiver, **{"api.tokens": []}))
    resp = subscribe(create_app(config).test_client(), receiver.url())
    assert resp.status_code == 503 and resp.json["reason"] == "not_configured"


def test_api_accepts_an_entra_app_token_and_refuses_a_bad_one(
    sqlite_url: str, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    key = RsaKey.generate("kid-api")
    with JwksServer() as jwks:
        jwks.set_keys([key])
        config = make_config(
            sqlite_url,
            tmp_path,
            **settings(receiver),
            **{
                "power_automate.entra_tenant_id": TENANT,
                "power_automate.entra_audiences": [API_CLIENT_ID],
                "power_automate.entra_allowed_client_ids": [FLOW_CLIENT_ID],
                "power_automate.entra_required_role": ROLE,
                "power_automate.entra_jwks_url": jwks.url(TENANT),
                "api.entra_required_role": "OnRecord.Api",
            },
        )
        client = create_app(config).test_client()
        tokens = TokenFactory(
            key, tenant_id=TENANT, audience=API_CLIENT_ID, client_id=FLOW_CLIENT_ID, role="OnRecord.Api"
        )
        ok = subscribe(client, receiver.url(), Authorization=f"Bearer {tokens.v2()}")
        assert (
            ok.status_code == 201
            and subscription_rows(config)[0].created_by == f"entra:{TENANT}/{FLOW_CLIENT_ID}"
        )
        hooks_role = subscribe(client, receiver.url(), Authorization=f"Bearer {tokens.v2(roles=[ROLE])}")
        assert hooks_role.status_code == 401 and hooks_role.json["reason"] == "missing_role"


# -- delivery -----------------------------------------------------------------------------------


def test_subscriber_receives_the_notification_as_json(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    assert subscribe(client, receiver.url(), ["approval.blocked"]).status_code == 201
    assert subscribe(client, receiver.url("/other"), ["leader.champion"]).status_code == 201
    row_id = notify(config, reason="approved by e-mail, not through the form")
    dispatch(config)
    (got,) = receiver.wait_for(1)
    assert got.path.startswith("/workflows/abc/triggers/manual/run?") and "sig=SECRETSIG" in got.path
    assert got.headers["Host"] == f"localhost:{receiver.port}"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-OnRecord-Topic"] == "approval.blocked"
    body = got.json()
    assert body["id"] == str(row_id) and body["topic"] == "approval.blocked"
    assert body["key"] == "Opportunity/0065g00000AbCdEAAV" and body["occurred_at"].endswith("Z")
    assert body["data"]["reason"] == "approved by e-mail, not through the form"
    assert receiver.requests("/other") == []  # subscribed to another topic
    assert outbox_row(config, row_id).status == "sent"


def test_connection_goes_to_the_vetted_address_not_a_second_lookup(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    # callback.test does not exist in DNS: the delivery can only succeed by connecting to the
    # address resolved (and vetted) once, with TLS name and Host of the name.
    assert subscribe(client, receiver.url(host="callback.test")).status_code == 201
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    row_id = notify(config)
    dispatch(config, CallbackNotifier(get_engine(config.storage.url), config, resolver=resolver))
    (got,) = receiver.wait_for(1)
    assert lookups == ["callback.test"]
    assert got.headers["Host"] == f"callback.test:{receiver.port}"
    assert outbox_row(config, row_id).status == "sent"


def test_private_address_is_refused_at_delivery_without_the_relax_setting(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    assert subscribe(client, receiver.url()).status_code == 201  # localhost: only DNS tells
    strict = config.model_copy(
        update={"api": config.api.model_copy(update={"callback_allow_private_addresses": False})}
    )
    row_id = notify(config)
    dispatch(config, CallbackNotifier(get_engine(config.storage.url), strict))
    row = outbox_row(config, row_id)
    assert row.status == "dead" and "not_public" in row.last_error
    assert receiver.requests() == []


def test_host_no_longer_allowed_is_refused_at_delivery(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    assert subscribe(client, receiver.url()).status_code == 201
    narrowed = config.model_copy(
        update={"api": config.api.model_copy(update={"callback_hosts": ["*.logic.azure.com"]})}
    )
    row_id = notify(config)
    dispatch(config, CallbackNotifier(get_engine(config.storage.url), narrowed))
    row = outbox_row(config, row_id)
    assert row.status == "dead" and "host_not_allowed" in row.last_error
    assert receiver.requests() == []


def test_redirecting_callback_is_not_followed_and_counts_as_a_failure(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    receiver.respond("/workflows/abc/triggers/manual/run", 302, {"Location": receiver.url("/redirected")})
    assert subscribe(client, receiver.url()).status_code == 201
    row_id = notify(config)
    dispatch(config)
    assert len(receiver.requests("/workflows/abc/triggers/manual/run")) == 1
    assert receiver.requests("/redirected") == []
    row = outbox_row(config, row_id)
    assert row.status == "dead" and "302" in row.last_error and "SECRETSIG" not in row.last_error


def test_failing_callback_is_retried_without_repeating_the_other_subscriber(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    receiver.respond("/flaky", 503)
    assert subscribe(client, receiver.url("/flaky")).status_code == 201
    assert subscribe(client, receiver.url("/steady")).status_code == 201
    row_id = notify(config)
    dispatch(config)
    row = outbox_row(config, row_id)
    assert (row.status, row.attempts) == ("pending", 1) and "503" in row.last_error
    receiver.respond("/flaky", 200)
    make_due(config, row_id)
    dispatch(config)
    assert outbox_row(config, row_id).status == "sent"
    assert len(receiver.requests("/flaky")) == 2
    assert len(receiver.requests("/steady")) == 1


def test_failing_callback_is_called_once_per_pass_not_once_per_notification(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    receiver.respond("/workflows/abc/triggers/manual/run", 429)
    assert subscribe(client, receiver.url()).status_code == 201
    rows = [notify(config) for _ in range(3)]
    dispatch(config)
    assert len(receiver.requests()) == 1
    assert [outbox_row(config, r).status for r in rows] == ["pending"] * 3


@pytest.mark.parametrize("status", [404, 410])
def test_callback_of_a_deleted_trigger_removes_its_subscription(
    client: FlaskClient, config: Config, receiver: CallbackReceiver, status: int
) -> None:
    receiver.respond("/workflows/abc/triggers/manual/run", status)
    assert subscribe(client, receiver.url()).status_code == 201
    row_id = notify(config)
    dispatch(config)
    assert subscription_rows(config) == []
    assert outbox_row(config, row_id).status == "sent"


def test_other_client_error_is_not_retried(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    receiver.respond("/workflows/abc/triggers/manual/run", 400)
    assert subscribe(client, receiver.url()).status_code == 201
    row_id = notify(config)
    dispatch(config)
    row = outbox_row(config, row_id)
    assert row.status == "dead" and "400" in row.last_error
    assert len(subscription_rows(config)) == 1


def test_callbacks_encrypted_with_a_retired_key_still_deliver_after_rotation(
    sqlite_url: str, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    old = make_config(sqlite_url, tmp_path, **settings(receiver, **{"api.callback_key": [OLD_CALLBACK_KEY]}))
    assert subscribe(create_app(old).test_client(), receiver.url()).status_code == 201
    rotated = make_config(
        sqlite_url, tmp_path, **settings(receiver, **{"api.callback_key": [CALLBACK_KEY, OLD_CALLBACK_KEY]})
    )
    row_id = notify(rotated)
    dispatch(rotated)
    receiver.wait_for(1)
    assert outbox_row(rotated, row_id).status == "sent"


def test_notification_before_the_subscription_is_not_delivered_to_it(
    client: FlaskClient, config: Config, receiver: CallbackReceiver
) -> None:
    row_id = notify(config)
    assert subscribe(client, receiver.url()).status_code == 201
    dispatch(config)
    assert outbox_row(config, row_id).status == "sent" and receiver.requests() == []


def test_migration_creates_the_tables_the_code_uses(config: Config) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from plugin.storage import metadata

    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if "subscription" in str(d)] == []
