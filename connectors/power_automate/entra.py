"""Authenticate Power Automate's HTTP action: Entra ID app-only bearer tokens, or a raw API key.

Power Automate's HTTP action with "Active Directory OAuth" (client credentials) sends
``Authorization: Bearer <JWT>``: an Entra ID access token, RS256-signed with one of the tenant's
keys published at ``https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys``.

Claims checked (Microsoft identity platform "Access token claims reference"):

* header ``alg`` must be exactly ``RS256`` (checked before any key is touched: ``none``, ``HS256``
  -- including HMAC keyed with our own RSA public key -- and everything else are refused);
  ``kid`` selects the key from the tenant's JWKS (cached; one rate-limited refetch on an unknown kid);
* ``iss``: v1.0 tokens ``https://sts.windows.net/{tid}/``, v2.0 tokens
  ``https://login.microsoftonline.com/{tid}/v2.0`` -- for the pinned tenant only; if ``ver`` is present
  it must agree with the issuer form;
* ``tid`` equals the pinned tenant (checked before ``iss``, so a foreign tenant's token reports
  ``wrong_tenant``);
* ``aud`` one of the configured audiences (v1 tokens may carry the App ID URI, v2 the client id);
* ``exp`` (required), ``nbf`` and ``iat`` (if present) with leeway;
* app-only: a token carrying ``scp`` (delegated, i.e. a user's token) or ``idtyp`` other than ``app``
  is refused as ``caller_not_allowed``;
* the required app role is in ``roles``;
* the calling application -- ``azp`` in v2.0 tokens, ``appid`` in v1.0 tokens -- is allow-listed.

Every failure raises :class:`AuthRejected` with a machine-readable ``reason``; nothing from PyJWT,
``json`` or ``requests`` escapes. ``jwks_unavailable`` means *we* could not check (answer 503 so the
flow retries), every other reason means the sender failed (401/403).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = [
    "API_KEY_HEADER",
    "REASONS",
    "ApiKeyVerifier",
    "AuthRejected",
    "Caller",
    "EntraSettings",
    "EntraVerifier",
    "JwksFetch",
    "fetch_jwks",
]

log = logging.getLogger(__name__)

REASONS: Final = frozenset(
    {
        "missing_token",
        "malformed_token",
        "bad_algorithm",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_tenant",
        "wrong_audience",
        "missing_role",
        "caller_not_allowed",
        "jwks_unavailable",
    }
)

API_KEY_HEADER: Final = "X-OnRecord-Key"

DEFAULT_JWKS_URL: Final = "https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys"
MAX_TOKEN_CHARS: Final = 16_384
MAX_JWKS_BYTES: Final = 512 * 1024
MIN_RSA_BITS: Final = 2048

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_LOOPBACK_HOSTS = frozenset({"localhost"})

# A fetch takes the JWKS URL and returns the decoded JSON document; it may raise anything.
JwksFetch = Callable[[str], Any]


class AuthRejected(Exception):
    """The request's credentials were refused. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown AuthRejected reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who called, as proven by a verified token."""

    app_id: str  # azp (v2.0) or appid (v1.0), lower case
    tenant_id: str  # tid, lower case
    roles: tuple[str, ...]
    token_id: str  # uti (Entra's jti), or jti, or "" if neither
    token_version: str  # "1.0" or "2.0"
    object_id: str | None = None  # oid: the calling service principal

    @property
    def sender(self) -> str:
        """The identity to record as ``Event.sender``."""
        return f"entra:{self.tenant_id}/{self.app_id}"


def _guid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value.strip())).lower()
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{what} must be a GUID, got {value!r}") from exc


@dataclass(frozen=True)
class EntraSettings:
    """How to check Entra ID tokens. Construction validates and fails closed on an empty allow-list."""

    tenant_id: str  # a GUID: the one tenant whose tokens are accepted ("common" etc. are refused)
    audiences: tuple[str, ...]  # the API's client id and/or App ID URI ("api://...")
    allowed_client_ids: tuple[str, ...]  # client (application) ids allowed to call: azp / appid
    required_role: str  # an app role defined on the API and granted to the caller
    jwks_url: str = ""  # default: DEFAULT_JWKS_URL for the tenant
    leeway_seconds: int = 120
    jwks_cache_ttl_seconds: int = 3600  # refresh the key set after this long
    jwks_max_stale_seconds: int = 86_400  # if a refresh fails, keep using cached keys this long
    unknown_kid_refetch_interval_seconds: int = 60  # at most one unknown-kid refetch per interval
    jwks_retry_after_failure_seconds: int = 5  # after a failed fetch, don't retry for this long
    http_timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenant_id", _guid(self.tenant_id, "tenant_id"))
        if isinstance(self.audiences, str):
            object.__setattr__(self, "audiences", (self.audiences,))
        if isinstance(self.allowed_client_ids, str):
            object.__setattr__(self, "allowed_client_ids", (self.allowed_client_ids,))
        audiences = tuple(a.strip() for a in self.audiences if a and a.strip())
        if not audiences:
            raise ValueError("audiences must name at least one audience (client id or App ID URI)")
        object.__setattr__(self, "audiences", audiences)
        clients = tuple(_guid(c, "allowed_client_ids entry") for c in self.allowed_client_ids)
        if not clients:
            raise ValueError("allowed_client_ids must name at least one client id (fail closed)")
        object.__setattr__(self, "allowed_client_ids", clients)
        if not self.required_role or not self.required_role.strip():
            raise ValueError("required_role must be set")
        if not self.jwks_url:
            object.__setattr__(self, "jwks_url", DEFAULT_JWKS_URL.format(tenant=self.tenant_id))
        parts = urlsplit(self.jwks_url)
        if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
            raise ValueError(f"jwks_url must be https (http only for loopback), got {self.jwks_url!r}")
        for name in (
            "leeway_seconds",
            "jwks_cache_ttl_seconds",
            "jwks_max_stale_seconds",
            "unknown_kid_refetch_interval_seconds",
            "jwks_retry_after_failure_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.http_timeout_seconds <= 0:
            raise ValueError("http_timeout_seconds must be > 0")

    @property
    def issuers(self) -> dict[str, str]:
        """Accepted issuers, mapped to the token version each implies."""
        return {
            f"https://sts.windows.net/{self.tenant_id}/": "1.0",
            f"https://login.microsoftonline.com/{self.tenant_id}/v2.0": "2.0",
        }


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_jwks(url: str, timeout: float = 5.0) -> Any:
    """Default fetch: GET the JWKS with requests (no redirects, bounded size), return parsed JSON."""
    with requests.get(
        url,
        timeout=timeout,
        allow_redirects=False,
        stream=True,
        headers={"Accept": "application/json"},
    ) as response:
        if response.status_code != 200:
            raise OSError(f"JWKS endpoint answered HTTP {response.status_code}")
        body = response.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
        if len(body) > MAX_JWKS_BYTES:
            raise OSError("JWKS document too large")
        return json.loads(body)


@dataclass
class _KeyCache:
    keys: dict[str, RSAPublicKey] = field(default_factory=dict)
    fetched_at: float | None = None  # last successful fetch
    failed_at: float | None = None  # last failed fetch, cleared by a success
    unknown_kid_refetch_at: float | None = None  # last refetch triggered by an unknown kid


class EntraVerifier:
    """Verifies ``Authorization: Bearer`` headers against one tenant's Entra ID keys.

    Thread-safe: the key cache is guarded by a lock and fetches are serialised.
    ``fetch`` and ``clock`` are injectable (tests); by default the JWKS is fetched with requests.
    """

    def __init__(
        self,
        settings: EntraSettings,
        fetch: JwksFetch | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._fetch: JwksFetch = fetch or (lambda url: fetch_jwks(url, settings.http_timeout_seconds))
        self._clock = clock
        self._lock = threading.Lock()
        self._cache = _KeyCache()

    # -- public ---------------------------------------------------------------------------------

    def verify(self, authorization_header: str | None) -> Caller:
        """Return the verified caller, or raise :class:`AuthRejected`."""
        try:
            return self._verify(authorization_header)
        except AuthRejected:
            raise
        except Exception as exc:  # defence in depth: nothing raw escapes
            log.warning("unexpected error verifying token: %r", exc)
            raise AuthRejected("malformed_token", "token could not be processed") from None

    # -- steps ----------------------------------------------------------------------------------

    def _verify(self, authorization_header: str | None) -> Caller:
        token = _bearer_token(authorization_header)
        header = _unverified_header(token)
        alg = header.get("alg")
        if alg != "RS256":
            raise AuthRejected("bad_algorithm", f"only RS256 is accepted, token says {alg!r}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise AuthRejected("malformed_token", "token header has no usable 'kid'")
        key = self._key_for(kid)
        claims = _decode_signed(token, key)
        return self._check_claims(claims)

    def _check_claims(self, claims: Mapping[str, Any]) -> Caller:
        s = self.settings
        now = self._clock()
        leeway = s.leeway_seconds

        exp = _numeric_date(claims, "exp", required=True)
        assert exp is not None
        if now > exp + leeway:
            raise AuthRejected("expired", f"token expired at {int(exp)} (leeway {leeway}s)")
        nbf = _numeric_date(claims, "nbf", required=False)
        if nbf is not None and now + leeway < nbf:
            raise AuthRejected("not_yet_valid", f"token not valid before {int(nbf)} (leeway {leeway}s)")
        iat = _numeric_date(claims, "iat", required=False)
        if iat is not None and now + leeway < iat:
            raise AuthRejected("not_yet_valid", f"token issued in the future ({int(iat)})")

        tid = claims.get("tid")
        if not isinstance(tid, str) or tid.strip().lower() != s.tenant_id:
            raise AuthRejected("wrong_tenant", f"token tenant {tid!r} is not the configured tenant")

        iss = claims.get("iss")
        version = s.issuers.get(iss) if isinstance(iss, str) else None
        if version is None:
            raise AuthRejected("wrong_issuer", f"issuer {iss!r} is not accepted")
        ver = claims.get("ver")
        if ver is not None and ver != version:
            raise AuthRejected("wrong_issuer", f"issuer {iss!r} does not match token version {ver!r}")

        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in s.audiences for a in auds):
            raise AuthRejected("wrong_audience", f"audience {aud!r} is not accepted")

        if "scp" in claims or claims.get("idtyp", "app") != "app":
            raise AuthRejected(
                "caller_not_allowed", "a delegated (user) token; an app-only token is required"
            )

        roles_claim = claims.get("roles")
        roles = tuple(r for r in roles_claim if isinstance(r, str)) if isinstance(roles_claim, list) else ()
        if s.required_role not in roles:
            raise AuthRejected("missing_role", f"app role {s.required_role!r} not granted to the caller")

        client_claim = "azp" if version == "2.0" else "appid"
        client = claims.get(client_claim)
        client_id = client.strip().lower() if isinstance(client, str) else ""
        if client_id not in s.allowed_client_ids:
            raise AuthRejected("caller_not_allowed", f"client {client_claim}={client!r} is not allow-listed")

        token_id = claims.get("uti") or claims.get("jti") or ""
        oid = claims.get("oid")
        return Caller(
            app_id=client_id,
            tenant_id=s.tenant_id,
            roles=roles,
            token_id=token_id if isinstance(token_id, str) else "",
            token_version=version,
            object_id=oid if isinstance(oid, str) else None,
        )

    # -- keys -----------------------------------------------------------------------------------

    def _key_for(self, kid: str) -> RSAPublicKey:
        s = self.settings
        with self._lock:
            cache = self._cache
            now = self._clock()
            fetched = False  # at most one fetch per call
            if cache.fetched_at is None or now - cache.fetched_at >= s.jwks_cache_ttl_seconds:
                fetched = self._refresh(now)
            key = cache.keys.get(kid)
            if key is not None:
                return key
            last = cache.unknown_kid_refetch_at
            if not fetched and (last is None or now - last >= s.unknown_kid_refetch_interval_seconds):
                cache.unknown_kid_refetch_at = now  # rate limit: unknown-kid floods cost one fetch
                self._refresh(now)
                key = cache.keys.get(kid)
                if key is not None:
                    return key
        raise AuthRejected("unknown_key", f"no key {kid!r} in the tenant's key set")

    def _stale_keys_usable(self, now: float) -> bool:
        cache = self._cache
        return (
            bool(cache.keys)
            and cache.fetched_at is not None
            and now - cache.fetched_at < self.settings.jwks_max_stale_seconds
        )

    def _refresh(self, now: float) -> bool:
        """Fetch the key set; True if a fetch was attempted.

        On failure, keep the cached keys if recent enough, else raise ``jwks_unavailable``. After a
        failure, no new attempt is made for ``jwks_retry_after_failure_seconds``.
        """
        cache = self._cache
        if (
            cache.failed_at is not None
            and now - cache.failed_at < self.settings.jwks_retry_after_failure_seconds
        ):
            if self._stale_keys_usable(now):
                return False
            raise AuthRejected(
                "jwks_unavailable", "the tenant's signing keys could not be fetched (backing off)"
            )
        try:
            document = self._fetch(self.settings.jwks_url)
            keys = _parse_jwks(document)
        except Exception as exc:
            cache.failed_at = now
            usable = self._stale_keys_usable(now)
            log.warning(
                "JWKS fetch from %s failed (%r); stale keys used: %s", self.settings.jwks_url, exc, usable
            )
            if usable:
                return True
            raise AuthRejected("jwks_unavailable", "the tenant's signing keys could not be fetched") from None
        cache.keys = keys
        cache.fetched_at = now
        cache.failed_at = None
        return True


# -- helpers ------------------------------------------------------------------------------------


def _bearer_token(authorization_header: str | None) -> str:
    if authorization_header is None or not authorization_header.strip():
        raise AuthRejected("missing_token", "no Authorization header")
    parts = authorization_header.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise AuthRejected("missing_token", "Authorization header is not a Bearer token")
    token = parts[1].strip()
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_RE.match(token):
        raise AuthRejected("malformed_token", "bearer token is not a compact JWS")
    return token


def _unverified_header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except Exception:
        raise AuthRejected("malformed_token", "token header cannot be decoded") from None
    if not isinstance(header, dict):
        raise AuthRejected("malformed_token", "token header is not a JSON object")
    return header


def _decode_signed(token: str, key: RSAPublicKey) -> dict[str, Any]:
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=["RS256"],
            options={
                "verify_signature": True,
                "verify_exp": False,  # checked by us, with our clock and reasons
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise AuthRejected("bad_signature", "token signature does not verify") from None
    except jwt.InvalidAlgorithmError:
        raise AuthRejected("bad_algorithm", "only RS256 is accepted") from None
    except Exception:
        raise AuthRejected("malformed_token", "token payload cannot be decoded") from None
    if not isinstance(claims, dict):
        raise AuthRejected("malformed_token", "token payload is not a JSON object")
    return claims


def _numeric_date(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise AuthRejected("malformed_token", f"token has no '{name}' claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthRejected("malformed_token", f"token claim '{name}' is not a NumericDate")
    return float(value)


def _parse_jwks(document: Any) -> dict[str, RSAPublicKey]:
    """RSA signing keys by kid. Keys of other types, uses, algorithms or weak sizes are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("JWKS document has no 'keys' list")
    keys: dict[str, RSAPublicKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if (
            not isinstance(kid, str)
            or not kid
            or entry.get("kty") != "RSA"
            or entry.get("use", "sig") != "sig"
            or entry.get("alg", "RS256") != "RS256"
        ):
            continue
        try:
            key = jwt.PyJWK(entry, algorithm="RS256").key
        except Exception:
            log.warning("skipping unusable JWKS key %r", kid)
            continue
        if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            log.warning("skipping JWKS key %r: not an RSA public key of >= %d bits", kid, MIN_RSA_BITS)
            continue
        keys[kid] = key
    if not keys:
        raise ValueError("JWKS document has no usable RSA signing key")
    return keys


class ApiKeyVerifier:
    """Checks the ``X-OnRecord-Key`` header against configured keys, in constant time per key.

    An empty key list (or only empty strings) rejects everything: fail closed.
    """

    header = API_KEY_HEADER

    def __init__(self, keys: Sequence[str]) -> None:
        if isinstance(keys, str):
            raise TypeError("keys must be a sequence of strings, not a string")
        self._keys = tuple(k.encode("utf-8") for k in keys if k)

    def verify(self, presented: str | None) -> str:
        """Return the sender identity (``api_key:<n>``, n = index of the matching key) or raise."""
        if not self._keys:
            raise AuthRejected("caller_not_allowed", "no API keys configured (fail closed)")
        if presented is None or not presented:
            raise AuthRejected("missing_token", f"no {API_KEY_HEADER} header")
        candidate = presented.encode("utf-8", errors="surrogateescape")
        match = -1
        for index, key in enumerate(self._keys):  # compare with every key: no early exit
            if hmac.compare_digest(candidate, key) and match < 0:
                match = index
        if match < 0:
            raise AuthRejected("caller_not_allowed", f"{API_KEY_HEADER} does not match a configured key")
        return f"api_key:{match}"

    def verify_headers(self, headers: Mapping[str, str]) -> str:
        """Like :meth:`verify`, reading the header from a (case-insensitive, e.g. Flask) mapping."""
        return self.verify(headers.get(API_KEY_HEADER))
