"""The one receive path every source goes through: authenticate, parse, store, then acknowledge.

A source supplies four small functions; this module does the ordering, the error handling,
the size limit and the metrics, so no source can acknowledge what is not durable.

It runs as plain WSGI in front of Flask (`HookRouter`), for the `/hooks/...` paths only. Why:
under load, Flask's request context, hooks and response objects cost more CPU than everything
OnRecord itself does with an event, and with request threads that cost is paid again in GIL
contention (docs/benchmarks.md: 2,620-2,860 then 3,500-3,970 requests/s on 16 threads per
worker, same machine). Everything else OnRecord serves stays in Flask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from gunicorn.http.errors import NoMoreData, ParseException
from prometheus_client import Counter
from werkzeug.datastructures import EnvironHeaders
from werkzeug.http import HTTP_STATUS_CODES

from plugin import logs, metrics
from plugin.events import Event
from plugin.identity import canonical_event
from plugin.inbox import StoreError, StoreResult

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from plugin.runtime import Runtime

log = logging.getLogger(__name__)


class Rejected(Exception):
    """The request is refused. `reason` is machine-readable and is the metric label."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Incoming:
    """What a source's functions get to look at."""

    environ: Mapping[str, Any]
    headers: EnvironHeaders  # case-insensitive, read from the environ on demand
    body: bytes
    digest: str  # sha256 hex of the body: the evidence kept with each event
    runtime: Runtime

    def query(self, name: str) -> str:
        """The first value of a query-string parameter, or ""."""
        values = parse_qs(self.environ.get("QUERY_STRING", ""), keep_blank_values=True).get(name)
        return values[0] if values else ""


@dataclass
class Parsed:
    """A source's reading of one request."""

    events: Sequence[Event]
    ignored: dict[str, int] = field(default_factory=dict)  # reason -> count, answered 200


@dataclass(frozen=True)
class Reply:
    """What goes back to the sender."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    def with_header(self, name: str, value: str) -> Reply:
        """The same reply with one more header."""
        return dataclasses.replace(self, headers=(*self.headers, (name, value)))


@dataclass(frozen=True)
class Source:
    """How one sender is received. `authenticate` returns the sender's identity."""

    name: str
    authenticate: Callable[[Incoming], str]
    parse: Callable[[Incoming, str], Parsed]
    acknowledge: Callable[[StoreResult, Parsed], Reply]
    refuse: Callable[[Rejected], Reply]


def receive(source: Source, environ: WSGIEnvironment, rt: Runtime) -> Reply:
    """Handle one request for `source`: the reply is an acknowledgement only if all is durable."""
    _counter(metrics.REQUESTS, source.name).inc()
    try:
        if environ.get("REQUEST_METHOD") != "POST":
            raise Rejected(405, "method_not_allowed", "only POST is accepted here")
        server = rt.config.server
        body = _read_body(environ, server.max_body_bytes, server.body_timeout_seconds)
        incoming = Incoming(
            environ=environ,
            headers=EnvironHeaders(environ),
            body=body,
            digest=hashlib.sha256(body).hexdigest(),
            runtime=rt,
        )
        sender = source.authenticate(incoming)  # before anything reads the payload
        parsed = source.parse(incoming, sender)
        # One identity per record, whichever source named it (15- or 18-character id, GUID case).
        parsed.events = [canonical_event(e) for e in parsed.events]
        try:
            result = (
                rt.committer.store(parsed.events, rt.config.server.store_timeout_seconds)
                if parsed.events
                else StoreResult(0, 0)
            )
        except StoreError as exc:
            raise Rejected(503, "store_failed", "could not store the events; retry later") from exc
    except Rejected as exc:
        _counter(metrics.REJECTED, source.name, exc.reason).inc()
        log.warning(
            "request refused",
            extra={"source": source.name, "reason": exc.reason, "status": exc.status, "detail": exc.message},
        )
        reply = source.refuse(exc)
        if exc.status == 405:
            return reply.with_header("Allow", "POST")
        if exc.status in (400, 408) and exc.reason in ("body_timeout", "bad_body", "incomplete_body"):
            return reply.with_header(*CLOSE)  # the stream is in an unknown state: close it
        return reply
    except Exception:  # a bug must still answer in the sender's format, and the sender retries
        _counter(metrics.REJECTED, source.name, "internal_error").inc()
        log.exception("request failed", extra={"source": source.name, "reason": "internal_error"})
        return source.refuse(Rejected(500, "internal_error", "OnRecord could not handle this; retry later"))
    _counter(metrics.ACCEPTED, source.name).inc(result.stored)
    if result.duplicates:
        _counter(metrics.DUPLICATES, source.name).inc(result.duplicates)
    for reason, count in parsed.ignored.items():
        _counter(metrics.IGNORED, source.name, reason).inc(count)
    log.debug(  # every success is in the inbox and the metrics; refusals are logged as warnings
        "stored",
        extra={
            "source": source.name,
            "stored": result.stored,
            "duplicates": result.duplicates,
            "ignored": sum(parsed.ignored.values()),
        },
    )
    return source.acknowledge(result, parsed)


_counters: dict[tuple[Counter, tuple[str, ...]], Counter] = {}


def _counter(metric: Counter, *labels: str) -> Counter:
    """`metric.labels(*labels)`, looked up once per process: labels() takes a lock every call."""
    child = _counters.get((metric, labels))
    if child is None:
        child = _counters[(metric, labels)] = metric.labels(*labels)
    return child


def _read_body(environ: WSGIEnvironment, limit: int, timeout: float) -> bytes:
    """The whole body within `timeout` seconds, refusing one over `limit` bytes (before reading it
    where the length is known) and one whose framing is broken (a bad chunk, a short body)."""
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared and not declared.isdigit():
        raise Rejected(400, "bad_length", "Content-Length is not a number")
    if declared and int(declared) > limit:
        raise Rejected(413, "too_large", f"body larger than {limit} bytes")
    want = int(declared) if declared else limit + 1  # chunked (or none): one byte past the limit tells
    body = _read_until(environ, want, time.monotonic() + timeout)
    if not declared and len(body) > limit:
        raise Rejected(413, "too_large", f"body larger than {limit} bytes")
    if declared and len(body) != int(declared):
        raise Rejected(400, "incomplete_body", "the body ended before its Content-Length")
    return body


def _read_until(environ: WSGIEnvironment, want: int, deadline: float) -> bytes:
    """Up to `want` bytes, in reads bounded by what is left of the deadline: a sender that sends
    its headers and then its body slowly or never holds a connection at most until the deadline
    (gunicorn bounds only the headers), so a few hundred idle connections cannot lock out the CRM."""
    stream = environ["wsgi.input"]
    sock = environ.get("gunicorn.socket")
    previous = sock.gettimeout() if sock is not None else None
    chunks: list[bytes] = []
    got = 0
    # Each read waits at most what is left of the deadline, and the whole read is bounded too (a
    # gevent.Timeout, or the watchdog on OS threads), so a body dripped a byte at a time is cut.
    whole = _gevent_timeout(deadline - time.monotonic())
    watch = _WATCHDOG.watch(sock, deadline) if whole is None and sock is not None else None
    try:
        if whole is not None:
            whole.start()
        while got < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if sock is not None:
                sock.settimeout(left)
            chunk = stream.read(min(want - got, READ_CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except _TIMEOUTS as exc:
        raise Rejected(408, "body_timeout", "the body did not arrive in time") from exc
    except (ParseException, NoMoreData, ValueError, OSError) as exc:  # broken chunked framing
        _drain(sock)
        raise Rejected(400, "bad_body", f"the body's framing is broken ({type(exc).__name__})") from exc
    finally:
        if whole is not None:
            whole.close()
        if watch is not None:
            _WATCHDOG.cancel(watch)
        if sock is not None:
            sock.settimeout(previous)
    return b"".join(chunks)


class _Watchdog:
    """Bounds a whole body read on OS-thread workers: at its deadline a read still going has its
    socket's timeout cut to nothing, so the next wait for data fails at once (a wait already
    started ends at its own timeout). One thread per process, started on first use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._active: dict[int, Any] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: Any, deadline: float) -> int:
        with self._cond:
            token = next(self._ids)
            self._active[token] = sock
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="onrecord-body-watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][1] == token:
                self._cond.notify()
            return token

    def cancel(self, token: int) -> None:
        with self._cond:  # after this, the watchdog never touches that socket again
            self._active.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, token = heapq.heappop(self._heap)
                    sock = self._active.pop(token, None)
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.settimeout(1e-6)
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()


def _drain(sock: Any, most: int = 1024 * 1024) -> None:
    """Read what the sender already sent, without waiting: closing a socket with unread data
    resets the connection, and the sender would never see the 400."""
    if sock is None:
        return
    try:
        sock.settimeout(0.0)
        while most > 0 and (data := sock.recv(min(most, 65536))):
            most -= len(data)
    except OSError:
        pass  # nothing more to read now, or the sender is gone


def _gevent_timeout(seconds: float) -> Any:
    """A gevent.Timeout raising TimeoutError after `seconds`, when this worker runs on gevent."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is None or not gevent_monkey.is_module_patched("socket"):
        return None
    import gevent

    return gevent.Timeout(max(seconds, 0.001), TimeoutError)


_TIMEOUTS: tuple[type[BaseException], ...] = (TimeoutError,)


READ_CHUNK = 256 * 1024


class HookRouter:
    """WSGI middleware: POST /hooks/... to its Source through `receive`, anything else to Flask."""

    def __init__(self, app: WSGIApplication, runtime: Callable[[], Runtime], routes: Mapping[str, Source]):
        self._app = app
        self._runtime = runtime
        self._routes = dict(routes)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        source = self._routes.get(environ.get("PATH_INFO", ""))
        if source is None:
            return self._app(environ, start_response)
        rid, token = logs.bind_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        try:
            reply = receive(source, environ, self._runtime())
        finally:
            logs.request_id.reset(token)
        headers = [h for h in reply.headers if h != CLOSE]
        if len(headers) != len(reply.headers):
            # Connection is hop-by-hop: gunicorn drops it from an application's headers and keeps
            # the connection alive unless its response is told to close.
            response = getattr(start_response, "__self__", None)
            if response is not None and hasattr(response, "must_close"):
                response.must_close = True
        start_response(
            f"{reply.status} {HTTP_STATUS_CODES.get(reply.status, 'Unknown')}",
            [
                ("Content-Type", reply.content_type),
                ("Content-Length", str(len(reply.body))),
                ("X-Request-Id", rid),
                *headers,
            ],
        )
        return [reply.body]


CLOSE = ("Connection", "close")


JSON = "application/json"


def json_refusal(exc: Rejected) -> Reply:
    """The JSON error body used by every JSON source."""
    body = json.dumps({"error": exc.message, "reason": exc.reason}).encode()
    return Reply(exc.status, body, JSON, (("Retry-After", "5"),) if exc.status == 503 else ())


def json_ack(result: StoreResult, parsed: Parsed) -> Reply:
    """The JSON acknowledgement used by every JSON source (built by hand: it is on the hot path)."""
    ignored = sum(parsed.ignored.values())
    body = f'{{"duplicates":{result.duplicates},"ignored":{ignored},"stored":{result.stored}}}'
    return Reply(200, body.encode(), JSON)
