"""A real JWKS endpoint on 127.0.0.1 and a minter of Entra ID-shaped access tokens (and bad ones).

with JwksServer() as server:
    key = RsaKey.generate("kid-1")
    server.set_keys([key])
    tokens = TokenFactory(key, tenant_id=TENANT, audience=AUDIENCE, client_id=CLIENT, role="Events.Write")
    header = "Bearer " + tokens.v2()
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class RsaKey:
    """An RSA signing key pair with its kid."""

    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str | None = None, bits: int = 2048) -> RsaKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return cls(kid=kid or uuid.uuid4().hex, private_key=key)

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwk(self) -> dict[str, Any]:
        """The public JWK as Entra publishes it (kty, use, kid, x5t, n, e; no alg)."""
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }


class JwksServer:
    """Serves ``{"keys": [...]}`` on every GET path, on 127.0.0.1 and a random port, in a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._document: dict[str, Any] = {"keys": []}
        self._status = 200
        self.hits = 0
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits += 1
                    server.paths.append(self.path)
                    status = server._status
                    body = json.dumps(server._document).encode()
                if status != 200:
                    body = b'{"error":"temporarily_unavailable"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, tenant_id: str = "common") -> str:
        return f"http://127.0.0.1:{self.port}/{tenant_id}/discovery/v2.0/keys"

    def set_keys(self, keys: Iterable[RsaKey]) -> None:
        with self._lock:
            self._document = {"keys": [k.jwk() for k in keys]}

    def set_document(self, document: dict[str, Any]) -> None:
        with self._lock:
            self._document = document

    def fail_with(self, status: int) -> None:
        """Answer every request with this status (200 to recover)."""
        with self._lock:
            self._status = status

    def start(self) -> JwksServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="jwks-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> JwksServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TokenFactory:
    """Mints Entra ID app-only access tokens (v1.0 and v2.0 shapes) and malicious variants."""

    def __init__(
        self,
        key: RsaKey,
        *,
        tenant_id: str,
        audience: str,
        client_id: str,
        role: str,
        lifetime: int = 3600,
    ) -> None:
        self.key = key
        self.tenant_id = tenant_id
        self.audience = audience
        self.client_id = client_id
        self.role = role
        self.lifetime = lifetime

    # -- claims ---------------------------------------------------------------------------------

    def _common(self, now: int) -> dict[str, Any]:
        object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, self.client_id))
        return {
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "aio": "E2ZgYJjv" + b64url(uuid.uuid4().bytes),
            "idp": f"https://sts.windows.net/{self.tenant_id}/",
            "oid": object_id,
            "rh": "0.AAAA" + b64url(uuid.uuid4().bytes) + ".",
            "roles": [self.role],
            "sub": object_id,
            "tid": self.tenant_id,
            "uti": b64url(uuid.uuid4().bytes)[:22],
        }

    def v1_claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = self._common(now)
        claims.update(
            {
                "iss": f"https://sts.windows.net/{self.tenant_id}/",
                "appid": self.client_id,
                "appidacr": "1",
                "ver": "1.0",
            }
        )
        return _apply(claims, overrides)

    def v2_claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = self._common(now)
        claims.update(
            {
                "iss": f"https://login.microsoftonline.com/{self.tenant_id}/v2.0",
                "azp": self.client_id,
                "azpacr": "1",
                "ver": "2.0",
            }
        )
        return _apply(claims, overrides)

    # -- tokens ---------------------------------------------------------------------------------

    def sign(self, claims: dict[str, Any], *, key: RsaKey | None = None, kid: str | None = None) -> str:
        signer = key or self.key
        headers = {"typ": "JWT", "kid": kid if kid is not None else signer.kid}
        return jwt.encode(claims, signer.private_pem, algorithm="RS256", headers=headers)

    def v1(self, **overrides: Any) -> str:
        return self.sign(self.v1_claims(**overrides))

    def v2(self, **overrides: Any) -> str:
        return self.sign(self.v2_claims(**overrides))

    def alg_none(self, **overrides: Any) -> str:
        header = {"typ": "JWT", "alg": "none", "kid": self.key.kid}
        return _compact(header, self.v2_claims(**overrides), b"")

    def hs256_with_public_key(self, **overrides: Any) -> str:
        """The key-confusion attack: HMAC-SHA256 keyed with the RSA public key PEM (what a naive
        verifier passing the PEM to ``jwt.decode(..., algorithms=[...HS256...])`` would accept)."""
        header = {"typ": "JWT", "alg": "HS256", "kid": self.key.kid}
        signing_input = _signing_input(header, self.v2_claims(**overrides))
        signature = hmac.new(self.key.public_pem, signing_input, hashlib.sha256).digest()
        return signing_input.decode() + "." + b64url(signature)

    def with_alg(self, alg: str, **overrides: Any) -> str:
        """Any header alg, RS256-signed (e.g. "RS512", "PS256", "ES256" claims without matching crypto)."""
        header = {"typ": "JWT", "alg": alg, "kid": self.key.kid}
        signing_input = _signing_input(header, self.v2_claims(**overrides))
        signature = self.key.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return signing_input.decode() + "." + b64url(signature)

    def tampered(self, **overrides: Any) -> str:
        """A genuine token whose payload was swapped after signing (signature no longer matches)."""
        genuine = self.v2()
        header_b64, _, signature = genuine.split(".")
        payload_b64 = b64url(json.dumps(self.v2_claims(**overrides)).encode())
        return f"{header_b64}.{payload_b64}.{signature}"


def _apply(claims: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Override claims; a value of ``None`` removes the claim."""
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def _signing_input(header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    return (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    ).encode()


def _compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    return _signing_input(header, claims).decode() + "." + b64url(signature)
