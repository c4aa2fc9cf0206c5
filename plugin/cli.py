"""`python -m plugin <command>`: the admin's command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from plugin.config import Config, ConfigError, load_config

Command = Callable[[argparse.Namespace, Config], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one command; the exit code says how it went."""
    parser = argparse.ArgumentParser(prog="python -m plugin", description="OnRecord")
    parser.add_argument(
        "--config", help="configuration file (default: $ONRECORD_CONFIG or config/onrecord.toml)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("init", help="create var/, dev secrets and the database schema")
    p = sub.add_parser("serve", help="serve HTTP under gunicorn (and run a worker)")
    p.add_argument("--no-worker", action="store_true", help="do not start a rules worker alongside")
    p = sub.add_parser("worker", help="run the rules worker and the dispatcher")
    p.add_argument("--once", action="store_true", help="work until idle, then exit")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    sub.add_parser("check", help="validate configuration and reach the database and the CRM")
    p = sub.add_parser("outbox", help="show pending, sent and dead CRM writes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=20, help="rows to list per status")
    p = sub.add_parser("deadletters", help="list or retry dead writes and parked events")
    dl = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = dl.add_parser("list", help="list dead writes and parked events")
    q.add_argument("--json", action="store_true")
    q = dl.add_parser(
        "retry", help="retry dead letters: IDs (write:N or event:N; N alone is a write) or --all"
    )
    q.add_argument("ids", nargs="*")
    q.add_argument("--all", action="store_true")

    args = parser.parse_args(argv)
    if args.config:
        os.environ["ONRECORD_CONFIG"] = args.config
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    commands: dict[str, Command] = {
        "init": _lazy("plugin.commands.init", "run"),
        "serve": _lazy("plugin.commands.serve", "run"),
        "worker": _lazy("plugin.commands.work", "run"),
        "check": _lazy("plugin.commands.check", "run"),
        "outbox": _lazy("plugin.commands.outbox", "run_outbox"),
        "deadletters": _lazy("plugin.commands.outbox", "run_deadletters"),
    }
    return commands[args.command](args, config)


def _lazy(module: str, attr: str) -> Command:
    # Commands import what they need only when run, so `--help` and `check` stay fast.
    def run(args: argparse.Namespace, config: Config) -> int:
        import importlib

        fn: Command = getattr(importlib.import_module(module), attr)
        return fn(args, config)

    return run


def print_json(value: object) -> None:
    """One JSON document on stdout."""
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def var_path(config: Config, *parts: str) -> Path:
    """A path under var_dir."""
    return Path(config.var_dir, *parts)
