"""Leader buy-in signals: leaders' use of the CRM, measured from stored facts per leader and
period, scored with published weights, with "system champion" candidates (see README.md,
"Leader buy-in signals").

- `periods`: period names <-> [start, end) in UTC;
- `core`: pure — leaders, counting, scores, trends, champion candidates (`aggregate`);
- `store`: the same read from the `facts` table (`leaders_snapshot`, `leader_history`);
- `job`: the `leaders.aggregate` job writing `OnRecord_Leader_Signal__c` records;
- `api`: GET /api/leaders.
"""

from __future__ import annotations

from plugin.leaders.core import (
    FactRow,
    Leader,
    LeaderSignals,
    PeriodSignals,
    aggregate,
    count_facts,
    resolve_leaders,
    score_period,
)
from plugin.leaders.periods import Period, PeriodError, last_periods, parse_period, period_of, previous_period
from plugin.leaders.store import compute_periods, current_period, leader_history, leaders_snapshot

__all__ = [
    "FactRow",
    "Leader",
    "LeaderSignals",
    "Period",
    "PeriodError",
    "PeriodSignals",
    "aggregate",
    "compute_periods",
    "count_facts",
    "current_period",
    "last_periods",
    "leader_history",
    "leaders_snapshot",
    "parse_period",
    "period_of",
    "previous_period",
    "resolve_leaders",
    "score_period",
]
