"""The one receive path every source goes through: authenticate, parse, store, then acknowledge.

A source supplies four small functions; this module does the ordering, the error handling,
the size limit and the metrics, so no source can acknowledge what is not durable.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flask import Request, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from plugin import metrics
from plugin.events import Event
from plugin.inbox import StoreError, StoreResult
from plugin.runtime import runtime

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

    request: Request
    body: bytes
    digest: str  # sha256 hex of the body: the evidence kept with each event


@dataclass
class Parsed:
    """A source's reading of one request."""

    events: Sequence[Event]
    ignored: dict[str, int] = field(default_factory=dict)  # reason -> count, answered 200


@dataclass(frozen=True)
class Source:
    """How one sender is received. `authenticate` returns the sender's identity."""

    name: str
    authenticate: Callable[[Incoming], str]
    parse: Callable[[Incoming, str], Parsed]
    acknowledge: Callable[[StoreResult, Parsed], Response]
    refuse: Callable[[Rejected], Response]


def receive(source: Source) -> Response:
    """Handle the current Flask request for `source`."""
    metrics.REQUESTS.labels(source.name).inc()
    try:
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge as exc:
            limit = current_app.config.get("MAX_CONTENT_LENGTH")
            raise Rejected(413, "too_large", f"body larger than {limit} bytes") from exc
        incoming = Incoming(request=request, body=body, digest=hashlib.sha256(body).hexdigest())
        sender = source.authenticate(incoming)  # before anything reads the payload
        parsed = source.parse(incoming, sender)
        rt = runtime()
        try:
            result = (
                rt.committer.store(parsed.events, rt.config.server.store_timeout_seconds)
                if parsed.events
                else StoreResult(0, 0)
            )
        except StoreError as exc:
            raise Rejected(503, "store_failed", "could not store the events; retry later") from exc
    except Rejected as exc:
        metrics.REJECTED.labels(source.name, exc.reason).inc()
        log.warning(
            "request refused",
            extra={"source": source.name, "reason": exc.reason, "status": exc.status, "detail": exc.message},
        )
        return source.refuse(exc)
    metrics.ACCEPTED.labels(source.name).inc(result.stored)
    if result.duplicates:
        metrics.DUPLICATES.labels(source.name).inc(result.duplicates)
    for reason, count in parsed.ignored.items():
        metrics.IGNORED.labels(source.name, reason).inc(count)
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


def json_refusal(exc: Rejected) -> Response:
    """The JSON error body used by every JSON source."""
    resp = jsonify({"error": exc.message, "reason": exc.reason})
    resp.status_code = exc.status
    if exc.status == 503:
        resp.headers["Retry-After"] = "5"
    return resp


def json_ack(result: StoreResult, parsed: Parsed) -> Response:
    """The JSON acknowledgement used by every JSON source (built by hand: it is on the hot path)."""
    ignored = sum(parsed.ignored.values())
    body = f'{{"duplicates":{result.duplicates},"ignored":{ignored},"stored":{result.stored}}}'
    return Response(body, status=200, content_type="application/json")
