"""Benchmark: leader buy-in signals of one week, for all leaders, against a year of history (not a test).

The issue's benchmark: a year of activity for 50 leaders and 5,000 staff, about 2 million facts,
then the time to aggregate one week for all leaders (counts per kind, scores, trends, champion
candidates) — and that it does not grow with history: the same week is timed first with only 4
weeks of facts stored, then with the whole year, in the same run, and the ratio printed.
Target: <= 1 s for the aggregation (the directory loaded, as the API's cache has it); the time
with the directory loaded first (as the command does) is shown beside it.

OnRecord's storage as shipped: SQLite (WAL, synchronous=FULL) in a temporary directory, the
schema made by the migrations (`plugin.migrate.upgrade`, indexes included). The people are in
the directory table as the Salesforce directory job stores them (50 leaders, half configured by
e-mail and half through a Salesforce role, 5,000 staff). Facts are inserted directly into the
`facts` table (executemany, in the format the engine stores), oldest week last: first the last 4
weeks (timed), then the 48 weeks before them (timed again). Each fact names its person the way
connectors do (e-mail, upper-cased e-mail, 15- or 18-character user id); staff do most of it,
and one in ten facts is retracted.

What is timed is `plugin.leaders.leaders_snapshot` for the last full week (what GET /api/leaders
and `python -m plugin leaders --period` compute): with the directory already loaded (as the API's
directory cache has it), and including loading the directory (as the command does). Each is the
median of `--runs` runs after one warm-up. The snapshot's counts are checked against the counts
generated, so a fast wrong answer fails the run.

Results are printed and saved as JSON in bench/out/leaders-<UTC timestamp>.json.

    .venv/bin/python bench/leaders.py [--leaders 50] [--staff 5000] [--facts 2000000] [--runs 7]
    .venv/bin/python bench/leaders.py --staff 500 --facts 100000     # a quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from connectors.salesforce.ids import to_18  # noqa: E402
from plugin import migrate  # noqa: E402
from plugin.config import SIGNAL_KINDS, Config, load_config  # noqa: E402
from plugin.directory import Person  # noqa: E402
from plugin.directory_store import load_directory, replace_people  # noqa: E402
from plugin.leaders import leaders_snapshot, parse_period  # noqa: E402
from plugin.storage import dispose_engines, get_engine, sqlite_connect  # noqa: E402

WEEKS = 52
RECENT = 4  # weeks stored in the first measurement
ROLE = "Regional Director"
# How often each kind happens (leaders and staff alike).
KIND_SHARE = {
    "login": 40,
    "record_touched": 25,
    "report_view": 12,
    "dashboard_view": 10,
    "form_approval": 6,
    "citation": 3,
    "training": 2,
    "off_system_approval": 2,
}
LEADER_FACTS_PER_WEEK = 25
STAMP = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime on SQLite (UtcDateTime: UTC)


class Someone:
    __slots__ = ("email", "n", "user_id")

    def __init__(self, n: int, email: str) -> None:
        self.n = n
        self.email = email
        self.user_id = to_18(f"0055g{n:010d}")

    def identifier(self, rng: random.Random) -> str:
        pick = rng.randrange(4)
        return (self.email, self.email.upper(), self.user_id, self.user_id[:15])[pick]


def people(leaders: int, staff: int) -> tuple[list[Someone], list[Someone]]:
    bosses = [Someone(i, f"leader{i:03d}@contoso.com") for i in range(leaders)]
    rest = [Someone(10_000 + i, f"staff{i:05d}@contoso.com") for i in range(staff)]
    return bosses, rest


def directory_rows(bosses: list[Someone], rest: list[Someone]) -> list[Person]:
    found = []
    for i, p in enumerate(bosses):
        roles = (ROLE,) if i % 2 else ()
        found.append(Person(p.user_id, f"Leader {p.n:03d}", (p.email,), (p.user_id,), roles=roles))
    for p in rest:
        found.append(Person(p.user_id, f"Staff {p.n:05d}", (p.email,), (p.user_id,), roles=("Sales Rep",)))
    return found


def bench_config(database: Path, bosses: list[Someone]) -> Config:
    return load_config(
        path=None,
        env={},
        overrides={
            "storage.url": f"sqlite:///{database}",
            "var_dir": str(database.parent / "var"),
            "secrets_dir": str(database.parent / "var" / "secrets"),
            "leaders.users": [{"email": p.email} for i, p in enumerate(bosses) if i % 2 == 0],
            "leaders.roles": [ROLE],
        },
    )


def week_start(first_monday: date, index: int) -> datetime:
    day = first_monday + timedelta(weeks=index)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def generate_week(
    index: int,
    start: datetime,
    bosses: list[Someone],
    rest: list[Someone],
    staff_facts: int,
    expected: Counter[tuple[int, int, str]],
) -> Iterator[tuple[Any, ...]]:
    """One week's facts as rows for executemany; tallies leaders' live facts in `expected`."""
    rng = random.Random(index)
    kinds = list(KIND_SHARE)
    shares = list(KIND_SHARE.values())
    stored = (start + timedelta(days=7, hours=1)).strftime(STAMP)
    serial = index * 10_000_000
    who = [(p, True) for p in bosses for _ in range(LEADER_FACTS_PER_WEEK)]
    who += [(rest[rng.randrange(len(rest))], False) for _ in range(staff_facts)]
    picks = rng.choices(kinds, shares, k=len(who))
    for (person, is_leader), kind in zip(who, picks, strict=True):
        serial += 1
        retracted = rng.random() < 0.1
        at = start + timedelta(seconds=rng.randrange(7 * 86400))
        if is_leader and not retracted:
            expected[(index, person.n, kind)] += 1
        yield (kind, f"{kind}:{serial}", person.identifier(rng), at.strftime(STAMP), "{}", retracted, stored)


def insert_weeks(database: Path, rows: Iterator[tuple[Any, ...]]) -> int:
    conn = sqlite_connect(str(database))
    inserted = 0
    try:
        batch: list[tuple[Any, ...]] = []
        sql = (
            "INSERT INTO facts (kind, fact_key, person, occurred_at, data, retracted, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)"
        )

        def flush() -> None:
            conn.execute("BEGIN")
            conn.executemany(sql, batch)
            conn.execute("COMMIT")

        for row in rows:
            batch.append(row)
            if len(batch) >= 100_000:
                flush()
                inserted += len(batch)
                batch = []
        if batch:
            flush()
            inserted += len(batch)
    finally:
        conn.close()
    return inserted


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, list[float], Any]:
    result = fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def measure(engine: sa.Engine, config: Config, week: str, runs: int) -> dict[str, Any]:
    directory = load_directory(engine, config)
    cached, cached_all, snapshot = timed(
        lambda: leaders_snapshot(engine, config, week, directory=directory), runs
    )
    loading, loading_all, _ = timed(lambda: leaders_snapshot(engine, config, week), runs)
    t0 = time.perf_counter()
    load_directory(engine, config)
    directory_load = time.perf_counter() - t0
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM facts")).scalar()
    return {
        "facts_stored": int(stored or 0),
        "snapshot_s": cached,
        "snapshot_runs_s": cached_all,
        "snapshot_with_directory_load_s": loading,
        "snapshot_with_directory_load_runs_s": loading_all,
        "directory_load_s": directory_load,
        "snapshot": snapshot,
    }


def check(
    snapshot: dict[str, Any], expected: Counter[tuple[int, int, str]], index: int, n_leaders: int
) -> None:
    """The snapshot's counts are the generated ones, leader by leader."""
    if len(snapshot["leaders"]) != n_leaders:
        raise SystemExit(f"wrong answer: {len(snapshot['leaders'])} leaders, expected {n_leaders}")
    for row in snapshot["leaders"]:
        n = int(row["email"].removeprefix("leader").partition("@")[0])
        want = {kind: expected[(index, n, kind)] for kind in SIGNAL_KINDS}
        if row["counts"] != want:
            raise SystemExit(f"wrong answer for {row['email']}: {row['counts']} != {want}")


def query_plan(engine: sa.Engine, week: str, config: Config) -> list[str]:
    period = parse_period(week, config.leaders.period)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT kind, person, count(*) FROM facts "
            "WHERE occurred_at >= ? AND occurred_at < ? AND retracted = 0 GROUP BY kind, person",
            (period.start.strftime(STAMP), period.end.strftime(STAMP)),
        ).all()
    return [str(r[-1]) for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leaders", type=int, default=50)
    ap.add_argument("--staff", type=int, default=5000)
    ap.add_argument("--facts", type=int, default=2_000_000, help="facts in the year, about")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per measurement (median)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary database")
    args = ap.parse_args()

    bosses, rest = people(args.leaders, args.staff)
    per_week = args.facts // WEEKS
    staff_facts = max(per_week - args.leaders * LEADER_FACTS_PER_WEEK, 0)
    # The year: 52 ISO weeks ending with the last full week before 2026-W49.
    last = parse_period("2026-W48", "week")
    first_monday = (last.start - timedelta(weeks=WEEKS - 1)).date()
    week = last.name
    index = WEEKS - 1
    home = Path(tempfile.mkdtemp(prefix="onrecord-bench-leaders-"))
    database = home / "onrecord.db"
    config = bench_config(database, bosses)
    engine = get_engine(config.storage.url)
    expected: Counter[tuple[int, int, str]] = Counter()
    results: dict[str, Any] = {
        "benchmark": "leaders",
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "sqlite": __import__("sqlite3").sqlite_version,
        "leaders": args.leaders,
        "staff": args.staff,
        "weeks": WEEKS,
        "facts_per_week": per_week,
        "week": week,
        "runs": args.runs,
    }
    try:
        t0 = time.perf_counter()
        migrate.upgrade(engine)
        replace_people(engine, "salesforce", directory_rows(bosses, rest))

        def weeks(indexes: range) -> Iterator[tuple[Any, ...]]:
            for i in indexes:
                yield from generate_week(i, week_start(first_monday, i), bosses, rest, staff_facts, expected)

        print(f"inserting the last {RECENT} weeks ({per_week:,} facts a week) ...", flush=True)
        inserted = insert_weeks(database, weeks(range(WEEKS - RECENT, WEEKS)))
        results["load_recent_s"] = time.perf_counter() - t0
        recent = measure(engine, config, week, args.runs)
        check(recent.pop("snapshot"), expected, index, args.leaders)
        print(f"  {recent['facts_stored']:,} facts: {recent['snapshot_s'] * 1000:.1f} ms", flush=True)

        print(f"inserting the {WEEKS - RECENT} weeks before ...", flush=True)
        t1 = time.perf_counter()
        inserted += insert_weeks(database, weeks(range(0, WEEKS - RECENT)))
        results["load_year_s"] = time.perf_counter() - t1
        dispose_engines()  # a fresh pool: nothing cached in connections from the small run
        engine = get_engine(config.storage.url)
        year = measure(engine, config, week, args.runs)
        snapshot = year.pop("snapshot")
        check(snapshot, expected, index, args.leaders)
        print(f"  {year['facts_stored']:,} facts: {year['snapshot_s'] * 1000:.1f} ms", flush=True)
        results.update(
            {
                "facts_inserted": inserted,
                "database_bytes": database.stat().st_size,
                "recent": recent,
                "year": year,
                "ratio_year_to_recent": year["snapshot_s"] / recent["snapshot_s"],
                "ratio_with_directory_load": year["snapshot_with_directory_load_s"]
                / recent["snapshot_with_directory_load_s"],
                "query_plan": query_plan(engine, week, config),
                "champions": snapshot["champions"],
                "target_s": 1.0,
                "met": year["snapshot_s"] <= 1.0,
                "total_s": time.perf_counter() - t0,
            }
        )
    finally:
        dispose_engines()
        if args.keep:
            print(f"database kept: {database}")
        else:
            shutil.rmtree(home, ignore_errors=True)

    out = ROOT / "bench" / "out" / f"leaders-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    print(f"\nfull figures: {out.relative_to(ROOT)}")
    return 0 if results["met"] else 1


def report(r: dict[str, Any]) -> None:
    recent, year = r["recent"], r["year"]
    print(
        f"\nleaders: one week ({r['week']}) for {r['leaders']} leaders, {r['staff']:,} staff, "
        f"{r['facts_per_week']:,} facts a week; median of {r['runs']} runs; SQLite {r['sqlite']}"
    )
    print(f"\n| measured | {RECENT} weeks stored | {WEEKS} weeks stored | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| facts stored | {recent['facts_stored']:,} | {year['facts_stored']:,} | |")
    for label, key in (
        ("snapshot, directory cached (API)", "snapshot_s"),
        ("snapshot, loading the directory (CLI)", "snapshot_with_directory_load_s"),
        ("directory load alone", "directory_load_s"),
    ):
        ratio = year[key] / recent[key] if recent[key] else float("nan")
        print(f"| {label} | {recent[key] * 1000:.1f} ms | {year[key] * 1000:.1f} ms | x{ratio:.2f} |")
    print(f"\nquery plan: {'; '.join(r['query_plan'])}")
    print(f"load: {r['load_recent_s']:.1f} s + {r['load_year_s']:.1f} s; total {r['total_s']:.1f} s")
    verdict = "met" if r["met"] else "NOT met"
    print(f"target <= 1 s for one week's aggregation with a year stored: {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
