"""The Dataverse Web API client every Dataverse part of OnRecord shares (writer, directory,
audit, provisioning): sign-in, one retry policy, Dataverse's errors, paging, $batch, metadata.

Sign-in: OAuth 2.0 client credentials through msal's `ConfidentialClientApplication`, authority
`{authority_host}/{tenant_id}`, scope `{environment url}/.default`; the app registration is an
application user in the environment.
- https://learn.microsoft.com/power-apps/developer/data-platform/authenticate-oauth
- https://learn.microsoft.com/power-apps/developer/data-platform/use-single-tenant-server-server-authentication
- https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow
- msal: https://learn.microsoft.com/python/api/msal/msal.application.confidentialclientapplication
  `http_client` (our requests session, so the configured CA bundle and timeouts apply to
  sign-in too), `instance_discovery=False` (see `_app`), `acquire_token_for_client` (msal
  serves the cached token until it is due for refresh), `remove_tokens_for_client` (a 401).
msal fetches the tenant's OpenID discovery document
(`{authority}/v2.0/.well-known/openid-configuration`) and posts to the token endpoint it names.

Requests: `OData-MaxVersion: 4.0`, `OData-Version: 4.0`, `Accept: application/json` on every
request, `If-None-Match: null` on reads, a (connect, read) timeout, the configured CA bundle.
- https://learn.microsoft.com/power-apps/developer/data-platform/webapi/compose-http-requests-handle-errors

One retry policy, in `request`:
- 401: the token expired (or was revoked): drop msal's cached token, sign in again, retry once.
- 429 (service protection) and 503: wait what `Retry-After` says (seconds or an HTTP date; when
  it is missing, 1, 2, 4 s ...) and retry, at most `max_retries` times and only while the wait is
  at most `max_retry_wait`. A 429 that asks for longer raises `ServiceProtectionLimit` (a
  CrmPaused) and no further request is sent before the time it named: Dataverse extends the
  penalty of a client that keeps sending.
  https://learn.microsoft.com/power-apps/developer/data-platform/api-limits
- Other errors raise `DataverseError` (a CrmError) with Dataverse's own code and message
  (`{"error": {"code": "0x...", "message": ...}}`); retryable for 5xx, 408, 429 and the service
  protection codes, not for other 4xx (400, 403, 404, 412 ... cannot succeed by trying again).
  Timeouts and connection or TLS failures raise a retryable CrmError.

The response headers `x-ms-ratelimit-burst-remaining-xrm-requests` are kept for `rate_limit()`;
Microsoft says not to pace requests by them ("intended for debugging purposes"), so nothing
here pauses on them.

Paging (`get_all`): `Prefer: odata.maxpagesize=n`, then `@odata.nextLink` used as it is.
https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query-data-web-api#page-results

Table names (`table`, `entity_set`): `EntityDefinitions(LogicalName='x')?$select=EntitySetName,
PrimaryIdAttribute`, cached. https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query-metadata-web-api

$batch (`batch`): multipart/mixed, at most 1000 requests, each part `application/http` with
`Content-Transfer-Encoding: binary`; responses in request order (change set responses
flattened). https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json as jsonlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from plugin.crm import CrmError, CrmPaused

if TYPE_CHECKING:
    from connectors.dataverse.config import DataverseConfig

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_LOGICAL_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_ENTITY_ID = re.compile(r"\((?P<id>[0-9a-fA-F-]{36})\)\s*$")

# Service protection errors: hex codes the Web API answers, and the SDK's decimal equivalents.
SERVICE_PROTECTION_CODES = frozenset(
    {"0x80072322", "0x80072321", "0x80072326", "-2147015902", "-2147015903", "-2147015898"}
)
# 5xx answers that are not transient: duplicate detection refusing a write (HTTP 500, documented at
# https://learn.microsoft.com/power-apps/developer/data-platform/webapi/manage-duplicate-detection-create-update).
PERMANENT_CODES = frozenset({"0x80040333"})
# The default number-of-requests limit per user and web server in the 5 minute window (api-limits).
REQUEST_LIMIT = 6000
MAX_BATCH = 1000  # requests in one $batch
_CRLF = "\r\n"


@dataclass(frozen=True)
class WebApiSettings:
    url: str  # the environment, https://contoso.crm4.dynamics.com
    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    authority_host: str = "https://login.microsoftonline.com"
    api_version: str = "9.2"
    ca_bundle: str | None = None  # PEM CA file to trust instead of the system's
    timeout: float = 30.0  # seconds, per HTTP request (connect and read)
    max_retries: int = 3  # 429/503 retries within one call
    max_retry_wait: float = 30.0  # the longest Retry-After waited out within one call

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"dataverse.{key}: {why}")

        for key in ("url", "authority_host"):
            value = getattr(self, key)
            parts = urlsplit(value)
            if parts.scheme != "https" or not parts.hostname:
                raise bad(key, f"must be an https:// URL, got {value!r}")
        for key in ("tenant_id", "client_id"):
            if not GUID.match(getattr(self, key)):
                raise bad(key, "is required (a GUID)")
        if not self.client_secret:
            raise bad("client_secret", "is required (the app registration's client secret)")
        if not re.fullmatch(r"9\.[0-9]", self.api_version):
            raise bad("api_version", f"must look like '9.2', got {self.api_version!r}")
        if self.timeout <= 0:
            raise bad("timeout_seconds", "must be positive")

    @classmethod
    def from_config(cls, config: DataverseConfig) -> WebApiSettings:
        """The settings of a `[dataverse]` section."""
        return cls(
            url=config.url,
            tenant_id=config.tenant_id,
            client_id=config.client_id,
            client_secret=config.client_secret,
            authority_host=config.authority_host,
            api_version=config.api_version,
            ca_bundle=config.ca_bundle or None,
            timeout=config.timeout_seconds,
        )

    @property
    def service_root(self) -> str:
        return f"{self.url.rstrip('/')}/api/data/v{self.api_version}/"


class DataverseError(CrmError):
    """Dataverse answered with an error: its HTTP status, its own code and message."""

    def __init__(self, text: str, *, status: int, code: str, message: str, retryable: bool) -> None:
        super().__init__(text, retryable=retryable)
        self.status = status
        self.code = code
        self.message = message


class ServiceProtectionLimit(CrmPaused):
    """Dataverse's service protection limit says: no requests before `retry_after` seconds."""

    def __init__(self, text: str, *, code: str, message: str, retry_after: float) -> None:
        super().__init__(text)
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class TableInfo:
    logical_name: str
    entity_set: str
    primary_id: str


@dataclass(frozen=True)
class BatchRequest:
    """One request of a $batch; `path` is relative to the service root."""

    method: str
    path: str
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchAnswer:
    """One response of a $batch (header names in lower case)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error(self) -> tuple[str, str]:
        """Dataverse's (code, message) of an error answer."""
        return error_of(self.body)

    @property
    def entity_id(self) -> str | None:
        return entity_id(self.headers.get("odata-entityid"))


def is_guid(value: Any) -> bool:
    return isinstance(value, str) and bool(GUID.match(value))


def odata_string(value: str) -> str:
    """An OData string literal: single quotes, a quote inside doubled."""
    return "'" + value.replace("'", "''") + "'"


def entity_id(url: str | None) -> str | None:
    """The GUID at the end of an OData-EntityId URL (`.../accounts(<guid>)`)."""
    m = _ENTITY_ID.search(url or "")
    return m.group("id").lower() if m else None


def error_of(body: bytes | str) -> tuple[str, str]:
    """(code, message) of Dataverse's error body; the raw text when it is not JSON."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        parsed = jsonlib.loads(text)
    except ValueError:
        return "", text.strip()[:500]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return "", text.strip()[:500]
    return str(error.get("code") or ""), str(error.get("message") or "")


def retryable(status: int, code: str) -> bool:
    """Whether trying the same request again later can succeed."""
    if code in PERMANENT_CODES:
        return False
    if code in SERVICE_PROTECTION_CODES:
        return True
    return status >= 500 or status in (401, 408, 429)


def retry_after_seconds(value: str | None, now: Callable[[], dt.datetime] | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds (what Dataverse sends) or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    current = now() if now else dt.datetime.now(dt.UTC)
    return max((when - current).total_seconds(), 0.0)


class _Session(requests.Session):
    """A session with a default timeout, whose `verify` wins over REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE (plain requests lets the environment override a session's CA bundle)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        # msal calls get()/post() without a timeout: every request gets ours.
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        return super().merge_environment_settings(
            url, proxies, stream, self.verify if verify is None else verify, cert
        )


def _transport_problem(exc: OSError, url: str, ca_bundle: str | None, timeout: float) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        trust = f"CA bundle {ca_bundle}" if ca_bundle else "the system's CA certificates"
        return f"TLS verification failed for {url} (trusting {trust}): {exc}"
    if isinstance(exc, requests.Timeout):
        return f"no answer from {url} within {timeout:g}s"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {url}: {exc}"
    return f"request to {url} failed: {exc}"


class WebApiClient:
    """A signed-in Web API client for one environment. Thread-safe."""

    def __init__(
        self,
        settings: WebApiSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self._clock = clock
        self._http = _Session(settings.timeout)
        self._http.verify = settings.ca_bundle or True
        self._lock = threading.Lock()  # pause state, rate limit reading, caches
        self._auth_lock = threading.Lock()  # one sign-in at a time
        self._msal: Any = None
        self._paused_until = 0.0
        self._paused_why = ""
        self._remaining: int | None = None
        self._tables: dict[str, TableInfo] = {}

    @property
    def service_root(self) -> str:
        return self.settings.service_root

    # --- sign-in -----------------------------------------------------------------------------------

    def _app(self) -> Any:
        if self._msal is None:
            import msal

            authority = f"{self.settings.authority_host.rstrip('/')}/{self.settings.tenant_id}"
            # instance_discovery=False: msal would otherwise ask login.microsoftonline.com to
            # vouch for an authority host it does not know; the host here is the admin's own
            # configuration (sovereign clouds, a test double), and for Microsoft's own hosts
            # msal skips that discovery anyway. Creating the app fetches the tenant's OpenID
            # discovery document.
            self._msal = msal.ConfidentialClientApplication(
                self.settings.client_id,
                client_credential=self.settings.client_secret,
                authority=authority,
                http_client=self._http,
                instance_discovery=False,
            )
        return self._msal

    def token(self) -> str:
        """An access token for the environment (msal's cached one while it is fresh)."""
        scope = f"{self.settings.url.rstrip('/')}/.default"
        where = f"{self.settings.authority_host.rstrip('/')}/{self.settings.tenant_id}"
        with self._auth_lock:
            try:
                result = self._app().acquire_token_for_client(scopes=[scope])
            except OSError as exc:  # requests' errors included
                problem = _transport_problem(exc, where, self.settings.ca_bundle, self.settings.timeout)
                raise CrmError(f"Dataverse sign-in failed: {problem}", retryable=True) from exc
            except ValueError as exc:  # msal: the authority's discovery document is unavailable
                raise CrmError(f"Dataverse sign-in at {where} failed: {exc}", retryable=True) from exc
        if isinstance(result, dict) and result.get("access_token"):
            return str(result["access_token"])
        error = result.get("error", "no token") if isinstance(result, dict) else "no token"
        description = result.get("error_description", "") if isinstance(result, dict) else ""
        # Retryable: the records are fine, the sign-in is not; an admin fixes it (Entra client
        # secrets expire by design) and the writes go out then, rather than dying now.
        raise CrmError(
            f"Dataverse sign-in at {where} as app {self.settings.client_id} refused: {error}: {description}",
            retryable=True,
        )

    def _forget_token(self) -> None:
        with self._auth_lock:
            if self._msal is not None:
                self._msal.remove_tokens_for_client()

    # --- requests --------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        if path.startswith(("https://", "http://")):
            # Only ever send the token to this environment's Web API (an @odata.nextLink).
            if not path.startswith(self.service_root.split("/api/data/")[0] + "/api/data/"):
                raise CrmError(f"refusing to call {path}: not this environment's Web API", retryable=False)
            return path
        return self.service_root + path.lstrip("/")

    def paused(self) -> str | None:
        """Why requests are held back now (a service protection limit), or None."""
        with self._lock:
            wait = self._paused_until - self._clock()
            if wait <= 0:
                return None
            until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)).strftime("%H:%M:%S UTC")
            return f"{self._paused_why}; Dataverse asked for no requests before {until}"

    def _check_pause(self) -> None:
        with self._lock:
            wait = self._paused_until - self._clock()
            why = self._paused_why
        if wait > 0:
            raise ServiceProtectionLimit(self.paused() or why, code="", message=why, retry_after=wait)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        what: str | None = None,
        multipart_errors: bool = False,
    ) -> requests.Response:
        """One Web API request under the retry policy (module docstring); the response, or a
        CrmError. `multipart_errors`: a $batch that stopped at a failure answers with that failure's
        status and a multipart body holding it; return that response instead of raising."""
        url = self._url(path)
        what = what or f"{method} {url.removeprefix(self.service_root)}"
        self._check_pause()
        body = data if data is not None else (None if json is None else jsonlib.dumps(json).encode("utf-8"))
        base = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
        if method == "GET":
            base["If-None-Match"] = "null"  # no cached answers (compose-http-requests-handle-errors)
        if json is not None:
            base["Content-Type"] = "application/json; charset=utf-8"
        attempt = 0
        signed_in_again = False
        while True:
            token = self.token()
            sent = {**base, **(headers or {}), "Authorization": f"Bearer {token}"}
            try:
                response = self._http.request(method, url, params=params, data=body, headers=sent)
            except OSError as exc:
                problem = _transport_problem(exc, url, self.settings.ca_bundle, self.settings.timeout)
                raise CrmError(f"Dataverse {what} failed: {problem}", retryable=True) from exc
            self._note(response)
            status = response.status_code
            if status == 401 and not signed_in_again:
                self._forget_token()
                signed_in_again = True
                continue
            if status in (429, 503):
                wait = retry_after_seconds(response.headers.get("Retry-After"))
                delay = wait if wait is not None else float(2**attempt)
                if attempt < self.settings.max_retries and delay <= self.settings.max_retry_wait:
                    self._sleep(delay)
                    attempt += 1
                    continue
                if status == 429:
                    raise self._limited(response, what, delay)
            if status >= 400:
                if multipart_errors and response.headers.get("Content-Type", "").startswith("multipart/"):
                    return response
                raise self._error(response, what, signed_in_again=signed_in_again)
            return response

    def _limited(self, response: requests.Response, what: str, wait: float) -> ServiceProtectionLimit:
        code, message = error_of(response.content)
        why = f"Dataverse service protection limit ({code or 'HTTP 429'}: {message})"
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + wait)
            self._paused_why = why
        return ServiceProtectionLimit(
            f"Dataverse {what} refused: {why}; retry after {wait:g}s",
            code=code,
            message=message,
            retry_after=wait,
        )

    def _error(self, response: requests.Response, what: str, *, signed_in_again: bool) -> DataverseError:
        status = response.status_code
        code, message = error_of(response.content)
        if status == 401 and not message:
            message = response.headers.get("WWW-Authenticate", "unauthorized")
        text = f"Dataverse {what} failed: HTTP {status}" + (f" {code}" if code else "") + f": {message}"
        if status == 401 and signed_in_again:
            text += " (even right after signing in again: is the app an application user of the environment?)"
        return DataverseError(
            text, status=status, code=code, message=message, retryable=retryable(status, code)
        )

    def _note(self, response: requests.Response) -> None:
        remaining = response.headers.get("x-ms-ratelimit-burst-remaining-xrm-requests")
        if remaining is not None:
            try:
                value = int(remaining.replace(",", "").split(".")[0])
            except ValueError:
                return
            with self._lock:
                self._remaining = value

    def rate_limit(self) -> tuple[int, int] | None:
        """(used, limit) of the requests in the service protection window, as the last response
        told (limit: Microsoft's default 6000, or more when Dataverse reports more remaining);
        None before any response said."""
        with self._lock:
            remaining = self._remaining
        if remaining is None:
            return None
        limit = max(REQUEST_LIMIT, remaining)
        return limit - remaining, limit

    # --- helpers for everyone -----------------------------------------------------------------------

    @staticmethod
    def _json(response: requests.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise CrmError(f"Dataverse {what}: the answer is not JSON", retryable=True) from exc
        if not isinstance(body, dict):
            raise CrmError(f"Dataverse {what}: the answer is not a JSON object", retryable=False)
        return body

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET a resource; its JSON object."""
        return self._json(self.request("GET", path, params=params), f"GET {path}")

    def get_all(
        self, path: str, params: Mapping[str, str] | None = None, *, page_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every row of a collection, page after page (`@odata.nextLink`)."""
        headers = {"Prefer": f"odata.maxpagesize={page_size}"} if page_size else None
        page = self._json(self.request("GET", path, params=params, headers=headers), f"GET {path}")
        while True:
            for row in page.get("value") or []:
                if isinstance(row, dict):
                    yield row
            link = page.get("@odata.nextLink")
            if not isinstance(link, str) or not link:
                return
            page = self._json(self.request("GET", link, headers=headers), f"GET {path} (next page)")

    def post(self, path: str, json: Any, *, headers: Mapping[str, str] | None = None) -> requests.Response:
        """POST (create a row, call an action); the response (OData-EntityId: `entity_id(...)`)."""
        return self.request("POST", path, json=json, headers=headers)

    def patch(self, path: str, json: Any, *, headers: Mapping[str, str] | None = None) -> requests.Response:
        """PATCH (update or upsert a row)."""
        return self.request("PATCH", path, json=json, headers=headers)

    def delete(self, path: str, *, headers: Mapping[str, str] | None = None) -> requests.Response:
        return self.request("DELETE", path, headers=headers)

    def who_am_i(self) -> dict[str, Any]:
        """The WhoAmI function: UserId (the application user), BusinessUnitId, OrganizationId."""
        return self.get("WhoAmI")

    def table(self, logical_name: str) -> TableInfo:
        """A table's entity set name and primary id column, from its definition (cached)."""
        if not _LOGICAL_NAME.match(logical_name):
            raise CrmError(f"not a Dataverse table logical name: {logical_name!r}", retryable=False)
        with self._lock:
            known = self._tables.get(logical_name)
        if known is not None:
            return known
        try:
            body = self.get(
                f"EntityDefinitions(LogicalName={odata_string(logical_name)})",
                {"$select": "EntitySetName,PrimaryIdAttribute"},
            )
        except DataverseError as exc:
            if exc.status == 404:
                raise DataverseError(
                    f"Dataverse has no table {logical_name} (is OnRecord provisioned?): {exc}",
                    status=exc.status,
                    code=exc.code,
                    message=exc.message,
                    retryable=False,
                ) from exc
            raise
        entity_set, primary = body.get("EntitySetName"), body.get("PrimaryIdAttribute")
        if not isinstance(entity_set, str) or not entity_set or not isinstance(primary, str):
            raise CrmError(f"Dataverse's definition of {logical_name} names no entity set", retryable=False)
        info = TableInfo(logical_name, entity_set, primary)
        with self._lock:
            self._tables[logical_name] = info
        return info

    def entity_set(self, logical_name: str) -> str:
        """The entity set name a table's rows are addressed by (`opportunity` -> `opportunities`)."""
        return self.table(logical_name).entity_set

    # --- $batch --------------------------------------------------------------------------------------

    def batch(
        self, items: Sequence[BatchRequest], *, continue_on_error: bool = True, what: str = "$batch"
    ) -> list[BatchAnswer]:
        """Send requests as one $batch (no change sets: each request is its own transaction);
        the answers in request order. Fewer answers than requests: the batch stopped at a
        failure (only without continue_on_error)."""
        if not items:
            return []
        if len(items) > MAX_BATCH:
            raise CrmError(f"a $batch holds at most {MAX_BATCH} requests, got {len(items)}", retryable=False)
        boundary = f"batch_{uuid.uuid4()}"
        parts = []
        for item in items:
            lines = [
                f"--{boundary}",
                "Content-Type: application/http",
                "Content-Transfer-Encoding: binary",
                "",
                f"{item.method} {self.service_root}{item.path.lstrip('/')} HTTP/1.1",
            ]
            if item.json is not None:
                lines.append("Content-Type: application/json; type=entry")
            lines += [f"{k}: {v}" for k, v in item.headers.items()]
            lines += ["", "" if item.json is None else jsonlib.dumps(item.json)]
            parts.append(_CRLF.join(lines))
        payload = _CRLF.join(parts) + f"{_CRLF}--{boundary}--{_CRLF}"
        headers = {"Content-Type": f'multipart/mixed; boundary="{boundary}"'}
        if continue_on_error:
            headers["Prefer"] = "odata.continue-on-error"
        response = self.request(
            "POST", "$batch", data=payload.encode("utf-8"), headers=headers, what=what, multipart_errors=True
        )
        try:
            return parse_batch_response(response.headers.get("Content-Type", ""), response.content)
        except ValueError as exc:
            raise CrmError(f"Dataverse {what}: cannot read the answer: {exc}", retryable=True) from exc

    def close(self) -> None:
        self._http.close()


# --- multipart/mixed answers ---------------------------------------------------------------------------


def _boundary_of(content_type: str) -> str:
    for piece in content_type.split(";")[1:]:
        name, _, value = piece.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"')
    raise ValueError(f"no boundary in Content-Type {content_type!r}")


def _split_head(data: bytes) -> tuple[dict[str, str], bytes]:
    """Header lines up to the first blank line (names in lower case), and the rest."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = data.find(sep)
        if at >= 0:
            head, rest = data[:at], data[at + len(sep) :]
            break
    else:
        head, rest = data, b""
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").splitlines():
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def parse_batch_response(content_type: str, body: bytes) -> list[BatchAnswer]:
    """The HTTP responses inside a $batch answer, in order (change sets flattened)."""
    boundary = _boundary_of(content_type).encode()
    chunks = body.split(b"--" + boundary)
    answers: list[BatchAnswer] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n").removeprefix(b"\n")
        mime, rest = _split_head(chunk)
        inner_type = mime.get("content-type", "")
        if inner_type.lower().startswith("multipart/mixed"):
            answers += parse_batch_response(inner_type, rest)
            continue
        status_line, _, after = rest.partition(b"\n")
        pieces = status_line.decode("utf-8", "replace").strip().split(" ", 2)
        if len(pieces) < 2 or not pieces[0].startswith("HTTP/") or not pieces[1].isdigit():
            raise ValueError(f"not an HTTP status line: {status_line[:80]!r}")
        headers: dict[str, str]
        if after.startswith((b"\r\n", b"\n")):
            headers, content = {}, after.split(b"\n", 1)[1]
        else:
            headers, content = _split_head(after)
        answers.append(BatchAnswer(int(pieces[1]), headers, content.strip()))
    return answers
