"""`report --html FILE [--period P] [--periods 12]`: the one-page Leader Buy-In report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plugin.config import Config
from plugin.storage import get_engine


def run(args: argparse.Namespace, config: Config) -> int:
    """Write the report for a period (default: the current one) and say where it is."""
    from plugin.leaders import PeriodError
    from plugin.report import gather, write_report

    if args.periods < 1 or args.periods > 104:
        print("--periods must be between 1 and 104", file=sys.stderr)
        return 2
    engine = get_engine(config.storage.url)
    try:
        data = gather(engine, config, period=args.period, periods=args.periods)
    except PeriodError as exc:
        print(f"--period: {exc}", file=sys.stderr)
        return 2
    path = Path(args.html)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_report(str(path), data)
    current = data.current
    print(
        f"wrote {path}: Leader Buy-In for {current.get('period')} "
        f"({len(current.get('leaders', []))} leader(s), {len(data.history)} period(s), "
        f"{len(data.off_system)} off-system approval(s))"
    )
    return 0
