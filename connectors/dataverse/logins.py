"""Leaders' logins from Dataverse auditing, as `user.activity` events: the Dataverse side of the
LoginHistory poller (`connectors.salesforce.logins`).

Runs as a scheduled job in the worker ("dataverse.logins", every
`dataverse.poll_audit_interval_seconds`) and from the command line. Each run reads the audit
table from a stored watermark (createdon), through the Web API client's `get_all` (which follows
@odata.nextLink), and emits one event per interactive user access; the delivery id is the auditid.

    GET audits?$select=auditid,createdon,action,operation,objecttypecode,_objectid_value,_userid_value
              &$filter=createdon ge <watermark - overlap> and action eq 64
              &$orderby=createdon asc

What Dataverse records (https://learn.microsoft.com/power-apps/developer/data-platform/auditing/retrieve-audit-data,
"User access events"; https://learn.microsoft.com/power-apps/developer/data-platform/audit-user-access):
with auditing and user access auditing on (Organization.isauditenabled and
isuseraccessauditenabled), Dataverse writes an audit row with operation 4 (Access) and action
- 64 "User Access via Web": "User is accessing Dataverse using a model-driven app" (also Dynamics
  365 for Outlook);
- 65 "User Access via Web Services": "User is accessing Dataverse with web services using a client
  other than a model-driven app" — the SDK and the Web API: integrations, Power Automate
  connections, scripts, OnRecord itself;
- 112/113: user access auditing started/stopped.
Only 64 is a person in the product, so only 64 counts (the Salesforce poller likewise leaves out
API logins). `_userid_value` is the user (for access rows the audited record is the systemuser).

How often: user access is logged at most once per user every Organization.useraccessauditinginterval
hours (4 by default; https://learn.microsoft.com/power-apps/developer/data-platform/auditing/configure),
not at every sign-in, so a count is of access periods, not of sign-ins. The caller needs the
prvReadAuditSummary privilege to read the audit table.

Equal timestamps and late rows: audit rows are kept in Dataverse's log storage and can appear with
a delay, so every run re-reads from `watermark - OVERLAP` (createdon ge); rows already emitted are
skipped by their auditid (kept in the state for the overlap), and the inbox deduplicates on the
delivery id anyway. A run reads at most MAX_ROWS_PER_RUN rows it has not seen before (the rows
the overlap re-reads do not spend it, or a busy overlap could hold the watermark still); the next
run goes on from there. OnRecord's own application user (`dataverse.application_user_id`) is never
counted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from connectors.dataverse.connector import INTERACTIVE_LOGIN_TYPES, LOGIN_SOURCE
from connectors.dataverse.users import dataverse_settings, lazy_client
from plugin.config import Config
from plugin.events import Event
from plugin.jobs import Job, JobRun, JobRunner

JOB_NAME = "dataverse.logins"
SOURCE = LOGIN_SOURCE  # "dataverse.audit"
ENTITY_SET = "audits"
FIELDS = (
    "auditid",
    "createdon",
    "action",
    "operation",
    "objecttypecode",
    "_objectid_value",
    "_userid_value",
)

# The audit table's Action choices for user access (see the module docstring).
USER_ACCESS_VIA_WEB = 64
USER_ACCESS_VIA_WEB_SERVICES = 65
ACTION_LABELS = {
    USER_ACCESS_VIA_WEB: "User Access via Web",
    USER_ACCESS_VIA_WEB_SERVICES: "User Access via Web Services",
}
ACCESS = 4  # the Operation of a user access row
# The actions that count: those whose label is one of the `login_type` values the signals rule
# counts for this source (INTERACTIVE_LOGIN_TYPES, declared by the connector: "User Access via Web").
INTERACTIVE_ACTIONS = tuple(a for a, label in ACTION_LABELS.items() if label in INTERACTIVE_LOGIN_TYPES)

OVERLAP = timedelta(minutes=15)  # audit rows can be written a while after their createdon
FIRST_LOOKBACK = timedelta(days=1)  # the first run (no watermark yet) starts this far back
MAX_ROWS_PER_RUN = 20_000  # the next run goes on from the new watermark
MAX_REMEMBERED = 20_000

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Reader(Protocol):
    """What the poller needs of the Web API client (`connectors.dataverse.webapi`)."""

    def get_all(self, path: str, params: Mapping[str, str] | None = None) -> Iterable[Mapping[str, Any]]:
        """Every row of a collection, following @odata.nextLink."""
        ...


def odata_datetime(value: datetime) -> str:
    """An OData DateTimeOffset literal for $filter (UTC, whole seconds, rounded down)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_createdon(text: str) -> datetime:
    """The Web API's DateTimeOffset ("2022-05-12T22:19:12Z") as aware UTC."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def login_query(since: datetime) -> tuple[str, dict[str, str]]:
    """The path and query options for interactive user access rows from `since` on, oldest first.
    Only constants and a formatted datetime go in: nothing from outside."""
    actions = " or ".join(f"action eq {a}" for a in INTERACTIVE_ACTIONS)
    if len(INTERACTIVE_ACTIONS) > 1:
        actions = f"({actions})"
    return ENTITY_SET, {
        "$select": ",".join(FIELDS),
        "$filter": f"createdon ge {odata_datetime(since)} and {actions}",
        "$orderby": "createdon asc",
    }


def _guid(value: Any) -> str | None:
    text = str(value or "").strip().strip("{}").lower()
    return text if _GUID.match(text) else None


class LoginPoller:
    """One poll: run(state, now) -> JobRun, as a Job wants it."""

    def __init__(
        self,
        reader: Reader | Callable[[], Reader],
        *,
        environment: str = "",
        application_user_id: str = "",
        max_rows: int = MAX_ROWS_PER_RUN,
    ) -> None:
        self._reader = reader
        self._sender = f"{environment} audits".strip()
        self._own_user = _guid(application_user_id)
        self._max_rows = max_rows

    def run(self, state: Mapping[str, Any], now: datetime) -> JobRun:
        """Read user access rows since the watermark; return the new logins and the advanced state."""
        watermark = parse_createdon(state["watermark"]) if state.get("watermark") else now - FIRST_LOOKBACK
        seen: dict[str, str] = dict(state.get("seen") or {})
        latest = watermark
        events: list[Event] = []
        reader = self._reader() if callable(self._reader) else self._reader
        path, params = login_query(watermark - OVERLAP)
        fresh = 0
        for row in reader.get_all(path, params):
            audit_id = _guid(row.get("auditid"))
            raw_time = row.get("createdon")
            if audit_id is None or not isinstance(raw_time, str) or audit_id in seen:
                continue
            created = parse_createdon(raw_time)
            latest = max(latest, created)
            seen[audit_id] = created.isoformat()
            event = self._event(row, audit_id, created)
            if event is not None:
                events.append(event)
            fresh += 1
            # Only rows not seen before count: the overlap re-reads rows every run, and a budget
            # spent on them would never let the watermark move. Oldest first, so the watermark
            # covers exactly what was read.
            if fresh >= self._max_rows:
                break
        horizon = latest - OVERLAP
        kept = {k: v for k, v in seen.items() if datetime.fromisoformat(v) >= horizon}
        if len(kept) > MAX_REMEMBERED:  # the inbox still deduplicates whatever is forgotten
            kept = dict(sorted(kept.items(), key=lambda kv: kv[1])[-MAX_REMEMBERED:])
        return JobRun(events=events, state={"watermark": latest.isoformat(), "seen": kept})

    def _event(self, row: Mapping[str, Any], audit_id: str, created: datetime) -> Event | None:
        action = row.get("action")
        if action not in INTERACTIVE_ACTIONS:  # the $filter says so; checked again here
            return None
        user_id = _guid(row.get("_userid_value"))
        if user_id is None or user_id == self._own_user:
            return None
        data: dict[str, Any] = {
            "activity": "login",
            "login_type": ACTION_LABELS[action],
            "action": action,
            "application": "Dataverse web application",  # a model-driven app (or Outlook)
        }
        evidence = json.dumps({k: row.get(k) for k in FIELDS}, sort_keys=True, default=str)
        return Event(
            source=SOURCE,
            delivery_id=audit_id,
            kind="user.activity",
            occurred_at=created,
            actor=user_id,
            data=data,
            sender=self._sender,
            raw_digest=hashlib.sha256(evidence.encode()).hexdigest(),
        )


def login_poll_job(config: Config, reader: Reader | None = None) -> Job:
    """The scheduled job; it builds its Web API client on first use."""
    dv = dataverse_settings(config)
    poller = LoginPoller(
        reader or lazy_client(config), environment=dv.url, application_user_id=dv.application_user_id
    )
    interval = dv.poll_audit_interval_seconds or 300.0  # 0: not scheduled, but a poll-now works
    return Job(name=JOB_NAME, interval_seconds=interval, run=poller.run)


def poll_logins_now(
    config: Config,
    engine: Engine,
    *,
    owner: str,
    now: datetime | None = None,
    reader: Reader | None = None,
) -> JobRun:
    """Run the poller once, now, under its job lease (the CLI's `poll logins`)."""
    runner = JobRunner(engine, [login_poll_job(config, reader)], owner=owner)
    return runner.run_now(JOB_NAME, now or datetime.now(UTC))


__all__ = [
    "ACTION_LABELS",
    "ENTITY_SET",
    "FIELDS",
    "INTERACTIVE_ACTIONS",
    "INTERACTIVE_LOGIN_TYPES",
    "JOB_NAME",
    "SOURCE",
    "USER_ACCESS_VIA_WEB",
    "USER_ACCESS_VIA_WEB_SERVICES",
    "LoginPoller",
    "login_poll_job",
    "login_query",
    "odata_datetime",
    "parse_createdon",
    "poll_logins_now",
]
