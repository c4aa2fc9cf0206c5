"""Approvals as an admin, a Flow or an auditor sees them: a record's chain, verdict and reason.

    GET /api/approvals/<object>/<record_id>   the chain (as of now), the verdict and its reason,
                                              the status changes judged
    python -m plugin approvals [--pending|--blocked] [--json]

Read from the approvals rule's state (`approvals:<Object>/<Id>`); the chain is evaluated again
with the current directory, so a name the directory learnt since shows by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify

from plugin.api_auth import api_error, require_api_auth
from plugin.config import Config
from plugin.directory import Directory
from plugin.directory_store import current_directory
from plugin.identity import canonical_record_id
from plugin.provenance.statement import iso
from plugin.rules.approvals import state_key
from plugin.rules.chain import ChainResult, decision_from_json, evaluate, submission_from_json
from plugin.runtime import runtime
from plugin.storage import rule_state

blueprint = Blueprint("approvals", __name__)

VERDICTS = ("Verified", "Pending", "Blocked")


def describe(
    config: Config, directory: Directory, obj: str, record_id: str, value: Mapping[str, Any]
) -> dict[str, Any]:
    """One record's approval standing, as the API and the CLI show it."""
    policy = next(g for g in config.governed if g.object == obj)
    chain = evaluate(
        policy,
        [submission_from_json(s) for s in value.get("submissions", [])],
        [decision_from_json(d) for d in value.get("decisions", [])],
        directory,
        datetime.now(UTC),
    )
    last = value.get("last") or {}
    status = value.get("status") or {}
    changes = [
        {
            "id": c["id"],
            "changed_at": c["at"],
            "actor": c.get("actor"),
            "actor_name": directory.name_of(c.get("actor")),
            "value": c.get("value"),
            "verdict": c["verdict"],
            "reason": c.get("reason", ""),
            "deadline": c.get("deadline"),
            "reverted": bool(c.get("reverted", False)),
        }
        for c in value.get("changes", [])
    ]
    by = status.get("by")
    return {
        "object": obj,
        "record_id": record_id,
        "verdict": last.get("verdict"),
        "note": last.get("note"),
        "judged_at": last.get("at"),
        "reason": next((c["reason"] for c in reversed(changes) if c["id"] == last.get("change")), ""),
        "status_value": status.get("value"),
        "status_by_name": "OnRecord" if by == "onrecord" else directory.name_of(by) if by else None,
        "chain": _chain(chain, directory),
        "changes": changes,
    }


def _chain(result: ChainResult, directory: Directory) -> dict[str, Any]:
    """The chain with people named, flat enough for Flow (no free-form maps)."""
    sub = result.submission
    return {
        "status": result.status,
        "reasons": list(result.reasons),
        "form_name": sub.form_name if sub else None,
        "response_id": sub.response_id if sub else None,
        "requester": sub.responder if sub else None,
        "requester_name": directory.name_of(sub.responder) if sub else None,
        "submitted_at": iso(sub.at) if sub else None,
        "stages": [
            {
                "name": st.name,
                "status": st.status,
                "approved_at": iso(st.approved_at) if st.approved_at else None,
                "approvers": list(st.approvers),
                "approver_names": [directory.name_of(a) for a in st.approvers],
                "problems": list(st.problems),
            }
            for st in result.stages
        ],
    }


def read(conn: sa.Connection, obj: str, record_id: str) -> Mapping[str, Any] | None:
    """The rule's state of one record."""
    value = conn.execute(
        sa.select(rule_state.c.value).where(rule_state.c.key == state_key(obj, record_id))
    ).scalar()
    return value if isinstance(value, Mapping) else None


def all_records(conn: sa.Connection) -> list[tuple[str, str, Mapping[str, Any]]]:
    """Every approval-governed record the rule has state for: (object, id, state)."""
    prefix = "approvals:"
    rows = conn.execute(
        sa.select(rule_state.c.key, rule_state.c.value)
        .where(rule_state.c.key.like(prefix + "%"), ~rule_state.c.key.like(prefix + "set:%"))
        .order_by(rule_state.c.updated_at.desc())
    )
    found = []
    for key, value in rows:
        obj, _, record_id = key[len(prefix) :].partition("/")
        found.append((obj, record_id, value))
    return found


@blueprint.get("/api/approvals/<obj>/<record_id>")
@require_api_auth
def approval(obj: str, record_id: str) -> Response:
    """The record's approval chain, verdict and reason."""
    rt = runtime()
    config = rt.config_in_force  # the policies in force ([crm_config] included)
    if not any(g.object == obj and g.approval_field and g.stages for g in config.governed):
        return api_error(404, "not_approval_governed", f"{obj} has no approval policy")
    record_id = canonical_record_id(record_id)
    with rt.engine.connect() as conn:
        value = read(conn, obj, record_id)
    if value is None:
        return api_error(
            404, "not_seen", f"OnRecord has seen no form, decision or status change of {obj}/{record_id}"
        )
    return jsonify(describe(config, current_directory(rt), obj, record_id, value))
