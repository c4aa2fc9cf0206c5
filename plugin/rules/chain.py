"""Is an approval chain proven? A pure function of a policy, the record's facts and the directory.

A record's chain, as of a moment `at` (a status change, or now), is the latest submission of the
policy's form at or before `at`, and the stage decisions given after it (up to `at` plus a small
clock skew between Power Automate and the CRM). It is **proven** when every stage approved, in
the configured order, each by one of that stage's approvers, none by the requester (the form's
responder), every decision after the submission, the whole chain within `max_chain_age_days`.

Each stage is judged from its individual responses, never from the connector's summary outcome:
a response counts as yes when its text is one of the stage's `approve_responses` (exact, as the
Approvals connector's responses are case-sensitive); any other response from an approver of the
stage is a no and ends the chain. `require = "first"`: one approver's yes decides the stage;
`"everyone"`: every approver of the stage (groups expanded, the requester left out) said yes.

The result is `proven`, `failed` (final for this submission: a rejection, a stale chain, stages
out of order) or `incomplete` (a later event could still prove it: a stage with no decision yet,
or only decisions that do not count), each with reasons in words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from plugin.config import ApprovalStage, GovernedObject
from plugin.directory import Directory, Person

SKEW = timedelta(minutes=2)  # clocks of Power Automate and the CRM may differ this much

Status = Literal["proven", "failed", "incomplete"]


@dataclass(frozen=True)
class Submission:
    """One form response about the record."""

    response_id: str
    form_id: str
    form_name: str
    responder: str
    at: datetime
    flow_run_id: str | None = None


@dataclass(frozen=True)
class Decision:
    """One approver's response in one stage."""

    id: str  # unique per response (approval id, stage, responder)
    stage_number: int | None
    stage_name: str | None
    responder: str  # e-mail or UPN
    responder_name: str | None
    response: str  # the approverResponse text, exact
    at: datetime
    approval: str = ""  # the approval's id (name)


@dataclass(frozen=True)
class StageResult:
    """How one stage stands."""

    name: str
    status: Literal["approved", "rejected", "missing"]
    approved_at: datetime | None = None
    approvers: tuple[str, ...] = ()  # who said yes (identifiers)
    problems: tuple[str, ...] = ()  # why responses did not count, in words


@dataclass(frozen=True)
class ChainResult:
    """The chain's standing, with what a person needs to understand it."""

    status: Status
    submission: Submission | None
    stages: tuple[StageResult, ...] = ()
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def proven(self) -> bool:
        return self.status == "proven"


def stage_index(policy: GovernedObject, decision: Decision) -> int | None:
    """Which of the policy's stages a decision belongs to: by name first, else by position."""
    if decision.stage_name:
        wanted = _norm(decision.stage_name)
        for i, stage in enumerate(policy.stages):
            if _norm(stage.name) == wanted:
                return i
    if decision.stage_number is not None and 1 <= decision.stage_number <= len(policy.stages):
        return decision.stage_number - 1
    return None


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def evaluate(
    policy: GovernedObject,
    submissions: Sequence[Submission],
    decisions: Sequence[Decision],
    directory: Directory,
    at: datetime,
) -> ChainResult:
    """The chain for a status change (or the present) at `at`."""
    candidates = [s for s in submissions if s.form_id == policy.form_id and s.at <= at + SKEW]
    if not candidates:
        return ChainResult("incomplete", None, reasons=("the form has no response for this record",))
    submission = max(candidates, key=lambda s: (s.at, s.response_id))
    if at - submission.at > timedelta(days=policy.max_chain_age_days):
        return ChainResult(
            "failed",
            submission,
            reasons=(f"the form response is older than {policy.max_chain_age_days} days",),
        )
    later = [s for s in submissions if s.form_id == policy.form_id and s.at > submission.at]
    upto = min([at + SKEW, *(s.at for s in later)])
    relevant = [d for d in decisions if submission.at <= d.at <= upto]
    results: list[StageResult] = []
    for i, stage in enumerate(policy.stages):
        mine = [d for d in relevant if stage_index(policy, d) == i]
        results.append(_judge_stage(stage, mine, submission, directory))
    return _combine(submission, results)


def _judge_stage(
    stage: ApprovalStage, decisions: Sequence[Decision], submission: Submission, directory: Directory
) -> StageResult:
    problems: list[str] = []
    yes: dict[str, Decision] = {}
    first_no: Decision | None = None
    for d in sorted(decisions, key=lambda d: (d.at, d.id)):
        who = d.responder_name or directory.name_of(d.responder)
        if directory.same_person(d.responder, submission.responder):
            problems.append(f"{who} approved their own request")
            continue
        if not directory.is_one_of(d.responder, stage.approvers):
            problems.append(f"{who} is not an approver of this stage")
            continue
        if d.response in stage.approve_responses:
            person = directory.find(d.responder)
            yes.setdefault(person.key if person else d.responder.lower(), d)
        elif first_no is None:
            first_no = d
    if first_no is not None:
        who = first_no.responder_name or directory.name_of(first_no.responder)
        return StageResult(
            stage.name,
            "rejected",
            problems=(*problems, f"{who} answered '{first_no.response}'"),
        )
    if not yes:
        return StageResult(stage.name, "missing", problems=tuple(problems))
    if stage.require == "everyone":
        people, loose = directory.resolve_approvers(stage.approvers)
        required = {p.key: p.name for p in people if not _is(directory, p, submission.responder)}
        required |= {e.lower(): e for e in loose if not directory.same_person(e, submission.responder)}
        waiting = set(required) - set(yes)
        if waiting:
            names = sorted(required[k] for k in waiting)
            return StageResult(stage.name, "missing", problems=(*problems, f"waiting for {', '.join(names)}"))
        decisive = max(yes.values(), key=lambda d: d.at)
    else:
        decisive = min(yes.values(), key=lambda d: d.at)
    counted = sorted(yes.values(), key=lambda d: d.at)
    return StageResult(
        stage.name,
        "approved",
        approved_at=decisive.at,
        approvers=tuple(d.responder for d in counted),
        problems=tuple(problems),
    )


def _is(directory: Directory, person: Person, identifier: str) -> bool:
    return directory.find(identifier) is person


def _combine(submission: Submission, stages: list[StageResult]) -> ChainResult:
    reasons: list[str] = []
    for stage in stages:
        if stage.status == "rejected":
            reasons.append(f"stage '{stage.name}' was rejected ({'; '.join(stage.problems)})")
            return ChainResult("failed", submission, tuple(stages), tuple(reasons))
    previous: StageResult | None = None
    for stage in stages:
        if stage.status == "approved" and previous is not None and previous.status == "approved":
            assert stage.approved_at is not None and previous.approved_at is not None
            if stage.approved_at < previous.approved_at:
                reasons.append(
                    f"stage '{stage.name}' was approved before stage '{previous.name}' (wrong order)"
                )
                return ChainResult("failed", submission, tuple(stages), tuple(reasons))
        previous = stage
    missing = [s for s in stages if s.status == "missing"]
    if missing:
        for stage in missing:
            detail = f" ({'; '.join(stage.problems)})" if stage.problems else ""
            reasons.append(f"stage '{stage.name}' has no decision{detail}")
        return ChainResult("incomplete", submission, tuple(stages), tuple(reasons))
    return ChainResult("proven", submission, tuple(stages))


# -- stored forms ------------------------------------------------------------------------------


def submission_from_json(value: Mapping[str, Any]) -> Submission:
    """A Submission kept in rule state."""
    return Submission(
        response_id=str(value["response_id"]),
        form_id=str(value["form_id"]),
        form_name=str(value.get("form_name") or value["form_id"]),
        responder=str(value["responder"]),
        at=datetime.fromisoformat(value["at"]),
        flow_run_id=value.get("flow_run_id"),
    )


def decision_from_json(value: Mapping[str, Any]) -> Decision:
    """A Decision kept in rule state."""
    return Decision(
        id=str(value["id"]),
        stage_number=value.get("stage_number"),
        stage_name=value.get("stage_name"),
        responder=str(value["responder"]),
        responder_name=value.get("responder_name"),
        response=str(value["response"]),
        at=datetime.fromisoformat(value["at"]),
        approval=str(value.get("approval") or ""),
    )
