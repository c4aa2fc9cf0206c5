"""DataverseEmulator: a real HTTPS server on 127.0.0.1 that speaks enough Dataverse (Web API
v9.x) and Microsoft Entra ID (client credentials) for msal and requests.

    with DataverseEmulator() as dv:
        dv.url, dv.ca_path, dv.tenant_id, dv.client_id, dv.client_secret   # sign in with msal
        dv.state                                                             # see below

`url` is both the environment URL (Web API under /api/data/v9.2/) and the authority host
(/{tenant}/v2.0/.well-known/openid-configuration, /{tenant}/oauth2/v2.0/token).

STATE (tests/dvemu/state.py, `DataverseState`; hold `state.lock` (re-entrant) to read or change):

    state.entities: dict[str, dict]         # per table LogicalName:
        {"LogicalName": "opportunity", "EntitySetName": "opportunities",
         "PrimaryIdAttribute": "opportunityid", "PrimaryNameAttribute": "name",
         "Attributes": {logical name: {"AttributeType": "String" | "Memo" | "Integer" | "Decimal"
                                        | "Double" | "Money" | "Boolean" | "DateTime" | "Picklist"
                                        | "Lookup" | "Uniqueidentifier" | ...,
                                        # Lookup only: the tables it points to, and the single-valued
                                        # navigation property a client binds with
                                        # ("<NavigationProperty>@odata.bind"; Dataverse names a
                                        # custom lookup's after its SchemaName, e.g. "onr_Leader")
                                        "Targets": ["systemuser"], "NavigationProperty": "onr_Leader",
                                        # optional: "SchemaName", anything else metadata wants
                                        }},
         "Keys": [{"SchemaName": "onr_Key", "LogicalName": "onr_key", "KeyAttributes": ["onr_key"]}]}
        Seeded: opportunity (opportunities) and systemuser (systemusers). Add tables with
        `state.add_entity(...)` or by writing the dict directly (EntitySetName must be unique).
    state.tables: dict[str, dict[str, dict]]  # EntitySetName -> {guid (lower case): record}
        A record maps attribute logical names to values (the primary id included); a lookup is
        stored as its GUID under the attribute's logical name (the emulator answers it as
        "_<logical>_value"). systemusers live here too: state.tables["systemusers"].
    state.extra: dict[str, Any]   # free room for extension modules, one key per module
                                  # ("people", "metadata"); the emulator never touches it
    state.calls: list[Call]       # every request: Call(method, path, headers, body, status, batch)
                                  # path with its query string, percent-encoded as sent; requests
                                  # inside a $batch are logged too (decoded), with `batch` = the
                                  # $batch's boundary, before the $batch itself
    state.tokens                  # issued access tokens (see state.py)
    state.new_guid() -> str; state.entity(logical) / state.entity_by_set(set) -> dict | None

THE EMULATOR (DataverseEmulator): seeding add_user(fullname, ...) -> systemuserid,
add_record(table, values) -> id, state.add_entity/add_attributes/add_key, tests.dvemu.model.
provision(state) (OnRecord's tables and columns as provisioned); faults fail_next(count, status=429,
retry_after=1, code=, message=) (top-level requests), expire_tokens(), fail_record(id or key value,
code, message, status=400, times=None) (in a $batch or not), slow_down(seconds, count),
set_requests_remaining(n), clear_faults(); inspection calls, api_calls(), records(set),
record(set, id), errors (tracebacks: a test should find none); access_token(), http_session().
What it answers, with Microsoft's pages: data.py (rows, table definitions), batch.py ($batch),
identity.py (Entra ID), odata.py (error shapes and codes).

EXTENSIONS: at start-up the server imports `tests.dvemu.people` and `tests.dvemu.metadata` (each
only if it exists) and calls its `register(app: flask.Flask, state: DataverseState) -> None`.
register() adds Flask routes under "/api/data/v<version>/..." (e.g.
`@app.route("/api/data/v<version>/systemusers", methods=["GET"])`). Werkzeug prefers a route
with more literal text over the emulator's catch-all `/api/data/v<version>/<path:rest>`, so an
extension's route wins for its paths; a path it does not serve falls through to the built-in
handling. Every /api/data/ request, an extension's included, has already passed the emulator's
before-request steps (bearer token check, 401 like Dataverse; fault injection, fail_next) and is
logged in state.calls after it is answered. Requests inside a $batch are routed through the same
Flask app (so extension routes work there too). Answer with `tests.dvemu.odata` helpers:
`json_response(body, status)`,
`error_response(status, code, message)` (Dataverse's {"error": {"code": "0x...", "message"}}),
`no_content(entity_id_url)`; and `odata.parse_key`, `odata.select` for URLs. Extensions must not
edit this file or state.py's existing names; keep their data in state.tables/entities/extra.
"""

from __future__ import annotations

import importlib
import shutil
import ssl
import tempfile
import threading
import traceback
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from tests.dvemu import identity, odata
from tests.dvemu.batch import Batch
from tests.dvemu.data import Data
from tests.dvemu.state import GUID, Call, DataverseState, Failure, RecordFault, Token
from tests.sfemu.tls import make_ca, make_server_cert

API_VERSION = "9.2"
VERSIONS = frozenset({"9.0", "9.1", "9.2"})
EXTENSIONS = ("tests.dvemu.people", "tests.dvemu.metadata")
_FAILURE_MESSAGES = {
    500: ("0x80040216", "An unexpected error occurred."),
    502: ("", "Bad Gateway"),
    503: ("", "The service is temporarily unavailable. Please try again later."),
    504: ("", "Gateway Timeout"),
}


class VerifyingSession(requests.Session):
    """A requests.Session whose `verify` wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE."""

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        return super().merge_environment_settings(
            url, proxies, stream, self.verify if verify is None else verify, cert
        )


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:
        pass


class DataverseEmulator:
    """An in-memory Dataverse environment and its Entra tenant behind HTTPS on 127.0.0.1."""

    def __init__(
        self,
        *,
        tenant_id: str | None = None,
        client_id: str | None = None,
        client_secret: str = "dvemu-client-secret-value",  # noqa: S107 (a test double's)
        application_user_id: str | None = None,
        token_lifetime: int = 3599,
    ) -> None:
        self.tenant_id = (tenant_id or str(uuid.uuid4())).lower()
        self.client_id = (client_id or str(uuid.uuid4())).lower()
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.state = DataverseState()
        self.application_user_id = self.add_user(
            "# OnRecord", user_id=application_user_id, application_id=self.client_id
        )
        self.who_am_i = {
            "BusinessUnitId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dvemu-bu:{self.tenant_id}")),
            "UserId": self.application_user_id,
            "OrganizationId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dvemu-org:{self.tenant_id}")),
        }
        self.errors: list[str] = []  # tracebacks of unexpected exceptions (a test should find none)
        self.port = 0
        self.app: Flask | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._tmp: Path | None = None
        self._stopping = threading.Event()
        self._delays: list[float] = []

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> DataverseEmulator:
        if self._server is not None:
            return self
        self.app = self._build_app()
        self._tmp = Path(tempfile.mkdtemp(prefix="dvemu-"))
        ca_cert, ca_key = make_ca("dvemu test CA")
        (self._tmp / "ca.pem").write_bytes(ca_cert.public_bytes(Encoding.PEM))
        key_path, cert_path = make_server_cert(ca_cert, ca_key).write(self._tmp, "server")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_path, key_path)
        server = make_server("127.0.0.1", 0, self.app, threaded=True, request_handler=_QuietHandler)
        # Handshake in the request thread, so a client that fails verification cannot block accept().
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

    def __enter__(self) -> DataverseEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The environment URL (https://127.0.0.1:<port>); also the authority host."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"https://127.0.0.1:{self.port}"

    @property
    def service_root(self) -> str:
        return f"{self.url}/api/data/v{API_VERSION}/"

    @property
    def ca_path(self) -> str:
        """PEM file of the CA that signed the server certificate."""
        if self._tmp is None:
            raise RuntimeError("the emulator is not started")
        return str(self._tmp / "ca.pem")

    def access_token(self) -> str:
        """A valid access token, as if the token endpoint had issued it to the app."""
        value = uuid.uuid4().hex + uuid.uuid4().hex
        with self.state.lock:
            self.state.tokens[value] = Token(value, self.client_id, f"{self.url}/.default")
        return value

    def http_session(self, *, signed_in: bool = True) -> requests.Session:
        """A requests session trusting the emulator's CA (only), signed in as the app."""
        session = VerifyingSession()
        session.verify = self.ca_path
        if signed_in:
            session.headers["Authorization"] = f"Bearer {self.access_token()}"
        session.headers.update(
            {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
        )
        return session

    # --- set-up ----------------------------------------------------------------------------------

    def add_user(
        self,
        fullname: str,
        *,
        user_id: str | None = None,
        email: str | None = None,
        azure_ad_object_id: str | None = None,
        application_id: str | None = None,
        disabled: bool = False,
    ) -> str:
        """A systemusers row; its id."""
        guid = (user_id or self.state.new_guid()).lower()
        row = {
            "systemuserid": guid,
            "fullname": fullname,
            "internalemailaddress": email,
            "domainname": email,
            "azureactivedirectoryobjectid": azure_ad_object_id,
            "applicationid": application_id,
            "isdisabled": disabled,
            "accessmode": 4 if application_id else 0,  # 4: non-interactive (application user)
        }
        with self.state.lock:
            self.state.tables.setdefault("systemusers", {})[guid] = row
            self.state.etags[guid] = self.state.next_version()
        return guid

    def add_record(self, table: str, values: dict[str, Any]) -> str:
        """Seed a row (not an API call) in a table given by entity set or logical name; its id."""
        with self.state.lock:
            entity = self.state.entity_by_set(table) or self.state.entity(table)
            if entity is None:
                raise KeyError(f"no table {table}")
            pk = entity["PrimaryIdAttribute"]
            guid = str(values.get(pk) or self.state.new_guid()).lower()
            unknown = set(values) - set(entity["Attributes"])
            if unknown:
                raise KeyError(f"no columns {sorted(unknown)} on {entity['LogicalName']}")
            self.state.tables.setdefault(entity["EntitySetName"], {})[guid] = {**values, pk: guid}
            self.state.etags[guid] = self.state.next_version()
        return guid

    def records(self, entity_set: str) -> list[dict[str, Any]]:
        with self.state.lock:
            return [dict(r) for r in self.state.tables.get(entity_set, {}).values()]

    def record(self, entity_set: str, guid: str) -> dict[str, Any] | None:
        with self.state.lock:
            found = self.state.tables.get(entity_set, {}).get(guid.lower())
            return dict(found) if found is not None else None

    # --- faults ----------------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 429,
        retry_after: float | None = 1,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """The next `count` top-level Web API requests answer `status` with Dataverse's error body
        (429: the "number of requests" service protection error) and, if given, Retry-After."""
        if status == 429:
            default_code = odata.THROTTLED
            default_message = odata.THROTTLE_MESSAGES.get(
                code or default_code, odata.THROTTLE_MESSAGES[default_code]
            )
        else:
            default_code, default_message = _FAILURE_MESSAGES.get(status, ("", "Error"))
        failure = Failure(
            status, code if code is not None else default_code, message or default_message, retry_after
        )
        with self.state.lock:
            self.state.failures.extend([failure] * count)

    def expire_tokens(self) -> None:
        """Every access token issued so far expires: requests with one answer 401."""
        with self.state.lock:
            for token in self.state.tokens.values():
                token.expired = True

    def fail_record(
        self, row: str, code: str, message: str, *, status: int = 400, times: int | None = None
    ) -> None:
        """Writes of this row (its id, or an alternate key value) fail with this error, `times`
        times (every time if None), inside a $batch or not."""
        with self.state.lock:
            self.state.record_faults[row.lower()] = RecordFault(status, code, message, times)

    def slow_down(self, seconds: float, count: int = 1) -> None:
        """Delay the next `count` requests by `seconds`."""
        with self.state.lock:
            self._delays.extend([seconds] * count)

    def set_requests_remaining(self, remaining: int) -> None:
        """What x-ms-ratelimit-burst-remaining-xrm-requests says next (it counts down per request)."""
        with self.state.lock:
            self.state.requests_remaining = remaining

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.failures.clear()
            self.state.record_faults.clear()
            self._delays.clear()

    # --- inspection ------------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self.state.lock:
            return list(self.state.calls)

    def api_calls(self, *, top_level: bool = True) -> list[Call]:
        """Calls under /api/data/ (only those outside batches, unless top_level is False)."""
        return [
            c for c in self.calls if c.path.startswith("/api/data/") and (c.batch is None or not top_level)
        ]

    # --- HTTP ------------------------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask("tests.dvemu")
        state = self.state

        @app.before_request
        def before() -> Response | None:
            request.get_data(cache=True)  # kept for the call log (form parsing reads the cache)
            with state.lock:
                delay = (
                    self._delays.pop(0) if self._delays and not request.environ.get("dvemu.batch") else 0.0
                )
            if delay:
                self._stopping.wait(delay)
            if not request.path.startswith("/api/data/"):
                return None
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            with state.lock:
                token = state.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
                valid = token is not None and not token.expired
            if not valid:
                # Dataverse answers an expired or missing token with an empty 401 and a challenge.
                response = Response(status=401)
                response.headers["WWW-Authenticate"] = (
                    f"Bearer authorization_uri={self.url}/{self.tenant_id}/oauth2/authorize, "
                    f"resource_id={self.url}/"
                )
                return response
            if not request.environ.get("dvemu.batch"):
                failure = state.take_failure()
                if failure is not None:
                    headers = (
                        {} if failure.retry_after is None else {"Retry-After": f"{failure.retry_after:g}"}
                    )
                    return odata.error_response(failure.status, failure.code, failure.message, headers)
            return None

        @app.after_request
        def after(response: Response) -> Response:
            in_batch = request.environ.get("dvemu.batch")
            if request.path.startswith("/api/data/") and not in_batch and response.status_code != 401:
                with state.lock:
                    state.requests_remaining = max(state.requests_remaining - 1, 0)
                    remaining = state.requests_remaining
                response.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] = str(remaining)
                response.headers["x-ms-ratelimit-time-remaining-xrm-requests"] = "1,199,500.00"
            # As sent (percent-encoding kept) when the server saw it; decoded inside a $batch.
            path = request.environ.get("RAW_URI") or request.full_path.removesuffix("?")
            state.log(
                Call(
                    request.method,
                    path,
                    dict(request.headers.items()),
                    request.get_data(cache=True),
                    response.status_code,
                    in_batch,
                )
            )
            return response

        @app.errorhandler(HTTPException)
        def http_error(exc: HTTPException) -> Response:
            status = exc.code or 500
            return odata.error_response(
                status, odata.NO_SEGMENT if status == 404 else "", exc.description or ""
            )

        @app.errorhandler(Exception)
        def bug(exc: Exception) -> Response:
            self.errors.append(traceback.format_exc())
            return odata.error_response(500, "0x80040216", f"emulator bug: {exc!r}")

        @app.get("/<tenant>/v2.0/.well-known/openid-configuration")
        def openid_configuration(tenant: str) -> Response:
            return identity.discovery(self.url, tenant, self.tenant_id)

        @app.post("/<tenant>/oauth2/v2.0/token")
        def token(tenant: str) -> Response:
            return identity.token(
                state,
                request,
                tenant=tenant,
                known_tenant=self.tenant_id,
                client_id=self.client_id,
                client_secret=self.client_secret,
                resource=self.url,
                lifetime=self.token_lifetime,
            )

        @app.post("/api/data/v<version>/$batch")
        def batch(version: str) -> Response:
            if version not in VERSIONS:
                return odata.error_response(
                    404, odata.NO_SEGMENT, f"Resource not found for the segment 'v{version}'."
                )
            return Batch(app, state, request).run()

        @app.route("/api/data/v<version>/<path:rest>", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
        def data(version: str, rest: str) -> Response:
            if version not in VERSIONS:
                return odata.error_response(
                    404, odata.NO_SEGMENT, f"Resource not found for the segment 'v{version}'."
                )
            root = f"{self.url}/api/data/v{version}/"
            return Data(state, request, root, self.who_am_i).handle(rest)

        for name in EXTENSIONS:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise  # the module exists but something it imports does not: say so
                continue
            module.register(app, state)
        return app


__all__ = ["GUID", "DataverseEmulator", "VerifyingSession"]
