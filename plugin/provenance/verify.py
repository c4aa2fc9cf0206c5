"""Verification with nothing but public keys: envelopes, a record's chain, the log, a quoted figure.

Used by the API, by `python -m plugin verify` (offline) and by the tests. Each failure is named
by a machine-readable reason:

- unknown_key: signed by no key in the published set;
- signature_invalid: a byte of the statement (or its signature) was changed;
- malformed: not a DSSE envelope holding an in-toto statement;
- statement_inconsistent: the subject digest is not the digest of the values it states;
- chain_broken: a statement does not follow the one before it (order, gap, or changed link);
- checkpoint_invalid: the log checkpoint's signature does not hold;
- log_mismatch: the statement is not in the signed log where its proof says (the log was changed);
- log_inconsistent: two signed checkpoints of the log do not extend one another (the log's past
  was rewritten, or it showed someone else another history);
and, for a quoted figure, value_differs and change_not_recorded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from plugin.provenance import merkle
from plugin.provenance.canonical import canonical_json, normalise, normalise_quoted, values_digest
from plugin.provenance.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from plugin.provenance.dsse import EnvelopeError, open_envelope
from plugin.provenance.statement import RECORD_PREDICATE, parse_statement

REASONS: Mapping[str, str] = {
    "unknown_key": "signed by a key OnRecord never published",
    "signature_invalid": "the signed statement was altered",
    "malformed": "not a signed OnRecord statement",
    "statement_inconsistent": "the statement's digest does not match its values",
    "chain_broken": "the record's chain of statements is broken",
    "checkpoint_invalid": "the log's checkpoint is not OnRecord's",
    "log_mismatch": "the statement is not in OnRecord's signed log as stated",
    "log_inconsistent": "the log's signed checkpoints contradict each other: its past was rewritten",
    "value_differs": "the value differs from the recorded one",
    "change_not_recorded": "the change is not recorded",
}


@dataclass
class EntryCheck:
    """One statement's verification."""

    verified: bool
    reason: str = ""
    detail: str = ""
    statement: dict[str, Any] | None = None
    keyid: str | None = None


@dataclass
class ChainCheck:
    """A whole chain's verification; `entries` newest first, as given."""

    entries: list[EntryCheck]
    checkpoint: Checkpoint | None = None
    checkpoint_error: str = ""

    @property
    def verified(self) -> bool:
        """Every entry holds."""
        return bool(self.entries) and all(e.verified for e in self.entries)

    @property
    def first_failure(self) -> EntryCheck | None:
        """The oldest failing entry (the cause; later ones often fail because of it)."""
        return next((e for e in reversed(self.entries) if not e.verified), None)


@dataclass(frozen=True)
class Verdict:
    """The answer to "is this figure from the system?"."""

    verified: bool
    reason: str
    statement: str
    details: Mapping[str, Any] = field(default_factory=dict)


def verify_chain(
    entries: Sequence[Mapping[str, Any]],
    keys: Mapping[str, Ed25519PublicKey],
    checkpoint_note: str | None = None,
    origin: str | None = None,
) -> ChainCheck:
    """Check each entry ({"envelope", "inclusion_proof"?}, newest first) and their links."""
    checkpoint: Checkpoint | None = None
    checkpoint_error = ""
    if checkpoint_note is not None:
        try:
            checkpoint = open_checkpoint(checkpoint_note, keys.values(), origin)
        except CheckpointError as exc:
            checkpoint_error = str(exc)
    checks: list[EntryCheck] = []
    previous: tuple[int, str, str] | None = None  # (sequence, digest, subject name) of the older entry
    for entry in reversed(entries):
        check = _entry(entry, keys)
        statement = check.statement
        if check.verified and statement is not None:
            link = _link(statement, previous)
            if link:
                check = EntryCheck(False, "chain_broken", link, statement, check.keyid)
        if check.verified:
            check = _in_log(check, entry, checkpoint, checkpoint_note, checkpoint_error)
        previous = _position(entry, statement)
        checks.append(check)
    checks.reverse()
    return ChainCheck(checks, checkpoint, checkpoint_error)


def _entry(entry: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> EntryCheck:
    try:
        payload, kid = open_envelope(entry["envelope"], keys)
        statement = parse_statement(payload)
    except EnvelopeError as exc:
        return EntryCheck(False, exc.reason, str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        return EntryCheck(False, "malformed", f"not a statement: {exc}")
    if statement.get("predicateType") == RECORD_PREDICATE:
        try:
            values = statement["predicate"]["entity"]["values"]
            stated = statement["subject"][0]["digest"]["sha256"]
        except (KeyError, IndexError, TypeError) as exc:
            return EntryCheck(False, "malformed", f"statement lacks {exc}", statement, kid)
        if values_digest(values) != stated:
            return EntryCheck(
                False, "statement_inconsistent", "subject digest != digest of values", statement, kid
            )
    return EntryCheck(True, statement=statement, keyid=kid)


def _position(entry: Mapping[str, Any], statement: Mapping[str, Any] | None) -> tuple[int, str, str] | None:
    """Where this entry stands, by what it says (even when its signature failed)."""
    try:
        payload = base64.b64decode(entry["envelope"]["payload"])
        said = statement or json.loads(payload)
        return (
            int(said["predicate"]["sequence"]),
            hashlib.sha256(payload).hexdigest(),
            said["subject"][0]["name"],
        )
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error):
        return None


def _link(statement: Mapping[str, Any], previous: tuple[int, str, str] | None) -> str:
    predicate = statement.get("predicate", {})
    sequence = predicate.get("sequence")
    revision = predicate.get("wasRevisionOf")
    name = statement["subject"][0]["name"]
    if previous is None:
        if sequence != 1 or revision is not None:
            return f"the oldest statement is number {sequence}, revising {revision}: earlier ones are missing"
        return ""
    seq, digest, prev_name = previous
    if name != prev_name:
        return f"statement about {name} in the chain of {prev_name}"
    if sequence != seq + 1:
        return f"statement {sequence} follows statement {seq}"
    if not isinstance(revision, dict) or revision.get("sha256") != digest:
        return f"statement {sequence} does not revise the statement before it"
    return ""


def _in_log(
    check: EntryCheck,
    entry: Mapping[str, Any],
    checkpoint: Checkpoint | None,
    note: str | None,
    checkpoint_error: str,
) -> EntryCheck:
    if note is None:
        return check  # no log evidence asked for
    if checkpoint is None:
        return EntryCheck(False, "checkpoint_invalid", checkpoint_error, check.statement, check.keyid)
    proof = entry.get("inclusion_proof")
    try:
        index, size = int(proof["log_index"]), int(proof["tree_size"])  # type: ignore[index]
        hashes = [bytes.fromhex(h) for h in proof["hashes"]]  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return EntryCheck(False, "log_mismatch", "no inclusion proof", check.statement, check.keyid)
    leaf = merkle.leaf_hash(canonical_json(dict(entry["envelope"])))
    if size != checkpoint.size or not merkle.verify_inclusion(
        index, size, leaf, hashes, checkpoint.root_hash
    ):
        return EntryCheck(
            False,
            "log_mismatch",
            f"leaf {index} does not lead to the signed root of {checkpoint.size}",
            check.statement,
            check.keyid,
        )
    return check


# -- two checkpoints of the log ------------------------------------------------------------------


@dataclass(frozen=True)
class ConsistencyCheck:
    """Whether a newer signed checkpoint extends an older one."""

    consistent: bool
    old: Checkpoint | None = None
    new: Checkpoint | None = None
    reason: str = ""
    detail: str = ""


def verify_checkpoints(
    old_note: str,
    new_note: str,
    proof: Sequence[str],
    keys: Mapping[str, Ed25519PublicKey],
    origin: str | None = None,
) -> ConsistencyCheck:
    """Check both signatures and the consistency proof (hex hashes) from the older tree to the newer.

    A log only grows: the newer tree must hold the older one as its first leaves, which the RFC
    6962 consistency proof shows with O(log n) hashes. Reasons: checkpoint_invalid (a signature
    or format fails, or the two are of different logs) and log_inconsistent.
    """
    opened: list[Checkpoint] = []
    for which, note in (("older", old_note), ("newer", new_note)):
        try:
            opened.append(open_checkpoint(note, keys.values(), origin))
        except CheckpointError as exc:
            old = opened[0] if opened else None
            return ConsistencyCheck(False, old, None, "checkpoint_invalid", f"{which}: {exc}")
    old, new = opened
    if old.origin != new.origin:
        return ConsistencyCheck(
            False, old, new, "checkpoint_invalid", f"checkpoints of {old.origin!r} and {new.origin!r}"
        )

    def inconsistent(detail: str) -> ConsistencyCheck:
        return ConsistencyCheck(False, old, new, "log_inconsistent", detail)

    if old.size > new.size:
        return inconsistent(f"the log shrank from {old.size} to {new.size} leaves")
    try:
        hashes = [bytes.fromhex(h) for h in proof]
    except (TypeError, ValueError):
        return inconsistent("the consistency proof is not a list of hex hashes")
    if old.size == new.size:
        if old.root_hash != new.root_hash or hashes:
            return inconsistent(f"two different trees of {old.size} leaves were signed")
    elif old.size == 0:
        if old.root_hash != merkle.EMPTY_ROOT:
            return inconsistent("the signed empty tree has a root other than the empty tree's")
    elif not merkle.verify_consistency(old.size, new.size, hashes, old.root_hash, new.root_hash):
        return inconsistent(
            f"the tree of {new.size} leaves does not hold the signed tree of {old.size} as its first leaves"
        )
    return ConsistencyCheck(True, old, new)


# -- a quoted figure ----------------------------------------------------------------------------


def verdict(
    chain: ChainCheck,
    obj: str,
    record_id: str,
    field_name: str,
    quoted: Any,
    live: Mapping[str, Any] | None = None,
) -> Verdict:
    """Whether `quoted` is the recorded, signed value of the field (and, given `live`, still the CRM's)."""
    if not chain.entries:
        return Verdict(
            False,
            "change_not_recorded",
            f"OnRecord has no record of {obj} {record_id}; do not quote it as on record.",
        )
    failure = chain.first_failure
    latest = chain.entries[0]
    if failure is not None:
        why = REASONS.get(failure.reason, failure.reason)
        return Verdict(
            False,
            failure.reason,
            f"Do not quote this yet: OnRecord cannot vouch for {obj} {record_id} ({why}).",
            {"detail": failure.detail},
        )
    assert latest.statement is not None
    predicate = latest.statement["predicate"]
    entity = predicate["entity"]
    label = f"{obj} '{entity['name']}'" if entity.get("name") else f"{obj} {record_id}"
    values = entity["values"]
    if field_name not in values:
        return Verdict(False, "change_not_recorded", f"OnRecord has not recorded {label} {field_name}.")
    recorded = values[field_name]
    if normalise_quoted(quoted) != normalise(recorded):
        return Verdict(
            False,
            "value_differs",
            f"Not what is on record: CRM shows {label} {field_name} as {figure(recorded)}, "
            f"not {figure(quoted)}.",
            {"recorded": recorded},
        )
    if live is not None and field_name in live and normalise(live[field_name]) != normalise(recorded):
        return Verdict(
            False,
            "change_not_recorded",
            f"Do not quote this yet: the CRM now shows {label} {field_name} as {figure(live[field_name])}, "
            f"a change OnRecord has not recorded (recorded: {figure(recorded)}).",
            {"recorded": recorded, "live": live[field_name]},
        )
    return Verdict(
        True,
        "",
        f"CRM shows that {label} {field_name} is {figure(recorded)} — {how(predicate)}, "
        "recorded by OnRecord.",
    )


def how(predicate: Mapping[str, Any]) -> str:
    """ "entered through form 'Budget Request' (response 123) on 26 Nov 2026" and the like."""
    by = predicate.get("wasGeneratedBy") or {}
    attributed = predicate.get("wasAttributedTo") or {}
    agent = attributed.get("agentName") or attributed.get("agent")
    form = by.get("form")
    channel = predicate.get("channel")
    if form:
        text = f"entered through form '{form['name']}' (response {form['responseId']})"
    elif channel == "Flow":
        text = f"set by flow run {by.get('flowRunId')}"
    elif channel == "API":
        text = f"written through the API by {agent}"
    elif channel == "Import":
        text = f"imported by {agent}"
    elif channel == "UI":
        text = f"entered in the CRM by {agent}"
    else:
        text = "from an unknown source"
    when = datetime.fromisoformat(str(predicate["generatedAtTime"]).replace("Z", "+00:00"))
    return f"{text} on {when.day} {when:%b %Y}"


def figure(value: Any) -> str:
    """A value as said aloud: numbers with thousands separators."""
    value = normalise_quoted(value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int | float):
        return f"{Decimal(str(value)):,}"
    return str(value)
