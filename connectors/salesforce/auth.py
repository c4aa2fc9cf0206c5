"""Getting a Salesforce access token: OAuth 2.0 JWT bearer flow or client credentials flow.

JWT bearer (Salesforce help, "OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration"):
an RS256-signed assertion with iss = the connected app's consumer key, sub = the username,
aud = the authorization server (https://login.salesforce.com, https://test.salesforce.com, or an
Experience Cloud site URL), exp = at most a few minutes ahead, POSTed to
<login URL>/services/oauth2/token with grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer.
The private key must match the certificate uploaded to the app ("Use digital signatures").
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from plugin.crm import CrmError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    from connectors.salesforce.writer import SalesforceWriterSettings

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 180  # Salesforce expects exp within about three minutes

# What Salesforce's error_description usually means, for the operator reading `check`/readyz.
_HINTS = {
    "invalid assertion": "the private key does not match the certificate uploaded to the connected app, "
    "or the assertion is malformed",
    "audience is invalid": "the JWT aud must be https://login.salesforce.com (production), "
    "https://test.salesforce.com (sandbox) or the site URL; set jwt_audience if login_url is unusual",
    "expired authorization code": "the assertion has expired: check this machine's clock",
    "user hasn't approved this consumer": "pre-authorize the user's profile or permission set for the "
    "connected app (Permitted Users: admin approved users are pre-authorized), or check the username",
    "client identifier invalid": "client_id is not the consumer key of a connected app in this org",
    "invalid client credentials": "client_secret does not match the connected app's consumer secret",
    "no client credentials user enabled": "enable the client credentials flow and set its Run As user",
}


@dataclass(frozen=True)
class AccessToken:
    access_token: str
    instance_url: str
    identity_url: str = ""


def jwt_audience(login_url: str) -> str:
    """The `aud` Salesforce expects for a login URL: a My Domain login URL still takes
    https://login.salesforce.com (https://test.salesforce.com for sandboxes); other hosts, such as
    an Experience Cloud site, are their own audience."""
    host = (urlsplit(login_url).hostname or "").lower()
    if host.endswith(".sandbox.my.salesforce.com") or host == "test.salesforce.com":
        return "https://test.salesforce.com"
    if host.endswith(".my.salesforce.com") or host == "login.salesforce.com":
        return "https://login.salesforce.com"
    return login_url.rstrip("/")


_key_cache: dict[str, tuple[tuple[int, int], RSAPrivateKey]] = {}
_key_lock = threading.Lock()


def load_private_key(path: str) -> RSAPrivateKey:
    """The RSA private key in the PEM file at `path` (CrmError, not retryable, if unusable).
    Parsed keys are cached until the file changes: parsing checks the key, which is slow."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        stat = Path(path).stat()
        with _key_lock:
            cached = _key_cache.get(path)
        if cached is not None and cached[0] == (stat.st_mtime_ns, stat.st_size):
            return cached[1]
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise CrmError(
            f"Salesforce JWT: cannot read private key file {path}: {exc.strerror}", retryable=False
        ) from exc
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CrmError(
            f"Salesforce JWT: {path} is not an unencrypted PEM private key ({exc})", retryable=False
        ) from exc
    if not isinstance(key, RSAPrivateKey):
        raise CrmError(f"Salesforce JWT: {path} holds a non-RSA key; RS256 needs an RSA key", retryable=False)
    with _key_lock:
        _key_cache[path] = ((stat.st_mtime_ns, stat.st_size), key)
    return key


def build_assertion(
    *,
    client_id: str,
    username: str,
    audience: str,
    private_key: RSAPrivateKey | bytes,
    now: float | None = None,
) -> str:
    """The signed JWT bearer assertion (RS256)."""
    import jwt

    issued = time.time() if now is None else now
    claims = {
        "iss": client_id,
        "sub": username,
        "aud": audience,
        "exp": int(issued) + ASSERTION_LIFETIME_SECONDS,
    }
    return jwt.encode(claims, private_key, algorithm="RS256")


_REASONS = (
    re.compile(r"\[SSL: [A-Z_]+\] ([^'\"]+?)(?: \(_ssl\.c:\d+\))?['\")]"),
    re.compile(r"(\[Errno -?\d+\] [^'\")]+)"),
)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for pattern in _REASONS:
        m = pattern.search(text)
        if m:
            return m.group(1).strip()
    return text


def transport_problem(exc: OSError, url: str, ca_bundle: str | None, timeout: float) -> str:
    """An operator-readable sentence for a failed HTTPS exchange (requests' errors are OSErrors;
    a CA bundle path that does not exist surfaces as a plain OSError)."""
    if not isinstance(exc, requests.RequestException):
        if ca_bundle and "CA certificate bundle" in str(exc):
            return f"cannot use CA bundle {ca_bundle}: {exc}"
        return f"request to {url} failed: {exc}"
    if isinstance(exc, requests.exceptions.SSLError):
        trust = f"CA bundle {ca_bundle}" if ca_bundle else "the system's CA certificates"
        return f"TLS verification failed for {url}: {_reason(exc)} (trusting {trust})"
    if isinstance(exc, requests.Timeout):
        return f"no answer from {url} within {timeout:g}s"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {url}: {_reason(exc)}"
    return f"request to {url} failed: {_reason(exc)}"


def fetch_token(settings: SalesforceWriterSettings, http: requests.Session) -> AccessToken:
    """Log in; raise CrmError saying exactly what is wrong (retryable only for transient trouble)."""
    token_url = settings.login_url.rstrip("/") + "/services/oauth2/token"
    if settings.auth == "jwt":
        assert settings.username is not None and settings.private_key_path is not None
        assertion = build_assertion(
            client_id=settings.client_id,
            username=settings.username,
            audience=settings.jwt_audience or jwt_audience(settings.login_url),
            private_key=load_private_key(settings.private_key_path),
        )
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
        flow = f"JWT bearer login of {settings.username}"
    else:
        form = {
            "grant_type": "client_credentials",
            "client_id": settings.client_id,
            "client_secret": settings.client_secret or "",
        }
        flow = "client credentials login"
    try:
        response = http.post(
            token_url, data=form, headers={"Accept": "application/json"}, timeout=settings.timeout
        )
    except OSError as exc:  # requests.RequestException, or a bad CA bundle path
        problem = transport_problem(exc, settings.login_url, settings.ca_bundle, settings.timeout)
        raise CrmError(f"Salesforce {flow} failed: {problem}", retryable=True) from exc
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, dict) and body.get("access_token"):
        instance_url = str(body.get("instance_url", "")).rstrip("/")
        if not instance_url.startswith("https://"):
            raise CrmError(
                f"Salesforce {flow}: token endpoint returned instance_url {instance_url!r}, "
                "not an https:// URL",
                retryable=False,
            )
        return AccessToken(str(body["access_token"]), instance_url, str(body.get("id", "")))
    if isinstance(body, dict) and "error" in body:
        description = str(body.get("error_description", ""))
        hint = _HINTS.get(description)
        message = f"Salesforce {flow} refused by {token_url}: {body['error']}: {description}"
        raise CrmError(message + (f" ({hint})" if hint else ""), retryable=response.status_code >= 500)
    if response.status_code >= 500:
        raise CrmError(f"Salesforce {flow}: {token_url} answered HTTP {response.status_code}", retryable=True)
    content_type = response.headers.get("Content-Type", "no content type")
    raise CrmError(
        f"Salesforce {flow}: login_url {settings.login_url} does not look like a Salesforce login URL "
        f"(POST {token_url} answered HTTP {response.status_code}, {content_type})",
        retryable=False,
    )
