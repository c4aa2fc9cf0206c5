"""POST /hooks/salesforce/outbound?token=…: Salesforce outbound messages (SOAP 1.1).

The sender is authenticated by the URL's token (constant time) and, where a TLS-terminating
proxy passes it, the client certificate's fingerprint; the message's OrganizationId must then
be the configured org (15- and 18-character forms alike). Each notification becomes a
`record.changed` event whose delivery id is the notification Id, so a re-sent message is
stored once. Salesforce counts only a `notificationsResponse` with Ack true as delivered: it
is sent once the events are stored, and every refusal is a SOAP fault (never another body).
"""

from __future__ import annotations

import functools
import glob
import hmac
import logging
import re
from pathlib import Path

from connectors.salesforce.changes import take_in
from connectors.salesforce.config import SalesforceConfig
from connectors.salesforce.connector import settings as sf_settings
from connectors.salesforce.outbound import (
    SOURCE,
    OutboundRejected,
    OutboundWsdlError,
    ack_response,
    fault_response,
    normalise_org_id,
    parse_outbound,
    preload_wsdls,
    to_events,
)
from plugin.config import Config
from plugin.inbox import StoreResult
from plugin.receive import Incoming, Parsed, Rejected, Reply, Source

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/xml; charset=utf-8"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@functools.lru_cache(maxsize=8)
def wsdl_paths(patterns: tuple[str, ...]) -> tuple[Path, ...]:
    """The configured WSDL files, globs expanded once per process. A plain path that does not
    exist is kept, so that it fails loudly rather than silently leaving fields untyped."""
    found: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            found.extend(Path(p) for p in sorted(glob.glob(pattern)))
        else:
            found.append(Path(pattern))
    return tuple(dict.fromkeys(found))


def preload(config: Config) -> None:
    """Load the WSDLs when the app is built (each gunicorn worker), not on the first message."""
    paths = wsdl_paths(tuple(sf_settings(config).outbound_wsdls))
    try:
        objects = preload_wsdls(paths)
    except OutboundWsdlError as exc:  # messages get a server fault (Salesforce retries) until fixed
        log.error("outbound message WSDL unusable", extra={"reason": "wsdl_error", "detail": str(exc)})
        return
    log.info("outbound message WSDLs loaded", extra={"objects": list(objects)})


def _configured_org(cfg: SalesforceConfig) -> str:
    if not cfg.org_id:
        raise Rejected(503, "not_configured", "salesforce.org_id is not configured; every message is refused")
    try:
        return normalise_org_id(cfg.org_id)
    except ValueError as exc:
        raise Rejected(503, "not_configured", f"salesforce.org_id is not an organization id: {exc}") from exc


def _fingerprint(value: str) -> str:
    text = value.strip().lower()
    for prefix in ("sha256:", "sha256="):
        text = text.removeprefix(prefix)
    return text.replace(":", "").replace(" ", "")


def _client_certificate(incoming: Incoming, cfg: SalesforceConfig) -> str:
    """The presented certificate's fingerprint, if it is one of the accepted ones."""
    accepted = [_fingerprint(f) for f in cfg.client_cert_fingerprints]
    if not cfg.client_cert_header or not accepted:
        raise Rejected(
            503,
            "not_configured",
            "salesforce.client_cert_header and salesforce.client_cert_fingerprints go together",
        )
    presented = _fingerprint(incoming.headers.get(cfg.client_cert_header, ""))
    if not presented:
        raise Rejected(403, "no_client_cert", "no client certificate was presented")
    if not _SHA256_HEX.match(presented):
        raise Rejected(403, "bad_client_cert", "the client certificate fingerprint is not SHA-256 hex")
    if not any(hmac.compare_digest(presented, fp) for fp in accepted):
        raise Rejected(403, "bad_client_cert", "the client certificate is not an accepted one")
    return presented


def authenticate(incoming: Incoming) -> str:
    """The URL token (and the client certificate, when configured); fails closed unconfigured."""
    cfg = sf_settings(incoming.runtime.config)
    if not cfg.outbound_token:
        raise Rejected(503, "not_configured", "no outbound token configured; every message is refused")
    _configured_org(cfg)
    token = incoming.query("token")
    if not token:
        raise Rejected(401, "missing_token", "the URL carries no token")
    if not hmac.compare_digest(token.encode(), cfg.outbound_token.encode()):
        raise Rejected(401, "bad_token", "the URL's token is not the configured one")
    if cfg.client_cert_header or cfg.client_cert_fingerprints:
        return f"token+cert:sha256:{_client_certificate(incoming, cfg)[:16]}"
    return "token"


def parse(incoming: Incoming, sender: str) -> Parsed:
    """Read the message (hardened), check its org, and keep what OnRecord governs."""
    config = incoming.runtime.config
    try:
        msg = parse_outbound(
            incoming.body,
            wsdl_paths=wsdl_paths(tuple(sf_settings(config).outbound_wsdls)),
            max_bytes=config.server.max_body_bytes,
        )
    except OutboundRejected as exc:
        raise Rejected(413 if exc.reason == "too_large" else 400, exc.reason, exc.message) from exc
    except OutboundWsdlError as exc:
        raise Rejected(500, "wsdl_error", str(exc)) from exc
    if msg.organization_id != _configured_org(sf_settings(config)):
        raise Rejected(403, "wrong_org", "OrganizationId is not the configured organization")
    ignored: dict[str, int] = {}
    try:  # a field the events cannot carry (a date OnRecord cannot process) refuses the message
        received = to_events(msg, raw_digest=incoming.digest, sender=f"{msg.organization_id} {sender}")
    except OutboundRejected as exc:
        raise Rejected(400, exc.reason, exc.message) from exc
    return Parsed(events=take_in(received, incoming.runtime.config_in_force, ignored), ignored=ignored)


def acknowledge(result: StoreResult, parsed: Parsed) -> Reply:
    """`notificationsResponse` with Ack true: only once everything the message carried is stored."""
    return Reply(200, ack_response(), CONTENT_TYPE)


def refuse(exc: Rejected) -> Reply:
    """A SOAP 1.1 fault, whatever went wrong (an unexpected error and a size over the limit too).
    A failed store answers 500 (SOAP 1.1's status for a fault, and the issue's contract);
    Salesforce retries anything that is not an Ack."""
    status = 500 if exc.reason == "store_failed" else exc.status
    body = fault_response(exc.reason, exc.message, server=status >= 500)
    return Reply(status, body, CONTENT_TYPE)


SALESFORCE_OUTBOUND = Source(
    name=SOURCE, authenticate=authenticate, parse=parse, acknowledge=acknowledge, refuse=refuse
)


HOOKS = {"/hooks/salesforce/outbound": SALESFORCE_OUTBOUND}
