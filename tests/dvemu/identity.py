"""Microsoft Entra ID, as much as a client-credentials sign-in needs: the tenant's OpenID
discovery document (msal reads the token endpoint from it) and the v2.0 token endpoint.

- Client credentials grant (form: client_id, client_secret, scope=<resource>/.default,
  grant_type=client_credentials; answer: token_type, expires_in, access_token; errors: error,
  error_description "AADSTSnnnn: ..."): https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow
- Discovery document at {authority}/v2.0/.well-known/openid-configuration:
  https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc#find-your-apps-openid-configuration-document-uri
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from tests.dvemu.state import DataverseState, Token


def _json(body: Mapping[str, Any], status: int = 200) -> Response:
    response = Response(json.dumps(body), status=status, content_type="application/json; charset=utf-8")
    response.headers["Cache-Control"] = "no-store, no-cache"
    return response


def _aad_error(status: int, error: str, code: int, description: str) -> Response:
    return _json(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {uuid.uuid4()} "
            f"Correlation ID: {uuid.uuid4()} Timestamp: {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}",
            "error_codes": [code],
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        },
        status,
    )


def discovery(base_url: str, tenant: str, known_tenant: str) -> Response:
    if tenant.lower() != known_tenant.lower():
        return _aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
    authority = f"{base_url}/{known_tenant}"
    return _json(
        {
            "token_endpoint": f"{authority}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base_url}/{known_tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base_url}/{known_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{base_url}/oidc/userinfo",
            "authorization_endpoint": f"{authority}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{authority}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{authority}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }
    )


def token(
    state: DataverseState,
    request: Request,
    *,
    tenant: str,
    known_tenant: str,
    client_id: str,
    client_secret: str,
    resource: str,
    lifetime: int,
) -> Response:
    if tenant.lower() != known_tenant.lower():
        return _aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
    form = request.form
    sent_id, sent_secret = form.get("client_id"), form.get("client_secret")
    basic = request.headers.get("Authorization", "")
    if basic.lower().startswith("basic "):
        decoded = base64.b64decode(basic[6:]).decode()
        user, _, password = decoded.partition(":")
        sent_id, sent_secret = unquote(user), unquote(password)
    if form.get("grant_type") != "client_credentials":
        return _aad_error(
            400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
        )
    if sent_id != client_id:
        return _aad_error(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{sent_id}' was not found in the directory '{known_tenant}'.",
        )
    if not sent_secret or not secrets.compare_digest(sent_secret, client_secret):
        return _aad_error(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client "
            "secret value, not the client secret ID, for a secret added to app '" + client_id + "'.",
        )
    scope = form.get("scope", "")
    if scope.split() != [f"{resource}/.default"]:
        return _aad_error(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must have a "
            "scope value with /.default suffixed to the resource identifier (application ID URI).",
        )
    value = secrets.token_urlsafe(32)
    with state.lock:
        state.tokens[value] = Token(value, client_id, scope)
    return _json(
        {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": value}
    )
