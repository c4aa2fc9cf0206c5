"""OnRecord's Ed25519 signing keys: one active, the retired ones kept (public part) for verification.

Layout of `provenance.key_dir` (mode 0700):

    keys.json        {"active": kid, "keys": [{"kid", "created_at", "retired_at", "jwk"}]}
    <kid>.pem        the active private key, PKCS#8 PEM, mode 0600; encrypted with
                     `provenance.key_passphrase` when one is configured

A key's id is its RFC 7638 JWK thumbprint (SHA-256, base64url), so anyone can recompute it from
the public JWK (RFC 8037: kty OKP, crv Ed25519, x). Rotation makes a new active key and destroys
the old private key; the old public key stays in keys.json and in the published JWK set.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from plugin.provenance.canonical import canonical_json

INDEX = "keys.json"


class KeyStoreError(Exception):
    """A key cannot be loaded, created or used; the message says what to do."""


def b64url(data: bytes) -> str:
    """base64url without padding (JOSE)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of b64url (padding optional)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The 32-byte RFC 8032 encoding."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """RFC 8037 OKP JWK of an Ed25519 public key (members only, no kid)."""
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw_public(key))}


def thumbprint(key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: SHA-256 of the required members (crv, kty, x) in canonical JSON."""
    return b64url(hashlib.sha256(canonical_json(public_jwk(key))).digest())


def key_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """The public key of an OKP/Ed25519 JWK; ValueError if it is anything else."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("x"), str):
        raise ValueError("not an OKP Ed25519 JWK")
    raw = b64url_decode(jwk["x"])
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """kid -> public key of a JWK set; a kid that is not the key's thumbprint is refused."""
    found: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks.get("keys", []):
        key = key_from_jwk(jwk)
        kid = thumbprint(key)
        if jwk.get("kid", kid) != kid:
            raise ValueError(f"JWK kid {jwk.get('kid')!r} is not its RFC 7638 thumbprint")
        found[kid] = key
    return found


@dataclass(frozen=True)
class SigningKey:
    """The active private key and its id."""

    kid: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key (for tests and `init`)."""
        private = Ed25519PrivateKey.generate()
        return cls(thumbprint(private.public_key()), private)

    @property
    def public(self) -> Ed25519PublicKey:
        """Its public key."""
        return self.private.public_key()

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (deterministic, RFC 8032)."""
        return self.private.sign(data)


def verify_signature(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is the key's over `data`."""
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


class KeyStore:
    """The key directory: create, rotate, load, publish."""

    def __init__(self, directory: str | Path, passphrase: str = "") -> None:
        self.directory = Path(directory)
        self.passphrase = passphrase

    # -- reading ------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a key has been created."""
        return (self.directory / INDEX).is_file()

    def index(self) -> dict[str, Any]:
        """keys.json as stored."""
        try:
            data: dict[str, Any] = json.loads((self.directory / INDEX).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise KeyStoreError(
                f"no signing key in {self.directory}: run `python -m plugin init` (or `keys rotate`)"
            ) from exc
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"{self.directory / INDEX} is unreadable: {exc}") from exc
        return data

    def signing_key(self) -> SigningKey:
        """The active private key."""
        kid = self.index()["active"]
        path = self.directory / f"{kid}.pem"
        password = self.passphrase.encode() if self.passphrase else None
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=password)
        except FileNotFoundError as exc:
            raise KeyStoreError(f"the active key's private part {path} is missing") from exc
        except (TypeError, ValueError) as exc:
            raise KeyStoreError(
                f"cannot read {path}: wrong or missing passphrase (provenance.key_passphrase)?"
            ) from exc
        if not isinstance(private, Ed25519PrivateKey) or thumbprint(private.public_key()) != kid:
            raise KeyStoreError(f"{path} is not the Ed25519 key {kid}")
        return SigningKey(kid, private)

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """kid -> public key, active and retired."""
        return keys_from_jwks({"keys": [entry["jwk"] | {"kid": entry["kid"]} for entry in self.entries()]})

    def entries(self) -> list[dict[str, Any]]:
        """Every key's metadata, oldest first."""
        entries: list[dict[str, Any]] = self.index()["keys"]
        return entries

    def jwks(self) -> dict[str, Any]:
        """The public JWK set (RFC 7517), each key with kid = thumbprint, alg EdDSA, use sig."""
        return {
            "keys": [
                {**entry["jwk"], "kid": entry["kid"], "alg": "EdDSA", "use": "sig"}
                for entry in reversed(self.entries())  # newest (the active one) first
            ]
        }

    # -- writing ------------------------------------------------------------------------------

    def create(self, now: datetime) -> str:
        """Create the first key; refuse if one exists."""
        if self.exists():
            raise KeyStoreError(f"a signing key already exists in {self.directory}")
        return self._add(SigningKey.generate(), now, previous=[])

    def rotate(self, now: datetime) -> str:
        """A new active key; the old private key is destroyed, its public key kept."""
        if not self.exists():
            return self.create(now)
        index = self.index()
        old = index["active"]
        entries = [
            entry | {"retired_at": entry.get("retired_at") or now.isoformat()} for entry in index["keys"]
        ]
        kid = self._add(SigningKey.generate(), now, previous=entries)
        (self.directory / f"{old}.pem").unlink(missing_ok=True)
        return kid

    def _add(self, key: SigningKey, now: datetime, previous: list[dict[str, Any]]) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(self.passphrase.encode())
            if self.passphrase
            else serialization.NoEncryption()
        )
        pem = key.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        fd = os.open(self.directory / f"{key.kid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        entry = {
            "kid": key.kid,
            "created_at": now.isoformat(),
            "retired_at": None,
            "jwk": public_jwk(key.public),
        }
        self._write_index({"active": key.kid, "keys": [*previous, entry]})
        return key.kid

    def _write_index(self, index: dict[str, Any]) -> None:
        # Written beside, then renamed: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".keys.", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(index, fh, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.directory / INDEX)
