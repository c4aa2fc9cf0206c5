"""Entra ID bearer-token verification against a real JWKS endpoint on the loopback interface."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.power_automate.entra import (
    REASONS,
    ApiKeyVerifier,
    AuthRejected,
    Caller,
    EntraSettings,
    EntraVerifier,
)
from tests.support.jwks_server import JwksServer, RsaKey, TokenFactory

TENANT = "4f8d2c1a-6b3e-4a5d-9c7f-0e1d2c3b4a59"
OTHER_TENANT = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"
API_CLIENT_ID = "6e4f2a1b-3c5d-4e7f-8a9b-0c1d2e3f4a5b"  # the OnRecord API's app registration
API_URI = "api://onrecord.contoso.com"
FLOW_CLIENT_ID = "11112222-3333-4444-8555-666677778888"  # the app Power Automate authenticates as
ROLE = "OnRecord.Events.Write"


@pytest.fixture(scope="module")
def keys() -> dict[str, RsaKey]:
    return {name: RsaKey.generate(f"kid-{name}") for name in ("current", "next", "attacker")}


@pytest.fixture
def server(keys: dict[str, RsaKey]) -> Iterator[JwksServer]:
    with JwksServer() as srv:
        srv.set_keys([keys["current"]])
        yield srv


def make_settings(server: JwksServer, **overrides: Any) -> EntraSettings:
    values: dict[str, Any] = {
        "tenant_id": TENANT,
        "audiences": (API_CLIENT_ID, API_URI),
        "allowed_client_ids": (FLOW_CLIENT_ID,),
        "required_role": ROLE,
        "jwks_url": server.url(TENANT),
    }
    values.update(overrides)
    return EntraSettings(**values)


@pytest.fixture
def verifier(server: JwksServer) -> EntraVerifier:
    return EntraVerifier(make_settings(server))


def factory(key: RsaKey, **overrides: Any) -> TokenFactory:
    values: dict[str, Any] = {
        "tenant_id": TENANT,
        "audience": API_CLIENT_ID,
        "client_id": FLOW_CLIENT_ID,
        "role": ROLE,
    }
    values.update(overrides)
    return TokenFactory(key, **values)


@pytest.fixture
def tokens(keys: dict[str, RsaKey]) -> TokenFactory:
    return factory(keys["current"])


def bearer(token: str) -> str:
    return f"Bearer {token}"


def rejected(verifier: EntraVerifier, header: str | None) -> str:
    with pytest.raises(AuthRejected) as info:
        verifier.verify(header)
    assert info.value.reason in REASONS
    return info.value.reason


# -- accepted -----------------------------------------------------------------------------------


def test_v2_token_accepted_after_real_http_fetch(
    verifier: EntraVerifier, server: JwksServer, tokens: TokenFactory
) -> None:
    caller = verifier.verify(bearer(tokens.v2()))
    assert isinstance(caller, Caller)
    assert caller.app_id == FLOW_CLIENT_ID
    assert caller.tenant_id == TENANT
    assert caller.token_version == "2.0"
    assert ROLE in caller.roles
    assert caller.token_id
    assert caller.sender == f"entra:{TENANT}/{FLOW_CLIENT_ID}"
    assert server.hits == 1
    assert server.paths == [f"/{TENANT}/discovery/v2.0/keys"]


def test_v1_token_accepted_with_app_id_uri_audience(verifier: EntraVerifier, keys: dict[str, RsaKey]) -> None:
    caller = verifier.verify(bearer(factory(keys["current"], audience=API_URI).v1()))
    assert caller.app_id == FLOW_CLIENT_ID
    assert caller.token_version == "1.0"


def test_keys_are_cached(verifier: EntraVerifier, server: JwksServer, tokens: TokenFactory) -> None:
    for _ in range(5):
        verifier.verify(bearer(tokens.v2()))
    assert server.hits == 1


def test_scheme_is_case_insensitive(verifier: EntraVerifier, tokens: TokenFactory) -> None:
    assert verifier.verify("bearer  " + tokens.v2()).app_id == FLOW_CLIENT_ID


def test_guid_case_is_normalised(server: JwksServer, tokens: TokenFactory) -> None:
    settings = make_settings(server, tenant_id=TENANT.upper(), allowed_client_ids=(FLOW_CLIENT_ID.upper(),))
    assert EntraVerifier(settings).verify(bearer(tokens.v2())).tenant_id == TENANT


def test_cache_expires_after_ttl(server: JwksServer, tokens: TokenFactory) -> None:
    offset = [0.0]
    verifier = EntraVerifier(
        make_settings(server, jwks_cache_ttl_seconds=600), clock=lambda: time.time() + offset[0]
    )
    verifier.verify(bearer(tokens.v2(exp=int(time.time()) + 7200)))
    offset[0] = 601
    verifier.verify(bearer(tokens.v2(exp=int(time.time()) + 7200)))
    assert server.hits == 2


def test_stale_keys_used_while_refresh_fails(server: JwksServer, tokens: TokenFactory) -> None:
    offset = [0.0]
    verifier = EntraVerifier(
        make_settings(server, jwks_cache_ttl_seconds=600, jwks_max_stale_seconds=3600),
        clock=lambda: time.time() + offset[0],
    )
    verifier.verify(bearer(tokens.v2(exp=int(time.time()) + 86_400)))
    server.fail_with(503)
    offset[0] = 700  # past the TTL, within max stale
    verifier.verify(bearer(tokens.v2(exp=int(time.time()) + 86_400)))
    offset[0] = 4000  # beyond max stale
    assert rejected(verifier, bearer(tokens.v2(exp=int(time.time()) + 86_400))) == "jwks_unavailable"


# -- time ---------------------------------------------------------------------------------------


def test_expired_beyond_leeway_rejected(verifier: EntraVerifier, tokens: TokenFactory) -> None:
    now = int(time.time())
    token = tokens.v2(iat=now - 3800, nbf=now - 3800, exp=now - 130)
    assert rejected(verifier, bearer(token)) == "expired"


def test_expired_within_leeway_accepted(verifier: EntraVerifier, tokens: TokenFactory) -> None:
    now = int(time.time())
    token = tokens.v2(iat=now - 3660, nbf=now - 3660, exp=now - 60)
    assert verifier.verify(bearer(token)).app_id == FLOW_CLIENT_ID


def test_not_yet_valid_rejected(verifier: EntraVerifier, tokens: TokenFactory) -> None:
    now = int(time.time())
    assert rejected(verifier, bearer(tokens.v2(nbf=now + 600, iat=now))) == "not_yet_valid"
    assert rejected(verifier, bearer(tokens.v2(iat=now + 600, nbf=now))) == "not_yet_valid"


def test_nbf_within_leeway_accepted(verifier: EntraVerifier, tokens: TokenFactory) -> None:
    now = int(time.time())
    assert verifier.verify(bearer(tokens.v2(nbf=now + 60, iat=now + 60))).app_id == FLOW_CLIENT_ID


def test_missing_or_bad_exp_rejected(verifier: EntraVerifier, tokens: TokenFactory) -> None:
    assert rejected(verifier, bearer(tokens.v2(exp=None))) == "malformed_token"
    assert rejected(verifier, bearer(tokens.v2(exp="tomorrow"))) == "malformed_token"


# -- who ----------------------------------------------------------------------------------------


def test_wrong_audience_rejected(verifier: EntraVerifier, keys: dict[str, RsaKey]) -> None:
    token = factory(keys["current"], audience="https://graph.microsoft.com").v2()
    assert rejected(verifier, bearer(token)) == "wrong_audience"
    token = factory(keys["current"], audience="00000000-0000-0000-0000-000000000000").v1()
    assert rejected(verifier, bearer(token)) == "wrong_audience"


def test_wrong_tenant_rejected(verifier: EntraVerifier, keys: dict[str, RsaKey]) -> None:
    # a token from another tenant (signed by a key the JWKS serves: multi-tenant keys are shared)
    other = factory(keys["current"], tenant_id=OTHER_TENANT)
    assert rejected(verifier, bearer(other.v2())) == "wrong_tenant"
    assert rejected(verifier, bearer(other.v1())) == "wrong_tenant"
    # our issuer, someone else's tid
    assert rejected(verifier, bearer(factory(keys["current"]).v2(tid=OTHER_TENANT))) == "wrong_tenant"


@pytest.mark.parametrize(
    "issuer",
    [
        f"https://sts.windows.net/{OTHER_TENANT}/",
        f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0",
        "https://login.microsoftonline.com/common/v2.0",
        f"https://sts.windows.net/{TENANT}",  # no trailing slash
        f"https://login.microsoftonline.com/{TENANT}/",
        f"https://evil.example/{TENANT}/v2.0",
    ],
)
def test_wrong_issuer_rejected(verifier: EntraVerifier, tokens: TokenFactory, issuer: str) -> None:
    assert rejected(verifier, bearer(tokens.v2(iss=issuer))) == "wrong_issuer"


def test_issuer_and_version_must_agree(verifier: EntraVerifier, tokens: TokenFactory) -> None:
    assert rejected(verifier, bearer(tokens.v2(ver="1.0"))) == "wrong_issuer"
    assert rejected(verifier, bearer(tokens.v1(ver="2.0"))) == "wrong_issuer"


def test_missing_role_rejected(verifier: EntraVerifier, tokens: TokenFactory) -> None:
    assert rejected(verifier, bearer(tokens.v2(roles=["OnRecord.Read"]))) == "missing_role"
    assert rejected(verifier, bearer(tokens.v2(roles=None))) == "missing_role"
    assert rejected(verifier, bearer(tokens.v2(roles=ROLE))) == "missing_role"  # a string, not a list


def test_caller_not_allow_listed_rejected(verifier: EntraVerifier, keys: dict[str, RsaKey]) -> None:
    stranger = factory(keys["current"], client_id="99998888-7777-4666-8555-444433332222")
    assert rejected(verifier, bearer(stranger.v2())) == "caller_not_allowed"
    assert rejected(verifier, bearer(stranger.v1())) == "caller_not_allowed"


def test_client_claim_follows_token_version(verifier: EntraVerifier, tokens: TokenFactory) -> None:
    # v2 tokens identify the caller by azp, v1 by appid: the other claim does not count
    assert rejected(verifier, bearer(tokens.v2(azp=None, appid=FLOW_CLIENT_ID))) == "caller_not_allowed"
    assert rejected(verifier, bearer(tokens.v1(appid=None, azp=FLOW_CLIENT_ID))) == "caller_not_allowed"


def test_delegated_user_token_rejected(verifier: EntraVerifier, tokens: TokenFactory) -> None:
    assert rejected(verifier, bearer(tokens.v2(scp="Events.Write"))) == "caller_not_allowed"
    assert rejected(verifier, bearer(tokens.v2(idtyp="user"))) == "caller_not_allowed"
    assert verifier.verify(bearer(tokens.v2(idtyp="app"))).app_id == FLOW_CLIENT_ID


# -- algorithms and keys ------------------------------------------------------------------------


def test_alg_none_rejected_before_key_use(
    verifier: EntraVerifier, server: JwksServer, tokens: TokenFactory
) -> None:
    assert rejected(verifier, bearer(tokens.alg_none())) == "bad_algorithm"
    assert server.hits == 0


def test_hs256_signed_with_public_key_rejected(
    verifier: EntraVerifier, server: JwksServer, tokens: TokenFactory
) -> None:
    token = tokens.hs256_with_public_key()
    assert rejected(verifier, bearer(token)) == "bad_algorithm"
    assert server.hits == 0
    # and even once keys are cached, the alg check still comes first
    verifier.verify(bearer(tokens.v2()))
    assert rejected(verifier, bearer(token)) == "bad_algorithm"


@pytest.mark.parametrize("alg", ["RS512", "PS256", "ES256", "HS512", "rs256", "EdDSA", ""])
def test_other_algorithms_rejected(verifier: EntraVerifier, tokens: TokenFactory, alg: str) -> None:
    assert rejected(verifier, bearer(tokens.with_alg(alg))) == "bad_algorithm"


def test_wrong_key_with_known_kid_is_bad_signature(
    verifier: EntraVerifier, keys: dict[str, RsaKey], tokens: TokenFactory
) -> None:
    forged = tokens.sign(tokens.v2_claims(), key=keys["attacker"], kid=keys["current"].kid)
    assert rejected(verifier, bearer(forged)) == "bad_signature"
    assert rejected(verifier, bearer(tokens.tampered(roles=[ROLE, "Admin"]))) == "bad_signature"


def test_unknown_kid_refetched_once_then_rejected(
    verifier: EntraVerifier, server: JwksServer, keys: dict[str, RsaKey], tokens: TokenFactory
) -> None:
    verifier.verify(bearer(tokens.v2()))
    assert server.hits == 1
    stranger = factory(keys["attacker"])
    assert rejected(verifier, bearer(stranger.v2())) == "unknown_key"
    assert server.hits == 2  # one refetch
    for _ in range(20):  # a flood of unknown kids does not hammer the endpoint
        token = stranger.sign(stranger.v2_claims(), kid=f"random-{_}")
        assert rejected(verifier, bearer(token)) == "unknown_key"
    assert server.hits == 2


def test_unknown_kid_on_cold_cache_fetches_once(
    verifier: EntraVerifier, server: JwksServer, keys: dict[str, RsaKey]
) -> None:
    assert rejected(verifier, bearer(factory(keys["attacker"]).v2())) == "unknown_key"
    assert server.hits == 1


def test_rotated_key_accepted_after_one_refetch(
    verifier: EntraVerifier, server: JwksServer, keys: dict[str, RsaKey], tokens: TokenFactory
) -> None:
    verifier.verify(bearer(tokens.v2()))
    server.set_keys([keys["current"], keys["next"]])  # Entra publishes the new key, then signs with it
    caller = verifier.verify(bearer(factory(keys["next"]).v2()))
    assert caller.app_id == FLOW_CLIENT_ID
    assert server.hits == 2
    verifier.verify(bearer(tokens.v2()))  # the old key still works while published
    verifier.verify(bearer(factory(keys["next"]).v2()))
    assert server.hits == 2


def test_unknown_kid_refetch_allowed_again_after_interval(
    server: JwksServer, keys: dict[str, RsaKey], tokens: TokenFactory
) -> None:
    offset = [0.0]
    verifier = EntraVerifier(
        make_settings(server, unknown_kid_refetch_interval_seconds=60),
        clock=lambda: time.time() + offset[0],
    )
    verifier.verify(bearer(tokens.v2(exp=int(time.time()) + 7200)))
    stranger = factory(keys["attacker"])
    assert rejected(verifier, bearer(stranger.v2())) == "unknown_key"
    assert rejected(verifier, bearer(stranger.v2())) == "unknown_key"
    assert server.hits == 2
    offset[0] = 61
    server.set_keys([keys["current"], keys["attacker"]])
    assert verifier.verify(bearer(stranger.v2(exp=int(time.time()) + 7200))).app_id == FLOW_CLIENT_ID
    assert server.hits == 3


def test_jwks_server_down(server: JwksServer, tokens: TokenFactory) -> None:
    server.fail_with(503)
    assert rejected(EntraVerifier(make_settings(server)), bearer(tokens.v2())) == "jwks_unavailable"


def test_jwks_nobody_listening(tokens: TokenFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = EntraSettings(
        tenant_id=TENANT,
        audiences=(API_CLIENT_ID,),
        allowed_client_ids=(FLOW_CLIENT_ID,),
        required_role=ROLE,
        jwks_url=f"http://127.0.0.1:{port}/keys",
        http_timeout_seconds=2,
    )
    assert rejected(EntraVerifier(settings), bearer(tokens.v2())) == "jwks_unavailable"


@pytest.mark.parametrize(
    "document",
    [{"keys": []}, {"keys": "nope"}, [], {"keys": [{"kty": "oct", "kid": "kid-current", "k": "c2VjcmV0"}]}],
)
def test_jwks_without_usable_keys(server: JwksServer, tokens: TokenFactory, document: Any) -> None:
    server.set_document(document)
    assert rejected(EntraVerifier(make_settings(server)), bearer(tokens.v2())) == "jwks_unavailable"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_weak_rsa_key_in_jwks_ignored(server: JwksServer, keys: dict[str, RsaKey]) -> None:
    weak = RsaKey.generate("kid-weak", bits=1024)
    server.set_keys([keys["current"], weak])
    assert rejected(EntraVerifier(make_settings(server)), bearer(factory(weak).v2())) == "unknown_key"


def test_failed_fetch_backs_off(server: JwksServer, tokens: TokenFactory) -> None:
    server.fail_with(500)
    verifier = EntraVerifier(make_settings(server, jwks_retry_after_failure_seconds=30))
    for _ in range(5):
        assert rejected(verifier, bearer(tokens.v2())) == "jwks_unavailable"
    assert server.hits == 1


def test_injected_fetch(tokens: TokenFactory, keys: dict[str, RsaKey]) -> None:
    calls: list[str] = []

    def fetch(url: str) -> Any:
        calls.append(url)
        return {"keys": [keys["current"].jwk()]}

    settings = EntraSettings(
        tenant_id=TENANT,
        audiences=(API_CLIENT_ID,),
        allowed_client_ids=(FLOW_CLIENT_ID,),
        required_role=ROLE,
    )
    assert EntraVerifier(settings, fetch=fetch).verify(bearer(tokens.v2())).app_id == FLOW_CLIENT_ID
    assert calls == [f"https://login.microsoftonline.com/{TENANT}/discovery/v2.0/keys"]

    def broken(url: str) -> Any:
        raise ConnectionResetError("boom")

    assert rejected(EntraVerifier(settings, fetch=broken), bearer(tokens.v2())) == "jwks_unavailable"


# -- garbage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   ", "Basic dXNlcjpwYXNz", "Bearer", "Token abc.def.ghi"])
def test_missing_token(verifier: EntraVerifier, header: str | None) -> None:
    assert rejected(verifier, header) == "missing_token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b",
        "a.b.c.d",
        "a.b.c",
        "!!!.???.***",
        "x" * 20_000,
        _b64(b"[1,2]") + "." + _b64(b"{}") + ".sig",
        _b64(b"not json") + "." + _b64(b"{}") + ".sig",
        _b64(json.dumps({"alg": "RS256"}).encode()) + "." + _b64(b"{}") + ".c2ln",  # no kid
        _b64(json.dumps({"alg": "RS256", "kid": 5}).encode()) + "." + _b64(b"{}") + ".c2ln",
    ],
)
def test_malformed_token(verifier: EntraVerifier, token: str) -> None:
    assert rejected(verifier, bearer(token)) in {"malformed_token", "bad_algorithm"}


def test_payload_not_json_with_valid_signature_is_malformed(
    verifier: EntraVerifier, keys: dict[str, RsaKey]
) -> None:
    import jwt as pyjwt

    token = pyjwt.api_jws.encode(
        b"not json", keys["current"].private_pem, algorithm="RS256", headers={"kid": keys["current"].kid}
    )
    assert rejected(verifier, bearer(token)) == "malformed_token"


def test_auth_rejected_has_reason_and_message() -> None:
    error = AuthRejected("expired", "token expired")
    assert (error.reason, error.message) == ("expired", "token expired")
    with pytest.raises(ValueError):
        AuthRejected("nope", "unknown reasons are a programming error")


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"tenant_id": "common"},
        {"tenant_id": "organizations"},
        {"allowed_client_ids": ()},
        {"allowed_client_ids": ("not-a-guid",)},
        {"audiences": ()},
        {"required_role": ""},
        {"jwks_url": "http://login.microsoftonline.com/x/discovery/v2.0/keys"},
        {"leeway_seconds": -1},
    ],
)
def test_settings_fail_closed(server: JwksServer, overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_settings(server, **overrides)


def test_settings_defaults(server: JwksServer) -> None:
    settings = EntraSettings(
        tenant_id=TENANT, audiences=(API_URI,), allowed_client_ids=(FLOW_CLIENT_ID,), required_role=ROLE
    )
    assert settings.jwks_url == f"https://login.microsoftonline.com/{TENANT}/discovery/v2.0/keys"
    assert settings.leeway_seconds == 120
    assert set(settings.issuers) == {
        f"https://sts.windows.net/{TENANT}/",
        f"https://login.microsoftonline.com/{TENANT}/v2.0",
    }


# -- API key ------------------------------------------------------------------------------------


def test_api_key_accepted() -> None:
    verifier = ApiKeyVerifier(["first-key-0123456789", "second-key-0123456789"])
    assert verifier.verify("second-key-0123456789") == "api_key:1"
    assert verifier.verify_headers({"X-OnRecord-Key": "first-key-0123456789"}) == "api_key:0"


@pytest.mark.parametrize("presented", ["wrong", "first-key-012345678", "first-key-0123456789 ", "ключ"])
def test_api_key_wrong_rejected(presented: str) -> None:
    with pytest.raises(AuthRejected) as info:
        ApiKeyVerifier(["first-key-0123456789"]).verify(presented)
    assert info.value.reason == "caller_not_allowed"


def test_api_key_missing_rejected() -> None:
    for presented in (None, ""):
        with pytest.raises(AuthRejected) as info:
            ApiKeyVerifier(["first-key-0123456789"]).verify(presented)
        assert info.value.reason == "missing_token"


@pytest.mark.parametrize("configured", [[], [""], ("", "")])
def test_api_key_fails_closed_without_keys(configured: list[str]) -> None:
    verifier = ApiKeyVerifier(configured)
    for presented in (None, "", "anything"):
        with pytest.raises(AuthRejected) as info:
            verifier.verify(presented)
        assert info.value.reason == "caller_not_allowed"
