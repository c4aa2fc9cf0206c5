"""The aggregation job, `leaders.aggregate`: leader signals written back to the CRM.

Every `[leaders] aggregate_seconds` (scheduled only when leaders are configured) it recomputes,
from the facts, the current period and every period holding a fact stored or changed since its
watermark (a late fact reopens its own period; an off-system approval also the periods whose
champion rule it is in), and returns:

- one upsert of `OnRecord_Leader_Signal__c` by `OnRecord_Key__c` = "<leader key>:<period>" per
  leader and period whose fields changed since last written (a digest per leader-period in the
  job's state, kept for the last `champion_clean_periods` + 1 periods);
- `leader.champion` once per leader and period, when the leader becomes a candidate (the
  notified leader-periods are kept in the state for as long).

The runner stores the writes, the notifications and the new state in one transaction, so a
crash re-runs from the old state and writes nothing twice. The watermark is the newest
`updated_at` seen; each run looks `OVERLAP` further back, since a worker's clock or a slow
commit may store a fact a little behind it (a recomputed period that did not change writes
nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin import registry
from plugin.config import Config
from plugin.events import CrmWrite, Notification
from plugin.jobs import Job, JobRun
from plugin.leaders.core import OFF_SYSTEM, Leader, LeaderSignals
from plugin.leaders.periods import (
    Period,
    PeriodError,
    last_periods,
    next_period,
    parse_period,
    period_of,
    periods_between,
)
from plugin.leaders.store import compute_periods
from plugin.storage import facts

log = logging.getLogger(__name__)

JOB_NAME = "leaders.aggregate"
OBJECT = "OnRecord_Leader_Signal__c"
KEY_FIELD = "OnRecord_Key__c"
TOPIC = "leader.champion"
# One count field per signal kind (connectors.salesforce.provision.leader_signal_fields).
COUNT_FIELDS: Mapping[str, str] = {
    "login": "OnRecord_Logins__c",
    "record_touched": "OnRecord_Records_Touched__c",
    "form_approval": "OnRecord_Form_Approvals__c",
    "off_system_approval": "OnRecord_Off_System_Approvals__c",
    "training": "OnRecord_Trainings__c",
    "citation": "OnRecord_Citations__c",
    "report_view": "OnRecord_Report_Views__c",
    "dashboard_view": "OnRecord_Dashboard_Views__c",
}
OVERLAP = timedelta(minutes=5)
# More changed facts than this (a first run, a bulk load): recompute every period from the
# earliest to the latest of them instead of reading each one's time.
BULK = 5000


def record_key(leader: Leader, period: Period) -> str:
    """The leader-period's external id: "<leader key>:<period>"."""
    return f"{leader.key}:{period.name}"


def signal_fields(
    signals: LeaderSignals, period: Period, weights_version: str, crm: str = "salesforce"
) -> dict[str, Any]:
    """The fields of one OnRecord_Leader_Signal__c, written to `crm` (the leader lookup names one
    of that CRM's users: a leader may be known in two CRMs)."""
    fields: dict[str, Any] = {}
    leader = signals.leader
    user = registry.crm_user_id(crm, [leader.salesforce_id, *leader.identifiers])
    if user:
        fields["OnRecord_Leader__c"] = user
    fields["OnRecord_Period__c"] = period.name
    fields["OnRecord_Period_Start__c"] = period.start.date().isoformat()
    for kind, name in COUNT_FIELDS.items():
        fields[name] = int(signals.counts.get(kind, 0))
    fields["OnRecord_Score__c"] = signals.score
    fields["OnRecord_Weights_Version__c"] = weights_version
    fields["OnRecord_Champion_Candidate__c"] = signals.champion_candidate
    return fields


def _digest(fields: Mapping[str, Any]) -> str:
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _aware(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def changed_periods(
    conn: sa.Connection, since: datetime | None, config: Config
) -> tuple[set[Period], datetime | None]:
    """The periods holding a fact updated after `since` (every fact when None), and the newest
    updated_at among those facts (None when there are none)."""
    kind = config.leaders.period
    newer = facts.c.updated_at > since if since is not None else sa.true()
    count, first, last, newest = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.min(facts.c.occurred_at),
            sa.func.max(facts.c.occurred_at),
            sa.func.max(facts.c.updated_at),
        ).where(newer)
    ).one()
    if not count:
        return set(), None
    if count > BULK:
        found = set(periods_between(period_of(_aware(first), kind), period_of(_aware(last), kind)))
    else:
        times = conn.execute(sa.select(facts.c.occurred_at, facts.c.kind).where(newer)).all()
        found = {period_of(_aware(t), kind) for t, _ in times}
        # An off-system approval also decides the champion rule of the periods after it.
        reach = config.leaders.champion_clean_periods - 1
        for t, fact_kind in times:
            if fact_kind == OFF_SYSTEM:
                period = period_of(_aware(t), kind)
                for _ in range(reach):
                    period = next_period(period)
                    found.add(period)
    return found, _aware(newest)


class LeaderAggregation:
    """One run: run(state, now) -> JobRun, as a Job wants it."""

    def __init__(self, config: Config, engine: Engine | Callable[[], Engine]) -> None:
        self.config = config
        self._engine = engine

    def run(self, state: Mapping[str, Any], now: datetime) -> JobRun:
        """Recompute the current period and the changed ones; write what changed."""
        engine = self._engine if isinstance(self._engine, Engine) else self._engine()
        settings = self.config.leaders
        current = period_of(now, settings.period)
        watermark = _aware(state["watermark"]) if state.get("watermark") else None
        with engine.connect() as conn:
            changed, newest = changed_periods(conn, watermark - OVERLAP if watermark else None, self.config)
        todo = sorted({current} | {p for p in changed if p.start <= current.start})
        results = compute_periods(engine, self.config, todo)

        kept_from = last_periods(current, settings.champion_clean_periods + 1)[0].start
        digests: dict[str, str] = dict(state.get("digests") or {})
        notified: set[str] = set(state.get("notified") or ())
        writes: list[CrmWrite] = []
        notifications: list[Notification] = []
        for signals in results:
            period = signals.period
            for one in signals.leaders:
                key = record_key(one.leader, period)
                fields = signal_fields(one, period, signals.weights_version, self.config.crm.primary)
                digest = _digest(fields)
                if digests.get(key) != digest:
                    writes.append(CrmWrite(OBJECT, fields, external_id_field=KEY_FIELD, external_id=key))
                    digests[key] = digest
                if one.champion_candidate and key not in notified and period.start >= kept_from:
                    notified.add(key)
                    notifications.append(Notification(TOPIC, _champion(one, period, signals.weights_version)))
        keep = self._keeper(kept_from)
        new_watermark = (
            newest if newest is not None and (watermark is None or newest > watermark) else watermark
        )
        log.info(
            "leader signals aggregated",
            extra={
                "periods": [p.name for p in todo],
                "writes": len(writes),
                "champions": len(notifications),
                "reason": "leaders_aggregated",
            },
        )
        return JobRun(
            state={
                "watermark": new_watermark.isoformat() if new_watermark else None,
                "period": current.name,
                "recomputed": [p.name for p in todo],
                "written": len(writes),
                "digests": {k: v for k, v in sorted(digests.items()) if keep(k)},
                "notified": sorted(k for k in notified if keep(k)),
            },
            writes=writes,
            notifications=notifications,
        )

    def _keeper(self, kept_from: datetime) -> Callable[[str], bool]:
        kind = self.config.leaders.period

        def keep(key: str) -> bool:
            try:
                return parse_period(key.rpartition(":")[2], kind).start >= kept_from
            except PeriodError:
                return False  # another period kind (the configuration changed): forget it

        return keep


def _champion(signals: LeaderSignals, period: Period, weights_version: str) -> dict[str, Any]:
    leader = signals.leader
    return {
        "leader": leader.label,
        "leader_name": leader.name,
        "salesforce_id": leader.salesforce_id,
        "period": period.name,
        "score": signals.score,
        "weights_version": weights_version,
    }


def leaders_job(config: Config, engine: Engine | None = None) -> Job:
    """The scheduled job; it finds its engine on first use."""
    from plugin.storage import get_engine

    aggregation = LeaderAggregation(config, engine or (lambda: get_engine(config.storage.url)))
    return Job(name=JOB_NAME, interval_seconds=config.leaders.aggregate_seconds, run=aggregation.run)
