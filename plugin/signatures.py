"""Standard Webhooks signature verification (https://www.standardwebhooks.com/).

Headers: `webhook-id`, `webhook-timestamp` (Unix seconds), `webhook-signature`: space-separated
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`. Keys are `whsec_<base64>`. Any one of several
signatures may match any one of several keys (rotation). Every failure is a SignatureError.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_PREFIX = "whsec_"
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_MAX_HEADER = 4096


class SignatureError(Exception):
    """The request is not signed by a sender we trust. `reason` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    """What a valid signature vouches for."""

    webhook_id: str
    timestamp: int


@functools.lru_cache(maxsize=32)  # the configured secrets: decoded once, not on every request
def decode_secret(secret: str) -> bytes:
    """The HMAC key inside `whsec_<base64>`; the padding may be left out, as the Standard Webhooks
    reference libraries allow (they decode with padding restored)."""
    if not secret.startswith(_PREFIX):
        raise SignatureError("bad_secret", "secret must start with whsec_")
    encoded = secret[len(_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("bad_secret", "secret is not valid base64") from exc
    if len(key) < MIN_KEY_BYTES:
        raise SignatureError("bad_secret", f"secret decodes to fewer than {MIN_KEY_BYTES} bytes")
    return key


MIN_KEY_BYTES = 16  # the reference libraries generate 24 to 64; an empty or tiny key is a mistake


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value a sender with this secret would send."""
    mac = hmac.new(decode_secret(secret), _signed_content(webhook_id, timestamp, body), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> Verified:
    """Check the signature headers against the body; raise SignatureError if anything is off."""
    if not secrets:
        raise SignatureError("not_configured", "no signing secret is configured for this source")
    lower = {k.lower(): v for k, v in headers.items()}
    webhook_id = lower.get("webhook-id", "")
    raw_ts = lower.get("webhook-timestamp", "")
    raw_sig = lower.get("webhook-signature", "")
    if not webhook_id or not raw_ts or not raw_sig:
        raise SignatureError(
            "missing_signature", "webhook-id, webhook-timestamp and webhook-signature are required"
        )
    if len(webhook_id) > 255 or len(raw_sig) > _MAX_HEADER or not webhook_id.isprintable():
        raise SignatureError("malformed_signature", "signature headers are malformed")
    try:
        timestamp = int(raw_ts)
    except ValueError as exc:
        raise SignatureError("malformed_signature", "webhook-timestamp is not an integer") from exc
    current = time.time() if now is None else now
    if timestamp < current - tolerance_seconds:
        raise SignatureError("expired_signature", "webhook-timestamp is too old")
    if timestamp > current + tolerance_seconds:
        raise SignatureError("future_signature", "webhook-timestamp is too far in the future")
    candidates = _parse_signatures(raw_sig)
    content = _signed_content(webhook_id, timestamp, body)
    for secret in secrets:
        expected = hmac.digest(decode_secret(secret), content, "sha256")  # one C call
        for candidate in candidates:
            if hmac.compare_digest(expected, candidate):
                return Verified(webhook_id=webhook_id, timestamp=timestamp)
    raise SignatureError("bad_signature", "no signature matches")


def _signed_content(webhook_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{webhook_id}.{timestamp}.".encode() + body


def _parse_signatures(header: str) -> list[bytes]:
    found: list[bytes] = []
    for item in header.split(" "):
        version, _, value = item.partition(",")
        if version != "v1" or not value:
            continue  # other schemes (v1a asymmetric) are not ours to check
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not found:
        raise SignatureError("malformed_signature", "no v1 signature in webhook-signature")
    return found
