"""Public URLs behind a proxy or a path prefix: OpenAPI host/scheme/basePath/servers and Location.

api.public_url wins when set (its path is the basePath); otherwise the request's scheme, host and
prefix, where X-Forwarded-* count only from server.trusted_proxy_hops proxies (0: never).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from plugin.app import create_app
from plugin.openapi import openapi3, swagger2
from tests.conftest import make_config
from tests.connectors.power_automate.support import API_TOKEN, CALLBACK_KEY, CallbackReceiver

FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "gw.contoso.com:8443",
    "X-Forwarded-Prefix": "/onrecord",
    "X-Forwarded-For": "203.0.113.7",
}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[CallbackReceiver]:
    with CallbackReceiver(tmp_path / "tls") as r:
        yield r


def client(tmp_path: Path, sqlite_url: str, receiver: CallbackReceiver, **overrides: Any) -> FlaskClient:
    values: dict[str, Any] = {
        "api.tokens": [API_TOKEN],
        "api.callback_key": [CALLBACK_KEY],
        "api.callback_hosts": [f"localhost:{receiver.port}"],
        "api.callback_allow_private_addresses": True,
        "api.callback_ca_bundle": str(receiver.ca_file),
        **overrides,
    }
    return create_app(make_config(sqlite_url, tmp_path, **values)).test_client()


def location(c: FlaskClient, receiver: CallbackReceiver, headers: dict[str, str]) -> str:
    resp = c.post(
        "/api/subscriptions",
        json={"callback_url": receiver.url(), "events": ["approval.blocked"]},
        headers={"Authorization": f"Bearer {API_TOKEN}", **headers},
    )
    assert resp.status_code == 201, resp.json
    value: str = resp.headers["Location"]
    assert value.endswith(f"/api/subscriptions/{resp.json['id']}")
    return value.removesuffix(f"/api/subscriptions/{resp.json['id']}")


def test_documents_carry_the_public_urls_path() -> None:
    v2 = swagger2("https://gw.contoso.com/onrecord")
    assert (v2["host"], v2["basePath"], v2["schemes"]) == ("gw.contoso.com", "/onrecord", ["https"])
    assert openapi3("https://gw.contoso.com/onrecord")["servers"] == [
        {"url": "https://gw.contoso.com/onrecord"}
    ]
    v2 = swagger2("http://localhost:8000")
    assert (v2["host"], v2["basePath"], v2["schemes"]) == ("localhost:8000", "/", ["http"])


def test_public_url_with_a_path_is_used_everywhere(
    tmp_path: Path, sqlite_url: str, receiver: CallbackReceiver
) -> None:
    c = client(
        tmp_path,
        sqlite_url,
        receiver,
        **{"api.public_url": "https://gw.contoso.com/onrecord/", "server.trusted_proxy_hops": 1},
    )
    v2 = c.get("/openapi-v2.json", headers=FORWARDED).json
    assert (v2["host"], v2["basePath"], v2["schemes"]) == ("gw.contoso.com", "/onrecord", ["https"])
    assert c.get("/openapi.json").json["servers"] == [{"url": "https://gw.contoso.com/onrecord"}]
    assert location(c, receiver, FORWARDED) == "https://gw.contoso.com/onrecord"


def test_forwarded_headers_are_honoured_from_one_trusted_hop(
    tmp_path: Path, sqlite_url: str, receiver: CallbackReceiver
) -> None:
    c = client(tmp_path, sqlite_url, receiver, **{"server.trusted_proxy_hops": 1})
    v2 = c.get("/openapi-v2.json", headers=FORWARDED).json
    assert (v2["host"], v2["basePath"], v2["schemes"]) == ("gw.contoso.com:8443", "/onrecord", ["https"])
    v3 = c.get("/openapi.json", headers=FORWARDED).json
    assert v3["servers"] == [{"url": "https://gw.contoso.com:8443/onrecord"}]
    assert location(c, receiver, FORWARDED) == "https://gw.contoso.com:8443/onrecord"
    # Without the headers (a direct request), the request's own address as before.
    assert c.get("/openapi.json").json["servers"] == [{"url": "http://localhost"}]


def test_only_the_nearest_hops_values_count(
    tmp_path: Path, sqlite_url: str, receiver: CallbackReceiver
) -> None:
    # A client's own X-Forwarded-Host, appended to by the one trusted proxy: the proxy's value wins.
    c = client(tmp_path, sqlite_url, receiver, **{"server.trusted_proxy_hops": 1})
    headers = {**FORWARDED, "X-Forwarded-Host": "evil.example, gw.contoso.com"}
    assert c.get("/openapi-v2.json", headers=headers).json["host"] == "gw.contoso.com"


def test_forwarded_headers_are_ignored_by_default(
    tmp_path: Path, sqlite_url: str, receiver: CallbackReceiver
) -> None:
    c = client(tmp_path, sqlite_url, receiver)
    v2 = c.get("/openapi-v2.json", headers=FORWARDED).json
    assert (v2["host"], v2["basePath"], v2["schemes"]) == ("localhost", "/", ["http"])
    assert c.get("/openapi.json", headers=FORWARDED).json["servers"] == [{"url": "http://localhost"}]
    assert location(c, receiver, FORWARDED) == "http://localhost"


@pytest.mark.slow
def test_under_gunicorn_forwarded_headers_from_loopback_are_ignored_without_trusted_hops(
    sqlite_url: str, tmp_path: Path
) -> None:
    # gunicorn itself trusts X-Forwarded-Proto from 127.0.0.1 unless told not to: with
    # trusted_proxy_hops = 0 nobody may make OnRecord advertise another scheme or host.
    import requests

    from tests.conftest import TEST_SECRET
    from tests.support.processes import Server, onrecord_env

    server = Server(onrecord_env(sqlite_url, tmp_path / "var", TEST_SECRET), tmp_path / "serve.log")
    try:
        doc = requests.get(server.url + "/openapi-v2.json", headers=FORWARDED, timeout=30).json()
    finally:
        server.stop()
    assert doc["schemes"] == ["http"] and doc["host"] == f"127.0.0.1:{server.port}"
    assert doc["basePath"] == "/"
