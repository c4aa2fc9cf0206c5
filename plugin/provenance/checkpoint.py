"""Signed checkpoints of the log, in the C2SP formats (as golang.org/x/mod/sumdb/note writes them).

Signed note (c2sp.org/signed-note): a UTF-8 text ending in a newline, a blank line, then one or
more signature lines "— <key name> <base64(key id || signature)>" (U+2014, spaces, newline). The
text is separated from the signatures by the last blank line; no control characters but newline.
Key names are non-empty, without spaces or "+". The Ed25519 key id is the first four bytes of
SHA-256(key name || 0x0A || 0x01 || 32-byte public key), and the signature is Ed25519 over the
text. A verifier ignores signatures of keys it does not know (a witness's cosignature, say),
rejects the note if a known key's signature fails, and needs at least one that holds.

Checkpoint (c2sp.org/tlog-checkpoint): the note text is the origin line, the tree size in
decimal with no leading zeroes, the RFC 6962 root hash in standard base64, then optional
non-empty extension lines, each ending in a newline. OnRecord signs under its origin as key name
with its active Ed25519 provenance key and writes no extension lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from plugin.provenance.keys import SigningKey, raw_public, verify_signature

_DASH = "\u2014"
_MAX_SIGNATURES = 100  # the spec asks verifiers to accept at least 16; sumdb/note stops at 100
_SIZE = re.compile(r"^(0|[1-9][0-9]*)$")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_KEY_NAME = re.compile(r"^[^\s+]+$")


class CheckpointError(Exception):
    """A note or a checkpoint does not parse or verify."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified (or freshly made) checkpoint."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The note text that is signed."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)


def note_key_id(name: str, key: Ed25519PublicKey) -> bytes:
    """The signed-note key id of an Ed25519 key under `name`."""
    return hashlib.sha256(name.encode() + b"\n\x01" + raw_public(key)).digest()[:4]


def sign_note(text: str, name: str, key: SigningKey) -> str:
    """The signed note of `text` (which ends in a newline) under key name `name`."""
    if not text.endswith("\n") or _CONTROL.search(text):
        raise CheckpointError("a note's text ends in a newline and has no control characters")
    if not _KEY_NAME.match(name):
        raise CheckpointError(f"{name!r} cannot be a key name (non-empty, no spaces, no '+')")
    signature = note_key_id(name, key.public) + key.sign(text.encode())
    return f"{text}\n{_DASH} {name} {base64.b64encode(signature).decode()}\n"


def open_note(note: str, keys: Iterable[tuple[str, Ed25519PublicKey]]) -> tuple[str, list[str]]:
    """(text, names of the known keys whose signatures hold); CheckpointError if none does."""
    if _CONTROL.search(note):
        raise CheckpointError("malformed note: control characters")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise CheckpointError("not a signed note (no blank line before the signatures)")
    text, lines = note[: split + 1], note[split + 2 : -1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise CheckpointError("malformed note: too many signatures")
    known = {(name, note_key_id(name, key)): key for name, key in keys}
    verified: list[str] = []
    for line in lines:
        dash, _, rest = line.partition(" ")
        name, _, encoded = rest.partition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raw = b""
        if dash != _DASH or not _KEY_NAME.match(name) or len(raw) <= 4 or " " in encoded:
            raise CheckpointError(f"malformed signature line {line!r}")
        key = known.get((name, raw[:4]))
        if key is None:
            continue  # someone else's signature: not ours to judge
        if not verify_signature(key, raw[4:], text.encode()):
            raise CheckpointError("the note's signature does not hold: it was altered")
        verified.append(name)
    if not verified:
        raise CheckpointError("the checkpoint is not signed by a known key")
    return text, verified


def parse_checkpoint(text: str) -> Checkpoint:
    """The checkpoint a note's text states (not verified: see open_checkpoint)."""
    if not text.endswith("\n"):
        raise CheckpointError("a checkpoint's text ends in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise CheckpointError("a checkpoint has an origin, a size, a root hash and no empty line")
    origin, size, root = lines[:3]
    try:
        root_hash = base64.b64decode(root, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(f"bad root hash: {exc}") from exc
    if not _SIZE.match(size):
        raise CheckpointError(f"bad tree size {size!r}")
    if len(root_hash) != 32 or base64.b64encode(root_hash).decode() != root:
        raise CheckpointError("bad root hash: not 32 bytes in standard base64")
    return Checkpoint(origin, int(size), root_hash, tuple(lines[3:]))


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> str:
    """The signed note, under the origin as key name."""
    return sign_note(checkpoint.body(), checkpoint.origin, key)


def open_checkpoint(
    note: str, keys: Iterable[Ed25519PublicKey], origin: str | None = None, key_name: str | None = None
) -> Checkpoint:
    """Parse and verify a signed checkpoint against any of `keys`; CheckpointError if it fails.

    The keys sign under `key_name`, by default the checkpoint's origin (as OnRecord signs, and as
    the spec recommends); `origin`, when given, is the one expected.
    """
    split = note.rfind("\n\n")
    checkpoint = parse_checkpoint(note[: split + 1] if split >= 0 else note)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint is for {checkpoint.origin!r}, not {origin!r}")
    name = checkpoint.origin if key_name is None else key_name
    open_note(note, [(name, key) for key in keys])
    return checkpoint
