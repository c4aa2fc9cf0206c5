"""POST /hooks/power-automate/{forms,approvals,signals}: what the flows' HTTP actions send.

Each endpoint goes through the one receive path (authenticate, parse, store, then acknowledge).
A flow authenticates with an Entra ID app-only token ("Active Directory OAuth" in the HTTP action)
or with the shared key in `X-OnRecord-Key`, as `power_automate.auth_modes` allows; with neither
configured every request is refused with 503, so nothing is accepted by accident.
"""

from __future__ import annotations

from collections.abc import Callable

from connectors.power_automate import payloads
from connectors.power_automate.auth import entra_settings, entra_verifier
from connectors.power_automate.connector import settings as pa_settings
from connectors.power_automate.entra import API_KEY_HEADER, ApiKeyVerifier, AuthRejected
from plugin.receive import Incoming, Parsed, Rejected, Reply, Source, json_ack, json_refusal

PayloadParser = Callable[..., payloads.Parsed]


def authenticate(incoming: Incoming) -> str:
    """The flow's identity: ``entra:<tenant>/<app id>`` or ``api_key:<n>``."""
    config = incoming.runtime.config
    pa = pa_settings(config)
    entra = entra_settings(config) if "entra" in pa.auth_modes else None
    keys = pa.api_key if "api_key" in pa.auth_modes else []
    if entra is None and not keys:
        raise Rejected(503, "not_configured", "no authentication is configured for Power Automate")
    headers = incoming.headers
    authorization = headers.get("Authorization")
    presents_bearer = authorization is not None and authorization.strip().lower().startswith("bearer ")
    try:
        if entra is not None and (presents_bearer or not keys or API_KEY_HEADER not in headers):
            return entra_verifier(incoming.runtime, entra).verify(authorization).sender
        return ApiKeyVerifier(keys).verify(headers.get(API_KEY_HEADER))
    except AuthRejected as exc:
        raise auth_refusal(exc) from exc


def auth_refusal(exc: AuthRejected) -> Rejected:
    """401 for every credential the sender got wrong; 503 when we could not check (it retries)."""
    if exc.reason == "jwks_unavailable":
        return Rejected(503, exc.reason, "the tenant's signing keys cannot be fetched; retry later")
    return Rejected(401, exc.reason, exc.message)


def refuse(exc: Rejected) -> Reply:
    """The JSON refusal, telling a 401's sender which scheme is expected."""
    reply = json_refusal(exc)
    if exc.status == 401:
        return reply.with_header("WWW-Authenticate", 'Bearer realm="onrecord", error="invalid_token"')
    return reply


def parser(parse_body: PayloadParser) -> Callable[[Incoming, str], Parsed]:
    """Adapt a payloads parser to the receive path: its refusals become 400 (413 if too large)."""

    def parse(incoming: Incoming, sender: str) -> Parsed:
        try:
            result = parse_body(incoming.body, sender=sender)
        except payloads.PayloadRejected as exc:
            status = 413 if exc.reason == "too_large" else 400
            raise Rejected(status, exc.reason, exc.message) from exc
        if result.ignored is not None:
            return Parsed(events=[], ignored={"unknown_kind": 1})  # a label, never the sent text
        return Parsed(events=list(result.events))

    return parse


def _source(name: str, parse_body: PayloadParser) -> Source:
    return Source(
        name=name, authenticate=authenticate, parse=parser(parse_body), acknowledge=json_ack, refuse=refuse
    )


FORMS = _source(payloads.SOURCE_FORMS, payloads.parse_forms)
APPROVALS = _source(payloads.SOURCE_APPROVALS, payloads.parse_approvals)
SIGNALS = _source(payloads.SOURCE_SIGNALS, payloads.parse_signals)


# What the flows' HTTP actions post: a form submission (after "Get response details"), one
# approval stage's decision (the body of "Start and wait for an approval"), and a leader signal
# born outside the CRM (training attended, ...).
HOOKS = {
    "/hooks/power-automate/forms": FORMS,
    "/hooks/power-automate/approvals": APPROVALS,
    "/hooks/power-automate/signals": SIGNALS,
}
