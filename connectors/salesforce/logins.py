"""The LoginHistory poller: leaders' interactive logins, as `user.activity` events.

Runs as a scheduled job in the worker (`salesforce.poll_logins_interval_seconds`) and from the
command line (`python -m plugin poll logins`). Each run reads LoginHistory from a stored
watermark (LoginTime), through the writer's `query()` (queryMore paging), and emits one event
per successful interactive login; the delivery id is the LoginHistory Id.

What counts as interactive follows LoginHistory's `LoginType` picklist (Object Reference,
LoginHistory / AuthSession "LoginType"): a person in Salesforce's UI — username and password
("Application"), single sign-on into the UI (SAML, third-party SSO), passwordless and
Lightning Login, and the Salesforce mobile app ("Remote Access Client"). Left out: API and
integration logins ("Remote Access 2.0" — every OAuth connected app, OnRecord's own JWT login
included — "Other Apex API", "Partner Product", "AJAX Toolkit", ...), sync and replication
clients, "SysAdmin Switch" (an admin logged in as the user), and portal/community logins.
`LoginType` is filterable, so it is in the SOQL; `Status` is not filterable on LoginHistory,
so "Success" is checked on each row, as is the integration user (never counted).

Equal timestamps: every run re-reads from `watermark - OVERLAP` (LoginTime >=), so a row
written late or sharing the watermark's second is never skipped; rows already emitted are
skipped by their Id (kept in the state for the overlap), and the inbox deduplicates on the
delivery id anyway.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from connectors.salesforce.connector import INTERACTIVE_LOGIN_TYPES, LOGIN_SOURCE, settings
from connectors.salesforce.ids import is_salesforce_id, same_id
from plugin.config import Config
from plugin.events import Event
from plugin.jobs import Job, JobRun, JobRunner

JOB_NAME = "salesforce.logins"
SOURCE = LOGIN_SOURCE
FIELDS = ("Id", "UserId", "LoginTime", "LoginType", "Application", "Platform", "SourceIp", "Status")

SUCCESS = "Success"
OVERLAP = timedelta(minutes=5)  # LoginHistory rows can appear a little after their LoginTime
FIRST_LOOKBACK = timedelta(days=1)  # the first run (no watermark yet) starts this far back
MAX_ROWS_PER_RUN = 20_000  # the next run goes on from the new watermark
MAX_REMEMBERED = 20_000

Query = Callable[[str], Iterable[Mapping[str, Any]]]


def soql_datetime(value: datetime) -> str:
    """A SOQL datetime literal (UTC, whole seconds, rounded down)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_login_time(text: str) -> datetime:
    """Salesforce's REST datetime ("2024-01-31T10:00:00.000+0000") as aware UTC."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def login_query(since: datetime, limit: int = MAX_ROWS_PER_RUN) -> str:
    """The SOQL for interactive logins from `since` on, oldest first."""
    types = ", ".join(f"'{t}'" for t in INTERACTIVE_LOGIN_TYPES)
    # Only constants and a formatted datetime go in: nothing from outside.
    select = f"SELECT {', '.join(FIELDS)} FROM LoginHistory "  # noqa: S608
    where = f"WHERE LoginTime >= {soql_datetime(since)} AND LoginType IN ({types}) "
    return select + where + f"ORDER BY LoginTime ASC LIMIT {limit}"


class LoginPoller:
    """One poll: run(state, now) -> JobRun, as a Job wants it."""

    def __init__(self, query: Query, *, org_id: str = "", integration_user_id: str = "") -> None:
        self._query = query
        self._sender = f"{org_id} LoginHistory".strip()
        self._own_user = integration_user_id

    def run(self, state: Mapping[str, Any], now: datetime) -> JobRun:
        """Read logins since the watermark; return the new ones and the advanced state."""
        watermark = parse_login_time(state["watermark"]) if state.get("watermark") else now - FIRST_LOOKBACK
        seen: dict[str, str] = dict(state.get("seen") or {})
        latest = watermark
        events: list[Event] = []
        for row in self._query(login_query(watermark - OVERLAP)):
            login_id = str(row.get("Id") or "")
            raw_time = row.get("LoginTime")
            if not login_id or not isinstance(raw_time, str):
                continue
            login_time = parse_login_time(raw_time)
            latest = max(latest, login_time)
            if login_id in seen:
                continue
            seen[login_id] = login_time.isoformat()
            event = self._event(row, login_id, login_time)
            if event is not None:
                events.append(event)
        horizon = latest - OVERLAP
        kept = {k: v for k, v in seen.items() if datetime.fromisoformat(v) >= horizon}
        if len(kept) > MAX_REMEMBERED:  # the inbox still deduplicates whatever is forgotten
            kept = dict(sorted(kept.items(), key=lambda kv: kv[1])[-MAX_REMEMBERED:])
        return JobRun(events=events, state={"watermark": latest.isoformat(), "seen": kept})

    def _event(self, row: Mapping[str, Any], login_id: str, login_time: datetime) -> Event | None:
        user_id = str(row.get("UserId") or "")
        if row.get("Status") != SUCCESS or row.get("LoginType") not in INTERACTIVE_LOGIN_TYPES:
            return None
        if not is_salesforce_id(user_id) or (self._own_user and same_id(user_id, self._own_user)):
            return None
        data: dict[str, Any] = {
            "activity": "login",
            "login_type": row.get("LoginType"),
            "application": row.get("Application"),
            "platform": row.get("Platform"),
        }
        if row.get("SourceIp"):
            data["source_ip"] = row["SourceIp"]
        evidence = json.dumps({k: row.get(k) for k in FIELDS}, sort_keys=True, default=str)
        return Event(
            source=SOURCE,
            delivery_id=login_id,
            kind="user.activity",
            occurred_at=login_time,
            actor=user_id,
            data=data,
            sender=self._sender,
            raw_digest=hashlib.sha256(evidence.encode()).hexdigest(),
        )


def login_poll_job(config: Config) -> Job:
    """The scheduled job; it builds its Salesforce client on first use."""
    from connectors.salesforce.wiring import build_salesforce_writer
    from connectors.salesforce.writer import SalesforceWriter

    lock = threading.Lock()
    writer: list[SalesforceWriter] = []

    def query(soql: str) -> Iterable[Mapping[str, Any]]:
        with lock:
            if not writer:
                writer.append(build_salesforce_writer(config))
        return writer[0].query(soql)

    sf = settings(config)
    poller = LoginPoller(query, org_id=sf.org_id, integration_user_id=sf.integration_user_id)
    interval = sf.poll_logins_interval_seconds or 300.0  # 0: not scheduled, but `poll logins` works
    return Job(name=JOB_NAME, interval_seconds=interval, run=poller.run)


def poll_logins_now(config: Config, engine: Engine, *, owner: str, now: datetime | None = None) -> JobRun:
    """Run the poller once, now, under its job lease (the CLI's `poll logins`)."""
    runner = JobRunner(engine, [login_poll_job(config)], owner=owner)
    return runner.run_now(JOB_NAME, now or datetime.now(UTC))


__all__ = [
    "INTERACTIVE_LOGIN_TYPES",
    "JOB_NAME",
    "SOURCE",
    "LoginPoller",
    "login_poll_job",
    "login_query",
    "poll_logins_now",
]
