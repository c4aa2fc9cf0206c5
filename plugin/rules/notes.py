"""The sentences OnRecord writes about an approval: for the approver, the requester and the auditor.

Times are UTC and short ("26 Nov 10:05"); people are named by the directory's display name.
"""

from __future__ import annotations

from datetime import UTC, datetime

from plugin.directory import Directory
from plugin.rules.chain import ChainResult

NOTE_LIMIT = 32_000  # the note field is a long text area (32,768 characters)


def day(value: datetime) -> str:
    """'26 Nov'."""
    return f"{value.astimezone(UTC).day} {value.astimezone(UTC):%b}"


def moment(value: datetime) -> str:
    """'26 Nov 10:05'."""
    return f"{day(value)} {value.astimezone(UTC):%H:%M}"


def chain_sentence(result: ChainResult, directory: Directory) -> str:
    """ "Form 'Budget Request' by Alex Requester on 26 Nov; business strategy: approved by Vera
    Strategy 10:05; finance: approved by Casey Finance 10:20"."""
    sub = result.submission
    if sub is None:
        return "No form response"
    parts = [f"Form '{sub.form_name}' by {directory.name_of(sub.responder)} on {day(sub.at)}"]
    for stage in result.stages:
        if stage.status == "approved" and stage.approved_at is not None:
            names = ", ".join(directory.name_of(a) for a in stage.approvers)
            parts.append(f"{stage.name}: approved by {names} {_clock(stage.approved_at, sub.at)}")
        elif stage.status == "rejected":
            parts.append(f"{stage.name}: rejected")
        else:
            parts.append(f"{stage.name}: no decision")
    return "; ".join(parts)


def _clock(value: datetime, reference: datetime) -> str:
    """Just the time when on the submission's day, else day and time."""
    if value.astimezone(UTC).date() == reference.astimezone(UTC).date():
        return f"{value.astimezone(UTC):%H:%M}"
    return moment(value)


def change_sentence(value: object, actor: str | None, at: datetime, directory: Directory) -> str:
    """'set to Approved by Jane Doe in the CRM on 26 Nov 10:30'."""
    return f"set to {value} by {directory.name_of(actor)} in the CRM on {moment(at)}"


def blocked_note(
    value: object, actor: str | None, at: datetime, form: str, result: ChainResult, directory: Directory
) -> str:
    """Why a change was blocked, for the person who made it and their approver."""
    reasons = "; ".join(result.reasons) or "the approval chain is not proven"
    text = f"{change_sentence(value, actor, at, directory)}, not through form '{form}'; {reasons}. (UTC)"
    return text[:NOTE_LIMIT]


def pending_note(
    value: object,
    actor: str | None,
    at: datetime,
    deadline: datetime,
    result: ChainResult,
    directory: Directory,
) -> str:
    """What OnRecord is waiting for."""
    reasons = "; ".join(result.reasons)
    until = f"{moment(deadline)}:{deadline.astimezone(UTC):%S}"  # seconds: a grace may be short
    text = f"{change_sentence(value, actor, at, directory)}; waiting until {until} UTC: {reasons}"
    return text[:NOTE_LIMIT]


def verified_note(result: ChainResult, directory: Directory, *, set_by_onrecord: bool) -> str:
    """The proven chain, in words."""
    text = chain_sentence(result, directory) + " (UTC)"
    if set_by_onrecord:
        text += ". Status set by OnRecord."
    return text[:NOTE_LIMIT]
