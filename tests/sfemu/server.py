"""SalesforceEmulator: a real HTTPS server on 127.0.0.1 that speaks enough Salesforce for
simple-salesforce and plain requests: OAuth token endpoint, REST sObjects, sObject Collections,
SOQL query/queryMore, limits, the Sforce-Limit-Info header, Salesforce's error shapes, and the
Metadata API's deploy/checkDeployStatus (SOAP, see metadata.py).

    with SalesforceEmulator() as sf:
        sf.register_consumer("3MVG9...", certificate_pem=cert, approved_users=[sf.username])
        requests.post(f"{sf.base_url}/services/oauth2/token", ..., verify=sf.ca_path)

Faults (thread-safe): expire_sessions, set_api_usage, lock_rows, reject_records, fail_next,
slow_down, fail_next_deploy. Inspection: calls, records(), record(), deployments,
validation_rules(), reset(). Acting as a person in the CRM: login_as(username) gives an access
token, rest_session(username) a requests session calling REST as that user; deployed validation
rules then see that user ($User.Id, $User.Username).
The same over HTTP under /__emulator/ (see control.py) for tests that drive a subprocess.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import ssl
import tempfile
import threading
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_public_key
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from tests.sfemu import control, oauth
from tests.sfemu.formula import ValidationRule
from tests.sfemu.ids import is_valid_id, to18
from tests.sfemu.metadata import Deployment, Metadata, fault
from tests.sfemu.rest import Rest, RestError, json_response
from tests.sfemu.state import Call, Consumer, OrgState, RecordFault, sf_datetime
from tests.sfemu.tls import make_ca, make_server_cert

UI_CLIENT_ID = "SfdcUI"  # the client of sessions from login_as (a person in the browser)
_DATA_RE = re.compile(r"^/services/data/v(\d+\.\d)(?:/(.*))?$")
_METADATA_RE = re.compile(r"^/services/Soap/m/(\d+\.\d)/deployRequest(?:/[A-Za-z0-9]+)?$")
_FAILURES = {
    500: (
        "UNKNOWN_EXCEPTION",
        "An unexpected error occurred. Please include this ErrorId if you contact support: "
        "1234567890-12345 (-123456789)",
    ),
    502: ("SERVER_UNAVAILABLE", "Bad gateway"),
    503: ("SERVER_UNAVAILABLE", "Server temporarily unavailable. Please try again later."),
}


def _body_records(request: Request) -> int:
    """Records a collection request carried, even if it was refused before being read."""
    body = request.get_json(silent=True) if request.method in ("POST", "PATCH") else None
    if isinstance(body, dict) and isinstance(body.get("records"), list):
        return len(body["records"])
    return 0


class VerifyingSession(requests.Session):
    """A requests.Session whose `verify` wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (plain
    requests lets those environment variables override `session.verify`)."""

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        return super().merge_environment_settings(
            url, proxies, stream, self.verify if verify is None else verify, cert
        )


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:
        pass


class SalesforceEmulator:
    """An in-memory Salesforce org behind HTTPS. `base_url` is both login URL and instance URL."""

    def __init__(
        self,
        *,
        api_limit: int = 100_000,
        api_used: int = 0,
        query_batch_size: int = 2000,
        min_version: float = 20.0,
        max_version: float = 66.0,
        jwt_leeway_seconds: int = 0,
        extra_audiences: Iterable[str] = (),
        username: str = "integration@onrecord.example",
    ) -> None:
        self._config = (api_limit, api_used)
        self._state = OrgState(api_limit=api_limit, api_used=api_used)
        self.query_batch_size = query_batch_size
        self.versions = (min_version, max_version)
        self.jwt_leeway_seconds = jwt_leeway_seconds
        self._extra_audiences = frozenset(a.rstrip("/") for a in extra_audiences)
        self.username = username
        self._state.add_user(username)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._tmp: Path | None = None
        self._stopping = threading.Event()
        self.deploy_polls = 1  # checkDeployStatus answers InProgress this many times first
        self._deployments: dict[str, Deployment] = {}
        self._deploy_failures: list[tuple[str, str]] = []
        self.errors: list[str] = []  # tracebacks of unexpected exceptions (a test should find none)
        self.port = 0

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> SalesforceEmulator:
        if self._server is not None:
            return self
        self._tmp = Path(tempfile.mkdtemp(prefix="sfemu-"))
        ca_cert, ca_key = make_ca()
        (self._tmp / "ca.pem").write_bytes(ca_cert.public_bytes(Encoding.PEM))
        key_path, cert_path = make_server_cert(ca_cert, ca_key).write(self._tmp, "server")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_path, key_path)
        server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        # Handshake in the request thread (not in accept()), so a client that fails verification
        # or stalls cannot block the server.
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        server.ssl_context = ctx
        self._server = server
        self.port = server.port
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._server = self._thread = self._tmp = None

    def __enter__(self) -> SalesforceEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> str:
        """PEM file of the CA that signed the server certificate (pass as `verify=`)."""
        if self._tmp is None:
            raise RuntimeError("the emulator is not started")
        return str(self._tmp / "ca.pem")

    def http_session(self) -> requests.Session:
        """A requests session that trusts the emulator's CA (and only it)."""
        session = VerifyingSession()
        session.verify = self.ca_path
        return session

    @property
    def org_id(self) -> str:
        return self._state.org_id

    # --- set-up --------------------------------------------------------------------------------

    def add_user(self, username: str) -> str:
        """Create a user (if new); return its id."""
        return self._state.add_user(username)

    def user_id(self, username: str | None = None) -> str:
        return self._state.users[username or self.username]

    def login_as(self, username: str) -> str:
        """An access token for this user (created if new), as if the person had logged in to the
        CRM: REST calls with it act as that user (CreatedById, LastModifiedById, and $User in
        validation rules). No connected app is involved."""
        if username not in self._state.users:
            self._state.add_user(username)
        return self._state.new_session(username, UI_CLIENT_ID).token

    def rest_session(self, username: str | None = None) -> requests.Session:
        """A requests session that trusts the emulator and calls it as this user (the integration
        user if None): `Authorization: Bearer <login_as(username)>`."""
        session = self.http_session()
        session.headers["Authorization"] = f"Bearer {self.login_as(username or self.username)}"
        return session

    def data_url(self, path: str, version: str = "62.0") -> str:
        """The REST URL of `path` under /services/data/v<version>/ (e.g. "sobjects/Account/001...")."""
        return f"{self.base_url}/services/data/v{version}/{path.lstrip('/')}"

    def register_consumer(
        self,
        client_id: str,
        *,
        certificate_pem: bytes | str | None = None,
        client_secret: str | None = None,
        run_as: str | None = None,
        approved_users: Iterable[str] | None = None,
    ) -> None:
        """Register a connected app: the certificate (or public key) for JWT bearer, the secret and
        run-as user for client credentials, and the users pre-authorized for JWT (None = all)."""
        public_key: RSAPublicKey | None = None
        if certificate_pem is not None:
            pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            loaded = (
                x509.load_pem_x509_certificate(pem).public_key()
                if b"CERTIFICATE" in pem
                else load_pem_public_key(pem)
            )
            if not isinstance(loaded, RSAPublicKey):
                raise ValueError("the connected app certificate must hold an RSA key (RS256)")
            public_key = loaded
        if run_as is not None:
            self._state.add_user(run_as)
        users = frozenset(approved_users) if approved_users is not None else None
        with self._state.lock:
            self._state.consumers[client_id] = Consumer(client_id, public_key, client_secret, run_as, users)

    def define_object(
        self,
        name: str,
        fields: Iterable[str] | None = None,
        *,
        strict: bool = False,
        external_ids: Iterable[str] | None = None,
    ) -> None:
        """Declare an object. Undeclared objects are created on first write, accepting any field."""
        self._state.define_object(
            name,
            tuple(fields or ()),
            strict=strict,
            external_ids=tuple(external_ids) if external_ids is not None else None,
        )

    def insert_record(self, sobject: str, fields: dict[str, Any]) -> str:
        """Seed a record directly (not an API call); return its id."""
        odef = self._state.object_def(sobject, create=True)
        assert odef is not None
        values = {}
        for key, value in fields.items():
            canonical = self._state.field_name(odef, key)
            if canonical is None:
                raise ValueError(f"no field {key} on {odef.name}")
            values[canonical] = value
        return self._state.insert(odef, values, self.user_id())

    def define_metadata_type(
        self, name: str, fields: Iterable[str], relationships: dict[str, str] | None = None
    ) -> None:
        """Declare a custom metadata type (...__mdt) and its custom fields, as a deploy does; SOQL
        then refuses fields it does not have (INVALID_FIELD), as Salesforce does. `relationships`:
        metadata relationship field -> the custom metadata type it points at."""
        from tests.sfemu.state import METADATA_RECORD_FIELDS

        odef = self._state.define_object(name, (*METADATA_RECORD_FIELDS, *fields), strict=True)
        with self._state.lock:
            odef.relationships.update({k.lower(): v for k, v in (relationships or {}).items()})

    def put_metadata_record(
        self, type_name: str, developer_name: str, fields: dict[str, Any], *, by: str | None = None
    ) -> str:
        """Create or change a custom metadata record as user `by` (a username; created if new;
        default the integration user) does in Setup; return its id. A metadata relationship
        field may be given the related record's DeveloperName: it is stored as that record's id."""
        values = dict(fields)
        for key, value in fields.items():
            target = self._relationship_target(type_name, key)
            if target is not None and isinstance(value, str):
                values[key] = next(
                    (r["Id"] for r in self.records(target) if r.get("DeveloperName") == value), value
                )
        user = self.add_user(by) if by else self.user_id()
        return self._state.put_metadata_record(type_name, developer_name, values, user)

    def delete_metadata_record(self, type_name: str, developer_name: str) -> bool:
        """Delete a custom metadata record (Setup's Del link); whether there was one."""
        return self._state.delete_metadata_record(type_name, developer_name)

    def _relationship_target(self, type_name: str, field_name: str) -> str | None:
        """The custom metadata type a metadata relationship field points at (by a deploy's
        referenceTo, or the OnRecord types' own), if it is one."""
        with self._state.lock:
            odef = self._state.object_def(type_name, create=False)
            known = odef.relationships.get(field_name.lower()) if odef else None
        return known

    def add_login_history(
        self,
        user_id: str,
        login_time: dt.datetime,
        *,
        login_type: str = "Application",
        application: str = "Browser",
        status: str = "Success",
        source_ip: str = "203.0.113.10",
        platform: str = "Windows 10",
    ) -> str:
        """Seed one LoginHistory row (LoginType e.g. "Application" for UI logins, "Remote Access 2.0")."""
        return self.insert_record(
            "LoginHistory",
            {
                "UserId": user_id,
                "LoginTime": sf_datetime(login_time),
                "LoginType": login_type,
                "Application": application,
                "Status": status,
                "SourceIp": source_ip,
                "Platform": platform,
            },
        )

    # --- faults --------------------------------------------------------------------------------

    def expire_sessions(self) -> None:
        """Invalidate every access token: the next REST call answers 401 INVALID_SESSION_ID."""
        with self._state.lock:
            self._state.sessions.clear()

    def set_api_usage(self, used: int, limit: int | None = None) -> None:
        with self._state.lock:
            self._state.api_used = used
            if limit is not None:
                self._state.api_limit = limit

    @property
    def api_usage(self) -> tuple[int, int]:
        with self._state.lock:
            return self._state.api_used, self._state.api_limit

    def _keys(self, keys: Iterable[str]) -> list[str]:
        out: list[str] = []
        for key in keys:
            out.append(key)
            if is_valid_id(key):
                out.append(to18(key))
        return out

    def lock_rows(self, sobject: str, keys: Iterable[str], attempts: int = 1) -> None:
        """The next `attempts` writes of these records (ids or external id values) fail with
        UNABLE_TO_LOCK_ROW (a per-record error inside sObject Collections results)."""
        with self._state.lock:
            for key in self._keys(keys):
                self._state.faults.locks[(sobject.lower(), key)] = attempts

    def reject_records(
        self,
        sobject: str,
        keys: Iterable[str],
        message: str,
        *,
        status_code: str = "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        fields: Iterable[str] = (),
    ) -> None:
        """Every write of these records fails (a validation rule, say) until clear_faults()."""
        fault = RecordFault(status_code, message, tuple(fields))
        with self._state.lock:
            for key in self._keys(keys):
                self._state.faults.rejects[(sobject.lower(), key)] = fault

    def fail_next(self, count: int = 1, *, status: int = 503) -> None:
        """The next `count` REST calls answer `status` (500, 502, 503) with Salesforce's error body."""
        code, message = _FAILURES.get(status, ("UNKNOWN_EXCEPTION", "An unexpected error occurred."))
        with self._state.lock:
            self._state.faults.fail_next.extend([(status, code, message)] * count)

    def slow_down(self, seconds: float, count: int | None = None) -> None:
        """Delay the next `count` requests (all, if None) by `seconds`; slow_down(0) to stop."""
        with self._state.lock:
            self._state.faults.delay_seconds = seconds
            self._state.faults.delay_count = count

    def fail_next_deploy(self, file_name: str, problem: str) -> None:
        """The next deploy fails on this file of the package (e.g. "objects/Opportunity.object")
        with this problem, as a componentFailure; the deploy then changes nothing."""
        with self._state.lock:
            self._deploy_failures.append((file_name, problem))

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults = type(self._state.faults)()
            self._deploy_failures.clear()

    # --- inspection ----------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._state.lock:
            return list(self._state.calls)

    def records(self, sobject: str) -> list[dict[str, Any]]:
        odef = self._state.object_def(sobject, create=False)
        if odef is None:
            return []
        with self._state.lock:
            return [dict(r) for r in self._state.records.get(odef.name, {}).values()]

    def record(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        odef = self._state.object_def(sobject, create=False)
        found = self._state.find(odef, record_id) if odef else None
        return dict(found) if found else None

    def validation_rules(self, sobject: str) -> list[ValidationRule]:
        """The validation rules deployed on this object (active or not), in deploy order."""
        odef = self._state.object_def(sobject, create=False)
        with self._state.lock:
            return list(odef.validation_rules.values()) if odef else []

    @property
    def deployments(self) -> list[Deployment]:
        """Every deploy() received, oldest first, with the zip and the options it carried."""
        with self._state.lock:
            return list(self._deployments.values())

    def reset(self) -> None:
        """Forget records, calls, faults and sessions; restore the initial API usage.
        The org id, users (with their ids) and connected apps stay."""
        with self._state.lock:
            old = self._state
            state = OrgState(api_limit=self._config[0], api_used=self._config[1])
            state.ids, state.org_id = old.ids, old.org_id
            state.users, state.consumers = dict(old.users), dict(old.consumers)
            state.records["User"] = {uid: dict(old.records["User"][uid]) for uid in old.users.values()}
            self._state = state
            self._deployments.clear()
            self._deploy_failures.clear()

    # --- HTTP ----------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            response = self._handle(request)
        except Exception as exc:
            self.errors.append(traceback.format_exc())
            response = json_response(
                [{"message": f"emulator bug: {exc!r}", "errorCode": "UNKNOWN_EXCEPTION", "fields": []}], 500
            )
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/__emulator/"):
            return control.handle(self, request)
        delay = self._state.take_delay()
        if delay:
            self._stopping.wait(delay)
        state = self._state
        if path == "/services/oauth2/token":
            audiences = frozenset({self.base_url, *self._extra_audiences})
            response = oauth.token_endpoint(
                state, request, base_url=self.base_url, audiences=audiences, leeway=self.jwt_leeway_seconds
            )
            state.log(Call(request.method, path, response.status_code))
            return response
        if path.rstrip("/") == "/services/data":
            lo, hi = self.versions
            versions = [f"{v / 10:.1f}" for v in range(int(lo * 10), int(hi * 10) + 1, 10)]
            return json_response(
                [{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in versions]
            )
        if _METADATA_RE.match(path) and request.method == "POST":
            response = self._metadata(request)
            state.log(Call(request.method, path, response.status_code, 0, True))
            return response
        m = _DATA_RE.match(path)
        if m is None or not self.versions[0] <= float(m.group(1)) <= self.versions[1]:
            response = RestError(404, "NOT_FOUND", "The requested resource does not exist").response()
            state.log(Call(request.method, path, 404))
            return response
        response, records, counted = self._rest(request, m.group(1), m.group(2) or "")
        if not records:
            records = _body_records(request)
        with state.lock:
            response.headers["Sforce-Limit-Info"] = f"api-usage={state.api_used}/{state.api_limit}"
        state.log(Call(request.method, path, response.status_code, records, counted))
        return response

    def _metadata(self, request: Request) -> Response:
        """A Metadata API SOAP call: the session comes in the SOAP header, errors are SOAP faults."""
        state = self._state
        match = re.search(rb"<(?:\w+:)?sessionId>([^<]+)</(?:\w+:)?sessionId>", request.get_data())
        with state.lock:
            session = state.sessions.get(match.group(1).decode().strip()) if match else None
            if session is None:
                return fault(
                    "INVALID_SESSION_ID", "Invalid Session ID found in SessionHeader: Illegal Session"
                )
            if state.api_used >= state.api_limit:
                return fault("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            state.api_used += 1
            metadata = Metadata(state, self._deployments, polls=self.deploy_polls)
            return metadata.handle(request, session.user_id, self._deploy_failures)

    def _rest(self, request: Request, version: str, rest_path: str) -> tuple[Response, int, bool]:
        state = self._state
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        with state.lock:
            session = state.sessions.get(token.strip()) if scheme.lower() in ("bearer", "oauth") else None
            if session is None:
                return RestError(401, "INVALID_SESSION_ID", "Session expired or invalid").response(), 0, False
            if state.api_used >= state.api_limit:
                return (
                    RestError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.").response(),
                    0,
                    False,
                )
            state.api_used += 1
        failure = state.take_failure()
        if failure is not None:
            status, code, message = failure
            return RestError(status, code, message).response(), 0, True
        rest = Rest(state, request, version, session, self.query_batch_size)
        try:
            response = rest.dispatch(rest_path)
        except RestError as err:
            response = err.response()
        return response, rest.records, True
