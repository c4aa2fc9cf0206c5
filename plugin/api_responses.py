"""What OnRecord answers on its API, described once, as pydantic models: plugin/openapi.py generates
both OpenAPI documents' response definitions from them (as it does the request bodies' from
plugin/api_models.py), and the tests validate the real endpoints' answers with them.

Conventions (each model's docstring is its description, ``Field(description=...)`` a property's):

* :class:`ResponseModel` — strict (no coercion) and closed (``extra="forbid"``): a member an
  endpoint answers but the model does not describe, or one of the wrong type, fails validation. The
  documents do not promise the closure (no ``additionalProperties: false``): callers must tolerate
  members added later;
* a required member is one every answer carries (null only where its type says ``| None``);
* ``Omissible[T] = None``: not required, absent or a T but never null; ``T | None = None``: not
  required, and null when the endpoint knows no value;
* :class:`InlinePart` — a part described inline where it is used, not as a definition of its own
  (a consistency proof, a signature, the signal counts).

A connector's answers (Power Automate's subscription, test connection and notification) are in its
``models`` module, listed in its ``OPENAPI_MODELS`` (plugin/registry.py, ``openapi_models``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Final, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from plugin.api_models import Checked, fail, parse_timestamp

__all__ = [
    "INLINE",
    "RESPONSE_MODELS",
    "Approval",
    "ApprovalChain",
    "ApprovalChange",
    "ApprovalStage",
    "Base64",
    "Citation",
    "ConsistencyProof",
    "DateTime",
    "Envelope",
    "Error",
    "InclusionProof",
    "InlinePart",
    "LeaderSignals",
    "Leaders",
    "LogCheckpoint",
    "Omissible",
    "Provenance",
    "ProvenanceEntry",
    "ReceiveResult",
    "ResponseModel",
    "SignalCounts",
    "Signature",
    "VerifyResult",
]

# The key by which a model's JSON Schema asks plugin/openapi.py's model_schemas to inline it.
INLINE: Final = "x-onrecord-inline"
T = TypeVar("T")


def _documented(schema: dict[str, Any]) -> None:
    # extra="forbid" checks OnRecord's own answers; it is no promise to callers (members may be
    # added later), and Salesforce Flow's operations must carry no additionalProperties at all.
    if schema.get("additionalProperties") is False:
        del schema["additionalProperties"]


def _inline(schema: dict[str, Any]) -> None:
    _documented(schema)
    schema[INLINE] = True


class ResponseModel(BaseModel):
    """An answer or a part of one: strict types, no undescribed member, frozen."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, json_schema_extra=_documented)


class InlinePart(ResponseModel):
    """A part of an answer, described inline where it is used (not a definition of its own)."""

    model_config = ConfigDict(json_schema_extra=_inline)


# -- member types ---------------------------------------------------------------------------------


def _present(value: T | None) -> T:
    if value is None:
        raise fail("wrong_type", "must not be null (leave the member out)")
    return value


# Not required, and never null: absent (None here, left out by exclude_none) or a T. The None is
# not in the documents: a client is never sent one.
Omissible = Annotated[T | SkipJsonSchema[None], AfterValidator(_present)]


def _date_time(value: Any) -> str:
    if not isinstance(value, str):
        raise fail("wrong_type", "must be a string")
    parse_timestamp(value)  # an ISO 8601 date-time with an offset, or refused
    return value


def _base64(value: Any) -> str:
    if not isinstance(value, str):
        raise fail("wrong_type", "must be a string")
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        raise fail("invalid_value", "must be base64") from None
    return value


# Kept as the text answered (the JSON is unchanged), checked to be what the documents say it is.
DateTime = Annotated[str, Checked(_date_time, {"type": "string", "format": "date-time"})]
Base64 = Annotated[str, Checked(_base64, {"type": "string", "format": "byte"})]


# -- errors and acknowledgements ------------------------------------------------------------------


class Error(ResponseModel):
    """Why a request was refused."""

    error: str = Field(description="What went wrong.")
    reason: str = Field(description="Machine-readable reason (also the metric label).")


class ReceiveResult(ResponseModel):
    """Acknowledgement: the request's events are stored (a retried delivery counts as a duplicate)."""

    # plugin/receive.py's json_ack writes this body by hand (the hot path); the tests hold it to this.
    stored: int = Field(description="Events newly stored.")
    duplicates: int = Field(description="Re-deliveries of events already stored.")
    ignored: int = Field(description="Known events OnRecord does not process.")


# -- provenance -----------------------------------------------------------------------------------


class Signature(InlinePart):
    """One signature."""

    keyid: str = Field(description="Key id (see /.well-known/onrecord-keys.json).")
    sig: str = Field(description="Base64.")


class Envelope(ResponseModel):
    """A DSSE envelope holding a signed in-toto statement."""

    payloadType: str = Field(description="application/vnd.in-toto+json")
    payload: Base64 = Field(description="The statement, base64.")
    signatures: list[Signature]


class InclusionProof(ResponseModel):
    """RFC 6962 inclusion proof of a statement in OnRecord's append-only log."""

    log_index: int = Field(description="The statement's index in the log.")
    tree_size: int = Field(description="Size of the tree the proof is for.")
    root_hash: str = Field(description="The tree's root hash (hex).")
    hashes: list[str] = Field(description="Audit path (hex).")


class ProvenanceEntry(ResponseModel):
    """One statement of a record's chain, with its verification."""

    envelope: Envelope
    verified: bool = Field(description="Signature and chain link hold.")
    reason: Omissible[str] = Field(
        default=None,
        description=(
            "Why not, when not verified: unknown_key, signature_invalid, malformed, "
            "statement_inconsistent, chain_broken, checkpoint_invalid, log_mismatch."
        ),
    )
    # null when the log cannot show the statement where its checkpoint says (then log_mismatch)
    inclusion_proof: InclusionProof | None = None


class Provenance(ResponseModel):
    """A record's provenance chain, newest first."""

    object: str = Field(description="CRM object.")
    record_id: str = Field(description="Record id.")
    chain: list[ProvenanceEntry]
    checkpoint: str = Field(
        description="The log's latest signed checkpoint (c2sp.org/tlog-checkpoint signed note)."
    )


class ConsistencyProof(InlinePart):
    """RFC 6962 consistency proof (section 2.1.2) from the tree of from_size leaves."""

    from_size: int = Field(description="The older tree size asked for.")
    tree_size: int = Field(description="The checkpoint's tree size.")
    hashes: list[str] = Field(description="The proof's hashes (hex); empty when from_size is 0 or tree_size.")


class LogCheckpoint(ResponseModel):
    """The log's newest signed checkpoint and the consistency proof from an older tree size."""

    checkpoint: str = Field(
        description=(
            "The signed checkpoint: c2sp.org/tlog-checkpoint text (origin, tree size, base64 root "
            "hash) in a c2sp.org/signed-note signed with OnRecord's Ed25519 key under the origin."
        )
    )
    consistency_proof: ConsistencyProof


class VerifyResult(ResponseModel):
    """The verdict, and the sentence to say."""

    verified: bool = Field(description="The value is the recorded, signed one.")
    reason: str = Field(
        description=(
            "Empty when verified; else value_differs, change_not_recorded, chain_broken, unknown_key, "
            "signature_invalid, log_mismatch (or another reason of ProvenanceEntry)."
        )
    )
    statement: str = Field(description="What to say, e.g. 'CRM shows that ...'.")


class Citation(ResponseModel):
    """The signed citation (a statement of its own), counted as a leader signal."""

    id: str = Field(description="Citation id: the sha256 of the signed citation statement.")
    envelope: Envelope
    verified: bool = Field(description="The cited value is the recorded, signed one.")
    reason: str = Field(description="Why not, when not verified.")
    statement: str = Field(description="What to say about the figure.")


# -- approvals ------------------------------------------------------------------------------------
# Read back from the approvals rule's stored state (plugin/approvals_view.py), so the members the
# rule may not know yet (no verdict, no form response, no deadline) are null.


class ApprovalStage(ResponseModel):
    """One stage of the chain."""

    name: str = Field(description="The stage, as the policy names it.")
    status: str = Field(description="approved, rejected or missing.")
    approved_at: str | None = Field(
        default=None, description="When the stage was decided (UTC), if approved."
    )
    approvers: list[str] = Field(description="Who approved.")
    approver_names: list[str] = Field(description="Their names.")
    problems: list[str] = Field(description="Responses that did not count, and why.")


class ApprovalChain(ResponseModel):
    """The record's latest form response and each stage's decisions, as of now."""

    status: str = Field(description="proven, failed or incomplete.")
    reasons: list[str] = Field(description="Why not proven.")
    form_name: str | None = Field(default=None, description="The form, if a response was received.")
    response_id: str | None = Field(default=None, description="The form response.")
    requester: str | None = Field(default=None, description="Who submitted the form.")
    requester_name: str | None = Field(default=None, description="Their name.")
    submitted_at: str | None = Field(default=None, description="When (UTC).")
    stages: list[ApprovalStage]


class ApprovalChange(ResponseModel):
    """A change of the approval field to an approved value, and how OnRecord judged it."""

    id: str = Field(description="The change's delivery id.")
    changed_at: str = Field(description="When it was made (UTC).")
    actor: str | None = Field(default=None, description="Who made it (CRM user id).")
    actor_name: Omissible[str] = Field(default=None, description="Their name.")
    value: str = Field(description="The value set.")
    verdict: str = Field(
        description="Verified, Pending, Blocked, or Baseline (approved before OnRecord saw it)."
    )
    reason: str = Field(description="Why, in words.")
    deadline: str | None = Field(
        default=None, description="Until when a Pending change waits for the flow's events."
    )
    reverted: bool = Field(description="OnRecord reverted the value.")


class Approval(ResponseModel):
    """A record's approval: verdict, reason, chain and the changes judged."""

    object: str = Field(description="CRM object.")
    record_id: str = Field(description="Record id (18 characters for Salesforce).")
    verdict: str | None = Field(description="Verified, Pending or Blocked (empty before any verdict).")
    note: str | None = Field(description="What OnRecord wrote on the record, in words.")
    reason: str = Field(description="Why the verdict, in words.")
    judged_at: str | None = Field(default=None, description="When OnRecord gave the verdict (UTC).")
    status_value: str | None = Field(
        default=None, description="The approval field's value as OnRecord last saw it."
    )
    status_by_name: str | None = Field(default=None, description="Who set it.")
    chain: ApprovalChain
    changes: list[ApprovalChange]


# -- leaders --------------------------------------------------------------------------------------


class SignalCounts(InlinePart):
    """How many of each signal the leader gave in the period (retracted ones never count)."""

    # One member per kind of plugin.config.SIGNAL_KINDS, in its order: a fixed object, not a map,
    # because Salesforce External Services and Flow cannot use free-form maps.
    login: int = Field(description="Interactive logins.")
    record_touched: int = Field(description="Governed records the leader changed.")
    form_approval: int = Field(description="Approval decisions given through the official form.")
    off_system_approval: int = Field(description="Approvals given outside the form.")
    training: int = Field(description="Trainings attended.")
    citation: int = Field(description="CRM figures cited.")
    report_view: int = Field(description="CRM reports viewed.")
    dashboard_view: int = Field(description="CRM dashboards viewed.")


class LeaderSignals(ResponseModel):
    """One leader's signals in the period."""

    email: str = Field(description="The leader's e-mail (empty when only the CRM user id is known).")
    name: str = Field(description="The leader's name.")
    salesforce_id: str = Field(
        description="The leader's Salesforce user id, 18 characters (empty when unknown)."
    )
    counts: SignalCounts
    score: float = Field(
        description="Sum of weight x count over the kinds, rounded to 0.1 (see weights_version)."
    )
    trend: float = Field(description="Score minus the previous period's score.")
    champion_candidate: bool = Field(description="A 'system champion' candidate.")


class Leaders(ResponseModel):
    """Leaders' signals, scores, trends and champion candidates in one period, best score first."""

    period: str = Field(description="The period: an ISO week (2026-W48) or a day (2026-11-26).")
    weights_version: str = Field(description="The version of the published weights the scores use.")
    leaders: list[LeaderSignals]
    champions: list[str] = Field(
        description="The champion candidates' e-mails (a user id when no e-mail is known)."
    )
    config_version: Omissible[str] = Field(
        default=None,
        description=(
            "The version of the CRM's configuration records the leaders and weights came from "
            "([crm_config]); absent when they came from the configuration file alone."
        ),
    )


# The core's answers plugin/openapi.py documents (the models they use come along).
RESPONSE_MODELS: Final[tuple[type[ResponseModel], ...]] = (
    Error,
    ReceiveResult,
    Provenance,
    LogCheckpoint,
    VerifyResult,
    Citation,
    Approval,
    Leaders,
)
