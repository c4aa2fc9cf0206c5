"""Leader signals from the `facts` table: a period's counts read by `occurred_at` range (one
GROUP BY per period, indexed), so what one period costs does not depend on how much history is
stored; then scored by the pure core (`plugin.leaders.core`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin.config import SIGNAL_KINDS, Config
from plugin.directory import Directory
from plugin.directory_store import load_directory
from plugin.leaders.core import (
    OFF_SYSTEM,
    LeaderIndex,
    PeriodSignals,
    resolve_leaders,
    score_period,
)
from plugin.leaders.periods import Period, last_periods, parse_period, period_of, previous_period
from plugin.storage import facts

Counts = dict[str, dict[str, tuple[int, ...]]]


def read_counts(
    conn: sa.Connection,
    all_kinds: Iterable[Period],
    off_system: Iterable[Period],
    keep: Callable[[str], bool] = lambda person: True,
) -> Counts:
    """Per period and person, the non-retracted facts of each kind (SIGNAL_KINDS order): every
    kind for `all_kinds`, only off-system approvals for `off_system` (the champion rule looks no
    further back). One GROUP BY per period, on the occurred_at index; only the people `keep`
    says are kept (the leaders: staff do most of what is recorded)."""
    counts: Counts = {}
    live = facts.c.retracted == sa.false()
    per_kind = [sa.func.sum(sa.case((facts.c.kind == kind, 1), else_=0)) for kind in SIGNAL_KINDS]
    for period in sorted(set(all_kinds)):
        rows = conn.execute(
            sa.select(facts.c.person, *per_kind)
            .where(facts.c.occurred_at >= period.start, facts.c.occurred_at < period.end, live)
            .group_by(facts.c.person)
        )
        counts[period.name] = {row[0]: tuple(row[1:]) for row in rows if keep(row[0])}
    slot = SIGNAL_KINDS.index(OFF_SYSTEM)
    for period in sorted(set(off_system)):
        if period.name in counts:
            continue
        rows = conn.execute(
            sa.select(facts.c.person, sa.func.count())
            .where(
                facts.c.kind == OFF_SYSTEM,
                facts.c.occurred_at >= period.start,
                facts.c.occurred_at < period.end,
                live,
            )
            .group_by(facts.c.person)
        )
        counts[period.name] = {
            person: tuple(int(n) if i == slot else 0 for i in range(len(SIGNAL_KINDS)))
            for person, n in rows
            if keep(person)
        }
    return counts


def compute_periods(
    engine: Engine, config: Config, periods: Sequence[Period], *, directory: Directory | None = None
) -> list[PeriodSignals]:
    """Each period's signals, recomputed from the facts (in the order given)."""
    directory = directory if directory is not None else load_directory(engine, config)
    leaders = resolve_leaders(config, directory)
    index = LeaderIndex(leaders, directory)
    settings = config.leaders
    all_kinds = {p for period in periods for p in (period, previous_period(period))}
    off_system = {p for period in periods for p in last_periods(period, settings.champion_clean_periods)}
    with engine.connect() as conn:
        counts = read_counts(
            conn, all_kinds, off_system - all_kinds, lambda p: index.leader_of(p) is not None
        )
    version = config.crm_version  # the configuration these leaders and weights came from
    scored = [score_period(p, counts, leaders, directory, settings, index=index) for p in periods]
    return [dataclasses.replace(s, config_version=version) for s in scored]


def current_period(config: Config, now: datetime | None = None) -> Period:
    """The period `now` (default: this moment) falls in."""
    return period_of(now or datetime.now(UTC), config.leaders.period)


def leaders_snapshot(
    engine: Engine,
    config: Config,
    period: str | Period | None = None,
    *,
    now: datetime | None = None,
    directory: Directory | None = None,
) -> dict[str, Any]:
    """GET /api/leaders's body for a period (a name like 2026-W48, or the current one):
    {"period", "weights_version", "leaders": [{"email", "name", "salesforce_id", "counts",
    "score", "trend", "champion_candidate"}], "champions": [e-mail...]}, leaders best score
    first. A malformed period name raises PeriodError (a ValueError) saying why."""
    if period is None:
        chosen = current_period(config, now)
    elif isinstance(period, Period):
        chosen = period
    else:
        chosen = parse_period(period, config.leaders.period)
    (signals,) = compute_periods(engine, config, [chosen], directory=directory)
    return signals.to_json()


def leader_history(
    engine: Engine,
    config: Config,
    periods: int = 12,
    *,
    now: datetime | None = None,
    directory: Directory | None = None,
) -> list[dict[str, Any]]:
    """The snapshots (as leaders_snapshot) of the last `periods` periods, the current one
    included, oldest first."""
    if periods < 1:
        raise ValueError("periods must be at least 1")
    wanted = last_periods(current_period(config, now), periods)
    return [s.to_json() for s in compute_periods(engine, config, wanted, directory=directory)]
