"""POST /services/oauth2/token: the OAuth 2.0 JWT bearer and client credentials flows.

JWT bearer rules (Salesforce help, "OAuth 2.0 JWT Bearer Flow for Server-to-Server
Integration"): header alg RS256; claims iss = the connected app's consumer key, aud = the
authorization server (login.salesforce.com, test.salesforce.com, or the site/login URL),
sub = the username (prn accepted for backward compatibility), exp = expiry in seconds since
the epoch; the signature must verify with the certificate uploaded to the app, and the user
must be pre-authorized for the app. Errors are HTTP 400 {"error", "error_description"} with
Salesforce's wording ("invalid assertion", "audience is invalid", "expired authorization code",
"user hasn't approved this consumer", "client identifier invalid", "invalid client credentials").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from werkzeug.wrappers import Request, Response

from tests.sfemu.state import Consumer, OrgState, Session

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _error(error: str, description: str, status: int = 400) -> Response:
    body = json.dumps({"error": error, "error_description": description})
    return Response(body, status=status, content_type="application/json;charset=UTF-8")


def _success(state: OrgState, base_url: str, session: Session, consumer: Consumer) -> Response:
    issued_at = str(int(time.time() * 1000))
    identity = f"{base_url}/id/{state.org_id}/{session.user_id}"
    key = (consumer.client_secret or consumer.client_id).encode()
    signature = base64.b64encode(
        hmac.new(key, (identity + issued_at).encode(), hashlib.sha256).digest()
    ).decode()
    body = {
        "access_token": session.token,
        "scope": "api",
        "instance_url": base_url,
        "id": identity,
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": signature,
    }
    return Response(json.dumps(body), status=200, content_type="application/json;charset=UTF-8")


def token_endpoint(
    state: OrgState, request: Request, *, base_url: str, audiences: frozenset[str], leeway: int
) -> Response:
    if request.method != "POST":
        return _error("invalid_request", "must use HTTP POST")
    grant_type = request.form.get("grant_type", "")
    if grant_type == JWT_BEARER:
        return _jwt_bearer(state, request.form.get("assertion", ""), base_url, audiences, leeway)
    if grant_type == "client_credentials":
        client_id = request.form.get("client_id")
        secret = request.form.get("client_secret")
        if request.authorization is not None and request.authorization.type == "basic":
            client_id = request.authorization.username
            secret = request.authorization.password
        return _client_credentials(state, client_id or "", secret or "", base_url)
    if not grant_type:
        return _error("invalid_request", "grant type not supported")
    return _error("unsupported_grant_type", "grant type not supported")


def _jwt_bearer(
    state: OrgState, assertion: str, base_url: str, audiences: frozenset[str], leeway: int
) -> Response:
    try:
        header = jwt.get_unverified_header(assertion)
        claims: dict[str, Any] = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return _error("invalid_grant", "invalid assertion")
    if header.get("alg") != "RS256":
        return _error("invalid_grant", "invalid assertion")
    with state.lock:
        consumer = state.consumers.get(str(claims.get("iss", "")))
    if consumer is None:
        return _error("invalid_client_id", "client identifier invalid")
    if consumer.public_key is None:
        return _error("invalid_grant", "invalid assertion")
    try:
        jwt.decode(
            assertion,
            consumer.public_key,
            algorithms=["RS256"],
            options={"verify_exp": False, "verify_aud": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.PyJWTError:
        return _error("invalid_grant", "invalid assertion")
    aud = claims.get("aud")
    aud_list = aud if isinstance(aud, list) else [aud]
    if not any(isinstance(a, str) and a.rstrip("/") in audiences for a in aud_list):
        return _error("invalid_grant", "audience is invalid")
    try:
        exp = float(claims["exp"])  # Salesforce's own examples send it as a string
    except (KeyError, TypeError, ValueError):
        return _error("invalid_grant", "invalid assertion")
    if exp + leeway < time.time():
        return _error("invalid_grant", "expired authorization code")
    username = claims.get("prn") or claims.get("sub")
    with state.lock:
        known = isinstance(username, str) and username in state.users
        approved = consumer.approved_users is None or username in consumer.approved_users
        if not known or not approved:
            return _error("invalid_grant", "user hasn't approved this consumer")
        session = state.new_session(str(username), consumer.client_id)
    return _success(state, base_url, session, consumer)


def _client_credentials(state: OrgState, client_id: str, secret: str, base_url: str) -> Response:
    with state.lock:
        consumer = state.consumers.get(client_id)
        if consumer is None:
            return _error("invalid_client_id", "client identifier invalid")
        if consumer.client_secret is None or not hmac.compare_digest(consumer.client_secret, secret):
            return _error("invalid_client", "invalid client credentials")
        if consumer.run_as is None or consumer.run_as not in state.users:
            return _error("invalid_grant", "no client credentials user enabled")
        session = state.new_session(consumer.run_as, consumer.client_id)
    return _success(state, base_url, session, consumer)
