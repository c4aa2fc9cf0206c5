"""Periods leader signals are counted in: ISO weeks ("2026-W48", Monday 00:00 UTC to the next
Monday) or days ("2026-11-26"), each a half-open [start, end) in UTC."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

PeriodKind = Literal["week", "day"]

_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
EXAMPLES: dict[str, str] = {"week": "2026-W48", "day": "2026-11-26"}


class PeriodError(ValueError):
    """A period name that is malformed, or of the other kind; the message says which and why."""


@dataclass(frozen=True, order=True)
class Period:
    """One period: its name and its [start, end) in UTC (ordered by start)."""

    start: datetime
    end: datetime
    name: str
    kind: PeriodKind

    def __str__(self) -> str:
        return self.name


def _make(kind: PeriodKind, first: date) -> Period:
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    if kind == "week":
        year, week, _ = first.isocalendar()
        return Period(start, start + timedelta(days=7), f"{year:04d}-W{week:02d}", kind)
    return Period(start, start + timedelta(days=1), first.isoformat(), kind)


def period_of(moment: datetime, kind: PeriodKind) -> Period:
    """The period a moment (timezone-aware) falls in."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: periods are in UTC")
    day = moment.astimezone(UTC).date()
    if kind == "week":
        day -= timedelta(days=day.weekday())
    return _make(kind, day)


def parse_period(name: str, kind: PeriodKind) -> Period:
    """The period a name denotes; PeriodError naming the problem when it denotes none."""
    text = name.strip()
    example = EXAMPLES[kind]
    if kind == "week":
        m = _WEEK.match(text)
        if m is None:
            hint = " (this deployment counts ISO weeks, not days)" if _DAY.match(text) else ""
            raise PeriodError(f"period {name!r} is not an ISO week like {example}{hint}")
        year, week = int(m[1]), int(m[2])
        if year < 1:
            raise PeriodError(f"period {name!r}: year {year} is out of range")
        weeks = date(year, 12, 28).isocalendar()[1]  # 28 December is always in the year's last week
        if not 1 <= week <= weeks:
            raise PeriodError(f"period {name!r}: {year} has ISO weeks 01 to {weeks:02d}, not {week:02d}")
        return _make(kind, date.fromisocalendar(year, week, 1))
    m = _DAY.match(text)
    if m is None:
        hint = " (this deployment counts days, not ISO weeks)" if _WEEK.match(text) else ""
        raise PeriodError(f"period {name!r} is not a day like {example}{hint}")
    try:
        return _make(kind, date(int(m[1]), int(m[2]), int(m[3])))
    except ValueError as exc:
        raise PeriodError(f"period {name!r} is not a calendar day: {exc}") from exc


def previous_period(period: Period) -> Period:
    """The period just before."""
    return period_of(period.start - timedelta(seconds=1), period.kind)


def next_period(period: Period) -> Period:
    """The period just after."""
    return period_of(period.end, period.kind)


def last_periods(period: Period, count: int) -> list[Period]:
    """The `count` periods ending with `period` (it included), oldest first."""
    found = [period]
    while len(found) < count:
        found.append(previous_period(found[-1]))
    return found[::-1]


def periods_between(first: Period, last: Period) -> list[Period]:
    """Every period from `first` to `last`, both included, oldest first (empty if last < first)."""
    found: list[Period] = []
    current = first
    while current.start <= last.start:
        found.append(current)
        current = next_period(current)
    return found
