"""The SSRF guard on subscriber callbacks: which URLs, hosts and addresses may be called."""

from __future__ import annotations

import pytest

from connectors.power_automate.callbacks import (
    CallbackPolicy,
    CallbackRefused,
    check_url,
    host_allowed,
    is_public_address,
    vetted_addresses,
)
from plugin.config import DEFAULT_CALLBACK_HOSTS

POLICY = CallbackPolicy(hosts=DEFAULT_CALLBACK_HOSTS)
LOGIC_APPS = (
    "https://prod-03.westus.logic.azure.com:443/workflows/c4ed9335bc864140a11f4508d19acea3/triggers/manual/run"
    "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=abc"
)
POWER_PLATFORM = (
    "https://0f1e2d3c4b5a49688776.09.environment.api.powerplatform.com:443/powerautomate/automations/direct"
    "/workflows/86ffea6392fe4f3f9555f5e8f9b1f06e/triggers/manual/paths/invoke?api-version=1&sig=abc"
)


@pytest.mark.parametrize("url", [LOGIC_APPS, POWER_PLATFORM])
def test_power_platform_and_logic_apps_callbacks_are_allowed_by_default(url: str) -> None:
    target = check_url(url, POLICY)
    assert target.port == 443 and "sig=abc" in target.path and target.host_header == target.host


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://prod-03.westus.logic.azure.com/workflows/x", "not_https"),
        ("ftp://prod-03.westus.logic.azure.com/x", "not_https"),
        ("https://evil.example.com/workflows/x", "host_not_allowed"),
        ("https://logic.azure.com/workflows/x", "host_not_allowed"),  # the wildcard needs a subdomain
        ("https://prod-03.westus.logic.azure.com.evil.example/x", "host_not_allowed"),
        ("https://evillogic.azure.com/x", "host_not_allowed"),
        ("https://prod-03.westus.logic.azure.com:8443/workflows/x", "host_not_allowed"),  # port not allowed
        ("https://user:pw@prod-03.westus.logic.azure.com/x", "bad_url"),
        ("https://127.0.0.1/x", "host_not_allowed"),
        ("https:///x", "bad_url"),
        ("https://prod-03.westus.logic.azure.com:99999/x", "bad_url"),
        ("not a url", "not_https"),
        ("https://a.logic.azure.com/" + "x" * 5000, "bad_url"),
    ],
)
def test_callback_url_outside_the_policy_is_refused(url: str, reason: str) -> None:
    with pytest.raises(CallbackRefused) as info:
        check_url(url, POLICY)
    assert info.value.reason == reason
    assert "sig" not in info.value.message and url not in info.value.message


def test_private_address_literal_is_refused_even_when_allow_listed() -> None:
    policy = CallbackPolicy(hosts=("127.0.0.1:8443", "10.1.2.3"))
    for url in ("https://127.0.0.1:8443/x", "https://10.1.2.3/x"):
        with pytest.raises(CallbackRefused) as info:
            check_url(url, policy)
        assert info.value.reason == "not_public"
    relaxed = CallbackPolicy(hosts=("127.0.0.1:8443",), allow_private_addresses=True)
    assert check_url("https://127.0.0.1:8443/x", relaxed).host == "127.0.0.1"


def test_host_patterns_name_their_port() -> None:
    assert host_allowed("localhost", 8443, ("localhost:8443",))
    assert not host_allowed("localhost", 443, ("localhost:8443",))
    assert host_allowed("a.b.logic.azure.com", 443, ("*.logic.azure.com",))
    assert not host_allowed("127.0.0.1", 443, ("*.0.0.1",))  # wildcards never match an address


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "0.0.0.0",  # noqa: S104 - an address to refuse, not to bind
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2001:db8::1",  # documentation
    ],
)
def test_non_public_addresses_are_recognised(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize(
    "address", ["20.190.151.7", "13.107.42.14", "2603:1030:b:3::48", "::ffff:20.190.151.7"]
)
def test_public_addresses_are_recognised(address: str) -> None:
    assert is_public_address(address)


def test_a_name_resolving_to_any_private_address_is_refused() -> None:
    target = check_url(LOGIC_APPS, POLICY)
    with pytest.raises(CallbackRefused) as info:
        vetted_addresses(target, POLICY, lambda host, port: ["20.190.151.7", "10.0.0.7"])
    assert info.value.reason == "not_public"
    assert vetted_addresses(target, POLICY, lambda host, port: ["20.190.151.7", "20.190.151.7"]) == [
        "20.190.151.7"
    ]
