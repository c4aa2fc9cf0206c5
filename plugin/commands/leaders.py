"""`leaders [--json] [--period P]`: leader buy-in signals of a period — counts per kind, score,
trend, champion candidates — recomputed from the stored facts, as GET /api/leaders gives them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from plugin.cli import print_json
from plugin.config import SIGNAL_KINDS, Config
from plugin.leaders.periods import PeriodError
from plugin.leaders.store import leaders_snapshot
from plugin.storage import get_engine

# Column headings, one per kind (in SIGNAL_KINDS order).
HEADINGS = {
    "login": "logins",
    "record_touched": "records",
    "form_approval": "forms",
    "off_system_approval": "off-sys",
    "training": "training",
    "citation": "cites",
    "report_view": "reports",
    "dashboard_view": "dashbds",
}


def run(args: argparse.Namespace, config: Config) -> int:
    """Print one period's leaders, best score first (--json: the API's body)."""
    try:
        snapshot = leaders_snapshot(get_engine(config.storage.url), config, args.period)
    except PeriodError as exc:
        print(f"leaders: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print_json(snapshot)
        return 0
    print(render(snapshot, configured=bool(config.leaders.users or config.leaders.roles)), end="")
    return 0


def render(snapshot: dict[str, Any], *, configured: bool = True) -> str:
    """The snapshot as a table."""
    lines = [f"leaders {snapshot['period']} (weights {snapshot['weights_version']})"]
    rows = snapshot["leaders"]
    if not rows:
        why = "" if configured else " ([leaders] users and roles name nobody)"
        return "\n".join([*lines, f"no leaders{why}"]) + "\n"
    who = [f"{r['name']} <{r['email'] or r['salesforce_id']}>" for r in rows]
    width = max(len("leader"), *(len(w) for w in who))
    heads = [HEADINGS[k] for k in SIGNAL_KINDS]
    lines.append(
        f"{'leader':<{width}}  {'score':>7}  {'trend':>7}  champion  " + "  ".join(f"{h:>7}" for h in heads)
    )
    for name, r in zip(who, rows, strict=True):
        counts = "  ".join(f"{r['counts'][k]:>{max(7, len(HEADINGS[k]))}}" for k in SIGNAL_KINDS)
        mark = "yes" if r["champion_candidate"] else ""
        lines.append(f"{name:<{width}}  {r['score']:>7.1f}  {r['trend']:>+7.1f}  {mark:<8}  {counts}")
    champions = ", ".join(snapshot["champions"]) or "none"
    lines.append(f"champion candidates: {champions}")
    return "\n".join(lines) + "\n"
