"""Who may call /api/*: `Authorization: Bearer <token>` with one of `api.tokens`, or an Entra ID token.

Tokens are compared in constant time against every configured token (no early exit). An Entra ID
app-only token is checked as for the Power Automate hooks (tenant, audience, caller, role), with
`api.entra_required_role` when set. With neither configured, /api/* answers 503 (fail closed).
The authenticated caller is left in `flask.g.api_caller` for the view.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import ParamSpec

from flask import Response, g, jsonify, request
from flask.typing import ResponseReturnValue

from plugin import registry
from plugin.api_responses import Error
from plugin.runtime import runtime

P = ParamSpec("P")


class ApiAuthError(Exception):
    """The request may not use the API; `reason` is machine-readable."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def require_api_auth(view: Callable[P, ResponseReturnValue]) -> Callable[P, ResponseReturnValue]:
    """Decorate a view: refuse (401/503, JSON with a reason) unless the caller authenticates."""

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        try:
            g.api_caller = authenticate_api(request.headers.get("Authorization"))
        except ApiAuthError as exc:
            return api_refusal(exc)
        return view(*args, **kwargs)

    return wrapper


def authenticate_api(authorization: str | None) -> str:
    """The caller's identity (``api_token:<n>`` or ``entra:<tenant>/<app id>``), or raise ApiAuthError."""
    rt = runtime()
    tokens = rt.config.api.tokens
    verifiers = [
        verify
        for connector in registry.connectors()
        if connector.api_verifier is not None and (verify := connector.api_verifier(rt)) is not None
    ]
    if not tokens and not verifiers:
        raise ApiAuthError(503, "not_configured", "no API tokens or Entra ID settings are configured")
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiAuthError(401, "missing_token", "send Authorization: Bearer <token>")
    match = matching_token(token, tokens)
    if match is not None:
        return f"api_token:{match}"
    if verifiers and authorization and token.count(".") == 2:  # a JWT: only Entra ID can vouch for it
        return verifiers[0](authorization)
    raise ApiAuthError(401, "invalid_token", "the bearer token is not valid")


def matching_token(presented: str, tokens: Sequence[str]) -> int | None:
    """Index of the configured token equal to `presented`, comparing with every one in constant time."""
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    match: int | None = None
    for index, token in enumerate(tokens):
        if hmac.compare_digest(digest, hashlib.sha256(token.encode("utf-8")).digest()) and match is None:
            match = index
    return match


def api_refusal(exc: ApiAuthError) -> Response:
    """The JSON refusal of a request that failed authentication."""
    return api_error(exc.status, exc.reason, exc.message)


def api_error(status: int, reason: str, message: str) -> Response:
    """Every /api error: `{"error", "reason"}`, with the headers its status calls for."""
    resp = jsonify(Error(error=message, reason=reason).model_dump(mode="json"))
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="onrecord"'
    elif status == 503:
        resp.headers["Retry-After"] = "5"
    return resp
