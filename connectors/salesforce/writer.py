"""SalesforceWriter: the CrmWriter for Salesforce, over simple-salesforce and sObject Collections.

- Authenticates lazily (JWT bearer or client credentials, see auth.py) and drives
  simple-salesforce with the token (`Salesforce(instance_url=, session_id=, version=, session=)`).
- Writes a batch in one call: upsert -> PATCH composite/sobjects/{Object}/{ExtIdField},
  update -> PATCH composite/sobjects, allOrNone false, each record with attributes.type.
  Per-record results map in order to RecordResult; UNABLE_TO_LOCK_ROW is retryable.
- Whole-call failures become CrmError: 5xx, timeouts, connection/TLS trouble and
  REQUEST_LIMIT_EXCEEDED are retryable; 401 INVALID_SESSION_ID re-authenticates once and retries;
  other 4xx are not retryable.
- Watches the org's daily API budget through the Sforce-Limit-Info header of every response:
  at `api_budget_share` or above, calls are paused (CrmPaused) until a later reading (a `limits`
  call at most every `budget_recheck_seconds`) shows usage below the share.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import enum
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

import requests

from connectors.salesforce.auth import AccessToken, fetch_token, transport_problem
from plugin.crm import CrmError, CrmPaused, RecordResult, WriteBatch

if TYPE_CHECKING:
    from simple_salesforce.api import Salesforce

T = TypeVar("T")
MAX_BATCH = 200
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_LIMIT_INFO = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")
_RETRYABLE_RECORD_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "ALL_OR_NONE_OPERATION_ROLLED_BACK"})


@dataclass(frozen=True)
class SalesforceWriterSettings:
    login_url: str  # https://login.salesforce.com, https://test.salesforce.com or My Domain
    client_id: str  # the connected app's consumer key
    auth: Literal["jwt", "client_credentials"] = "jwt"
    username: str | None = None  # jwt: the integration user
    private_key_path: str | None = None  # jwt: PEM RSA key matching the app's certificate
    client_secret: str | None = field(default=None, repr=False)  # client_credentials
    api_version: str = "62.0"
    ca_bundle: str | None = None  # PEM CA file to trust instead of the system's
    timeout: float = 30.0  # seconds, per HTTP request
    api_budget_share: float = 0.8  # pause at this share of the daily API limit
    budget_recheck_seconds: float = 300.0  # while paused, re-read usage at most this often
    jwt_audience: str | None = None  # override the JWT aud (default: derived from login_url)

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"salesforce.{key}: {why}")

        if not self.login_url.startswith("https://"):
            raise bad("login_url", f"must be an https:// URL, got {self.login_url!r}")
        if not self.client_id:
            raise bad("client_id", "is required (the connected app's consumer key)")
        if self.auth == "jwt":
            if not self.username:
                raise bad("username", "is required for auth = jwt")
            if not self.private_key_path:
                raise bad("private_key_path", "is required for auth = jwt")
        elif self.auth == "client_credentials":
            if not self.client_secret:
                raise bad("client_secret", "is required for auth = client_credentials")
        else:
            raise bad("auth", f"must be 'jwt' or 'client_credentials', got {self.auth!r}")
        if not re.fullmatch(r"\d{2,3}\.0", self.api_version):
            raise bad("api_version", f"must look like '62.0', got {self.api_version!r}")
        if self.timeout <= 0:
            raise bad("timeout", "must be positive")
        if not 0 < self.api_budget_share <= 1:
            raise bad("api_budget_share", "must be in (0, 1]")
        if self.budget_recheck_seconds < 0:
            raise bad("budget_recheck_seconds", "must not be negative")


class _VerifyingSession(requests.Session):
    """`session.verify` wins over REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE (plain requests lets the
    environment override a session's CA bundle, silently)."""

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        return super().merge_environment_settings(
            url, proxies, stream, self.verify if verify is None else verify, cert
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot send a {type(value).__name__} to Salesforce")


def _record_result(item: Any) -> RecordResult:
    if not isinstance(item, dict):
        return RecordResult(ok=False, error=f"unexpected result from Salesforce: {item!r}")
    if item.get("success"):
        return RecordResult(ok=True, crm_id=item.get("id"))
    errors = [e for e in item.get("errors") or [] if isinstance(e, dict)]
    codes = {str(e.get("statusCode", "")) for e in errors}
    parts = []
    for e in errors:
        text = f"{e.get('statusCode', 'UNKNOWN')}: {e.get('message', '')}"
        if e.get("fields"):
            text += f" (fields: {', '.join(map(str, e['fields']))})"
        parts.append(text)
    retryable = bool(codes) and codes <= _RETRYABLE_RECORD_CODES
    return RecordResult(ok=False, retryable=retryable, error="; ".join(parts) or "failed without an error")


class SalesforceWriter:
    """CrmWriter for Salesforce. Thread-safe; one instance per org."""

    name = "salesforce"
    max_batch = 200  # sObject Collections take at most 200 records a call

    def __init__(
        self, settings: SalesforceWriterSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.RLock()  # usage and pause state
        self._auth_lock = threading.Lock()  # one login at a time (separate, so metrics never wait on it)
        self._http = _VerifyingSession()
        self._http.verify = settings.ca_bundle or True
        self._http.hooks["response"].append(self._on_response)
        self._sf: Salesforce | None = None
        self._token: AccessToken | None = None
        self._usage: tuple[int, int] | None = None
        self._usage_checked = False
        self._next_check = 0.0
        self._refused: str | None = None  # REQUEST_LIMIT_EXCEEDED seen: why we are paused

    # --- CrmWriter -----------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        try:
            self._client()
            if not self._usage_checked:
                self._refresh_usage()
            paused = self._paused()
        except CrmError as exc:
            return False, str(exc)
        if paused:
            return False, paused
        usage = self._usage
        where = self._token.instance_url if self._token else self._settings.login_url
        return True, f"authenticated to {where}" + (f"; API usage {usage[0]}/{usage[1]}" if usage else "")

    def write_batch(self, batch: WriteBatch) -> list[RecordResult]:
        if not batch.records:
            return []
        if len(batch.records) > MAX_BATCH:
            raise CrmError(
                f"a batch holds at most {MAX_BATCH} records, got {len(batch.records)}", retryable=False
            )
        obj = self._api_name(batch.object, "object")
        if batch.operation == "upsert":
            ext = self._api_name(batch.external_id_field or "", "external id field")
            path = f"composite/sobjects/{obj}/{ext}"
            records = [{"attributes": {"type": obj}, **r.fields, ext: r.record_key} for r in batch.records]
        elif batch.operation == "update":
            path = "composite/sobjects"
            records = [{"attributes": {"type": obj}, **r.fields, "Id": r.record_key} for r in batch.records]
        else:
            raise CrmError(f"unknown operation {batch.operation!r}", retryable=False)
        try:
            body = json.dumps({"allOrNone": False, "records": records}, default=_json_default)
        except TypeError as exc:
            raise CrmError(f"{obj}: {exc}", retryable=False) from exc
        self._check_budget()
        what = f"{batch.operation} of {len(records)} {obj} records"
        timeout = self._settings.timeout
        results = self._call(lambda sf: sf.restful(path, method="PATCH", data=body, timeout=timeout), what)
        if not isinstance(results, list) or len(results) != len(records):
            got = len(results) if isinstance(results, list) else type(results).__name__
            raise CrmError(f"Salesforce {what}: expected {len(records)} results, got {got}", retryable=False)
        return [_record_result(item) for item in results]

    def read_fields(self, object: str, record_id: str, fields: Sequence[str]) -> dict[str, Any] | None:
        obj = self._api_name(object, "object")
        names = [self._api_name(f, "field") for f in fields]
        if not _RECORD_ID.match(record_id):
            return None
        self._check_budget()
        from simple_salesforce.exceptions import SalesforceResourceNotFound

        params = {"fields": ",".join(names)} if names else None
        timeout = self._settings.timeout

        def get(sf: Salesforce) -> Any:
            try:
                return sf.restful(f"sobjects/{obj}/{quote(record_id)}", params=params, timeout=timeout)
            except SalesforceResourceNotFound:
                return None

        record = self._call(get, f"read of {obj} {record_id}")
        if not isinstance(record, dict):
            return None
        return {k: v for k, v in record.items() if k != "attributes"}

    # --- more ----------------------------------------------------------------------------------

    def query(self, soql: str) -> Iterator[dict[str, Any]]:
        """Records of a SOQL query (without `attributes`), following queryMore to the end."""
        self._check_budget()
        timeout = self._settings.timeout
        page = self._call(lambda sf: sf.query(soql, timeout=timeout), "query")
        while True:
            for record in page.get("records", []):
                yield {k: v for k, v in record.items() if k != "attributes"}
            next_url = page.get("nextRecordsUrl")
            if page.get("done", True) or not next_url:
                return
            page = self._call(self._query_more(next_url), "queryMore")

    def _query_more(self, url: str) -> Callable[[Salesforce], Any]:
        timeout = self._settings.timeout
        return lambda sf: sf.query_more(url, identifier_is_url=True, timeout=timeout)

    def deploy(self, package_zip: bytes, *, sandbox: bool, check_only: bool = False) -> str:
        """Start a Metadata API deploy of a zipped package (package.xml at its root); its id."""
        # Lower-case strings: simple-salesforce writes the options into its SOAP body as given.
        flag = "true" if check_only else "false"

        def start(sf: Salesforce) -> Any:
            return sf.deploy(io.BytesIO(package_zip), sandbox=sandbox, checkOnly=flag)

        result = self._call(start, "metadata deploy")
        async_id = result.get("asyncId") if isinstance(result, dict) else None
        if not async_id:
            raise CrmError("Salesforce metadata deploy: the answer carries no deployment id", retryable=False)
        return str(async_id)

    def deploy_status(self, async_id: str) -> dict[str, Any]:
        """checkDeployStatus, as simple-salesforce reads it: state, state_detail, deployment_detail."""
        status = self._call(lambda sf: sf.checkDeployStatus(async_id), "metadata deploy status")
        return dict(status)

    def api_usage(self) -> tuple[int, int] | None:
        """(used, limit) of the org's daily API requests, as last reported by Salesforce."""
        with self._lock:
            return self._usage

    def close(self) -> None:
        self._http.close()

    # --- auth and calls ------------------------------------------------------------------------

    def _client(self) -> Salesforce:
        with self._auth_lock:
            if self._sf is None:
                from simple_salesforce.api import Salesforce

                self._token = fetch_token(self._settings, self._http)
                self._sf = Salesforce(
                    instance_url=self._token.instance_url,
                    session_id=self._token.access_token,
                    version=self._settings.api_version,
                    session=self._http,
                )
            return self._sf

    def _call(self, op: Callable[[Salesforce], T], what: str) -> T:
        from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession

        sf = self._client()
        try:
            return op(sf)
        except SalesforceExpiredSession:
            with self._auth_lock:
                if self._sf is sf:  # another thread may have re-authenticated already
                    self._sf = None
            sf = self._client()
            try:
                return op(sf)
            except (SalesforceError, OSError) as exc:
                raise self._error(exc, what, after_reauth=True) from exc
        except (SalesforceError, OSError) as exc:
            raise self._error(exc, what) from exc

    def _error(self, exc: Exception, what: str, *, after_reauth: bool = False) -> CrmError:
        from simple_salesforce.exceptions import SalesforceError

        if isinstance(exc, OSError):  # requests.RequestException included
            url = self._token.instance_url if self._token else self._settings.login_url
            problem = transport_problem(exc, url, self._settings.ca_bundle, self._settings.timeout)
            return CrmError(f"Salesforce {what} failed: {problem}", retryable=True)
        assert isinstance(exc, SalesforceError)
        status = int(exc.status)
        content: Any = exc.content
        first = content[0] if isinstance(content, list) and content and isinstance(content[0], dict) else {}
        code = str(first.get("errorCode", ""))
        message = str(first.get("message", "")) if first else str(content)[:500]
        text = f"Salesforce {what} failed: HTTP {status} {code}: {message}".replace(":  ", ": ")
        if code == "REQUEST_LIMIT_EXCEEDED":
            with self._lock:
                self._refused = f"Salesforce refused calls: REQUEST_LIMIT_EXCEEDED ({message})"
                self._next_check = self._clock() + self._settings.budget_recheck_seconds
            return CrmError(text, retryable=True)
        if status == 401 and after_reauth:
            return CrmError(text + " (even right after re-authenticating)", retryable=True)
        retryable = status >= 500 or status in (401, 408, 429) or code == "UNABLE_TO_LOCK_ROW"
        return CrmError(text, retryable=retryable)

    @staticmethod
    def _api_name(name: str, what: str) -> str:
        if not _API_NAME.match(name):
            raise CrmError(f"not a Salesforce API name for the {what}: {name!r}", retryable=False)
        return name

    # --- API budget ----------------------------------------------------------------------------

    def _on_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        m = _LIMIT_INFO.search(response.headers.get("Sforce-Limit-Info", ""))
        if m:
            self._set_usage(int(m.group(1)), int(m.group(2)))

    def _over(self, usage: tuple[int, int] | None) -> bool:
        return usage is not None and usage[1] > 0 and usage[0] >= usage[1] * self._settings.api_budget_share

    def _set_usage(self, used: int, limit: int) -> None:
        with self._lock:
            was_over = self._over(self._usage)
            self._usage = (used, limit)
            self._usage_checked = True
            if self._over(self._usage) and not was_over:
                self._next_check = self._clock() + self._settings.budget_recheck_seconds

    def _refresh_usage(self) -> None:
        """Read the org's limits (one cheap call); the response header updates the usage too."""
        timeout = self._settings.timeout
        limits = self._call(lambda sf: sf.limits(timeout=timeout), "limits")
        daily = limits.get("DailyApiRequests") if isinstance(limits, dict) else None
        if isinstance(daily, dict) and "Max" in daily and "Remaining" in daily:
            self._set_usage(int(daily["Max"]) - int(daily["Remaining"]), int(daily["Max"]))
        with self._lock:
            self._usage_checked = True
            self._refused = None

    def _paused(self) -> str | None:
        """Why calls are paused now (None if they are not), re-reading usage when due."""
        with self._lock:
            blocked = self._refused is not None or self._over(self._usage)
            due = blocked and self._clock() >= self._next_check
            if due:
                self._next_check = self._clock() + self._settings.budget_recheck_seconds
        if due:
            with contextlib.suppress(CrmError):
                self._refresh_usage()
        with self._lock:
            if self._refused is None and not self._over(self._usage):
                return None
            wait = max(self._next_check - self._clock(), 0.0)
            when = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)).strftime("%H:%M:%S UTC")
            share = f"{self._settings.api_budget_share:.0%}"
            if self._refused is not None:
                return f"{self._refused}; writes paused, next check at {when}"
            assert self._usage is not None
            used, limit = self._usage
            return (
                f"API budget: {used * 100 // limit}% of daily limit used ({used}/{limit}), writes paused "
                f"until usage is below {share} (next check at {when})"
            )

    def _check_budget(self) -> None:
        if not self._usage_checked:
            self._refresh_usage()
        reason = self._paused()
        if reason:
            raise CrmPaused(reason)


__all__ = ["SalesforceWriter", "SalesforceWriterSettings"]
