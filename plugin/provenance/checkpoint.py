"""Signed checkpoints of the log, in the transparency-dev / C2SP formats.

Checkpoint body (c2sp.org/tlog-checkpoint): the origin line, the tree size in decimal, the root
hash in standard base64, each ending in a newline. It is wrapped in a signed note
(c2sp.org/signed-note): the body, a blank line, then one line per signature,
"— <key name> base64(key id || signature)", with the 4-byte key id
SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4] and an Ed25519 signature
over the body. OnRecord's key name is the log's origin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from plugin.provenance.keys import SigningKey, raw_public, verify_signature

_DASH = "\u2014"


class CheckpointError(Exception):
    """A checkpoint does not parse or verify."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified (or freshly made) checkpoint."""

    origin: str
    size: int
    root_hash: bytes

    def body(self) -> str:
        """The note text that is signed."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root_hash).decode()}\n"


def note_key_id(name: str, key: Ed25519PublicKey) -> bytes:
    """The signed-note key id of an Ed25519 key under `name`."""
    return hashlib.sha256(name.encode() + b"\n\x01" + raw_public(key)).digest()[:4]


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> str:
    """The signed note."""
    body = checkpoint.body()
    sig = note_key_id(checkpoint.origin, key.public) + key.sign(body.encode())
    return f"{body}\n{_DASH} {checkpoint.origin} {base64.b64encode(sig).decode()}\n"


def open_checkpoint(note: str, keys: Iterable[Ed25519PublicKey], origin: str | None = None) -> Checkpoint:
    """Parse and verify a signed checkpoint against any of `keys`; CheckpointError if it fails."""
    body, sep, signatures = note.partition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise CheckpointError("not a signed note (no blank line before the signatures)")
    body += "\n"
    lines = body.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointError("a checkpoint has an origin, a size and a root hash")
    try:
        size = int(lines[1])
        root_hash = base64.b64decode(lines[2], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise CheckpointError(f"bad size or root hash: {exc}") from exc
    if size < 0 or len(root_hash) != 32 or str(size) != lines[1]:
        raise CheckpointError("bad size or root hash")
    name = lines[0]
    if origin is not None and name != origin:
        raise CheckpointError(f"checkpoint is for {name!r}, not {origin!r}")
    known = {note_key_id(name, key): key for key in keys}
    for line in signatures[:-1].split("\n"):
        prefix = f"{_DASH} {name} "
        if not line.startswith(prefix):
            continue
        try:
            raw = base64.b64decode(line[len(prefix) :], validate=True)
        except binascii.Error:
            continue
        key = known.get(raw[:4])
        if key is None:
            continue
        if not verify_signature(key, raw[4:], body.encode()):
            raise CheckpointError("the checkpoint's signature does not hold: it was altered")
        return Checkpoint(name, size, root_hash)
    raise CheckpointError("the checkpoint is not signed by a known key")
