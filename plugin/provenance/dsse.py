"""DSSE envelopes (github.com/secure-systems-lab/dsse, v1.0): sign and open, with Ed25519.

The signature covers PAE(payloadType, payload) =
    "DSSEv1" SP LEN(payloadType) SP payloadType SP LEN(payload) SP payload
where LEN is the byte length in ASCII decimal and SP one space. Payload and signatures are
standard base64 in the envelope's JSON.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from plugin.provenance.keys import SigningKey, verify_signature

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


class EnvelopeError(Exception):
    """An envelope does not open; `reason` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign_envelope(
    payload: bytes, key: SigningKey, payload_type: str = IN_TOTO_PAYLOAD_TYPE
) -> dict[str, Any]:
    """An envelope holding `payload`, signed by `key`."""
    signature = key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": key.kid, "sig": base64.b64encode(signature).decode("ascii")}],
    }


def open_envelope(
    envelope: Mapping[str, Any],
    keys: Mapping[str, Ed25519PublicKey],
    payload_type: str = IN_TOTO_PAYLOAD_TYPE,
) -> tuple[bytes, str]:
    """The payload and the id of the key that signed it; EnvelopeError if that cannot be shown.

    Reasons: malformed, wrong_payload_type, unknown_key (no signature by a key we know),
    signature_invalid (a known key's signature does not hold: the bytes were changed).
    """
    try:
        kind = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = list(envelope["signatures"])
        pairs = [(s["keyid"], base64.b64decode(s["sig"], validate=True)) for s in signatures]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise EnvelopeError("malformed", f"not a DSSE envelope: {exc}") from exc
    if kind != payload_type:
        raise EnvelopeError("wrong_payload_type", f"payloadType is {kind!r}, expected {payload_type!r}")
    known = [(kid, sig) for kid, sig in pairs if kid in keys]
    if not known:
        ids = ", ".join(str(kid) for kid, _ in pairs) or "none"
        raise EnvelopeError("unknown_key", f"signed by no known key (key ids: {ids})")
    message = pae(kind, payload)
    for kid, sig in known:
        if verify_signature(keys[kid], sig, message):
            return payload, kid
    raise EnvelopeError("signature_invalid", "the signature does not match the statement: it was altered")
