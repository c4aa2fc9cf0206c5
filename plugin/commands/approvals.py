"""`approvals`: every approval-governed record OnRecord judged — verdict, reason, who, when."""

from __future__ import annotations

import argparse

from plugin.approvals_view import all_records, describe
from plugin.cli import print_json
from plugin.config import Config
from plugin.directory_store import load_directory
from plugin.storage import get_engine


def run(args: argparse.Namespace, config: Config) -> int:
    """List records newest first; --pending / --blocked keep only that verdict."""
    engine = get_engine(config.storage.url)
    directory = load_directory(engine, config)
    governed = {g.object for g in config.governed if g.approval_field and g.stages}
    wanted = "Pending" if args.pending else "Blocked" if args.blocked else None
    with engine.connect() as conn:
        found = [
            describe(config, directory, obj, record_id, value)
            for obj, record_id, value in all_records(conn)
            if obj in governed
        ]
    found = [r for r in found if r["verdict"] and (wanted is None or r["verdict"] == wanted)][: args.limit]
    if args.json:
        print_json(found)
        return 0
    if not found:
        print(f"no {wanted or 'judged'} approvals")
        return 0
    for r in found:
        change = next((c for c in reversed(r["changes"]) if c["verdict"] == r["verdict"]), None)
        who = change["actor_name"] if change else "OnRecord"
        when = change["changed_at"] if change else r["judged_at"]
        print(f"{r['verdict']:<8} {r['object']}/{r['record_id']}  by {who}  at {when}")
        print(f"         {r['note']}")
    return 0
