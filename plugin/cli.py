"""`python -m plugin <command>`: the admin's command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from plugin import registry
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
    p = sub.add_parser("inbox-writer")  # started by `serve` for SQLite; not listed (no help)
    p.add_argument("--socket", required=True)
    p.add_argument("--parent-pid", type=int)
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
    crms = registry.crm_names()
    crm_help = f"which CRM ({', '.join(crms)}; default: crm.primary)"
    p = sub.add_parser("poll", help="run a poller once, now (logins: LoginHistory, Dataverse auditing)")
    p.add_argument("what", choices=["logins"])
    p.add_argument("--crm", choices=crms, help=crm_help)
    p = sub.add_parser("provision", help="write (and deploy) what OnRecord needs in the CRM")
    p.add_argument("--crm", choices=crms, help=crm_help)
    p.add_argument("--out", help="directory to write the package to (default: a temporary one)")
    p.add_argument("--deploy", action="store_true", help="deploy it (Metadata API, Web API)")
    p.add_argument("--check-only", action="store_true", help="with --deploy: validate, do not save")
    p.add_argument("--wait", type=float, default=600.0, help="with --deploy: seconds to wait for it")

    p = sub.add_parser("keys", help="provenance signing keys: list, rotate, export (public JWK set)")
    p.add_argument("action", choices=["list", "rotate", "export"])
    p = sub.add_parser("verify", help="verify a provenance chain with the public keys only")
    p.add_argument("file", nargs="?", help="JSON as GET /api/provenance/<object>/<id> returns it")
    p.add_argument("--record", help="OBJECT/ID to fetch from --url")
    p.add_argument("--url", help="a running OnRecord, e.g. https://onrecord.contoso.com")
    p.add_argument("--keys", help="JWK set file (default: <url>/.well-known/onrecord-keys.json)")
    p.add_argument("--token", help="API token for --url (default: the first of api.tokens)")
    p.add_argument(
        "--checkpoints", nargs=2, metavar=("OLD", "NEW"), help="two saved checkpoints: check NEW extends OLD"
    )
    p.add_argument(
        "--proof", help="with --checkpoints: the JSON /api/provenance/checkpoint?from=OLD answered"
    )
    p = sub.add_parser("log", help="the provenance log: print its current signed checkpoint")
    p.add_argument("action", choices=["checkpoint"])
    p = sub.add_parser("approvals", help="approval verdicts: record, verdict, reason, who, when")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pending", action="store_true", help="only records whose verdict is Pending")
    which.add_argument("--blocked", action="store_true", help="only records whose verdict is Blocked")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=100, help="records to list at most")
    p = sub.add_parser("directory", help="list the people directory (names, e-mails, ids, groups)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--refresh", action="store_true", help="read the CRM's users (and groups) first")
    p.add_argument("--crm", choices=crms, help=crm_help)
    p = sub.add_parser("leaders", help="leader buy-in signals: counts, score, trend, champion candidates")
    p.add_argument("--json", action="store_true", help="machine-readable output (as GET /api/leaders)")
    p.add_argument("--period", help="another period, e.g. 2026-W48 or 2026-11-26 (default: the current one)")
    p = sub.add_parser("report", help="write the one-page Leader Buy-In report (HTML, charts inline)")
    p.add_argument("--html", required=True, metavar="FILE", help="where to write the page")
    p.add_argument("--period", help="the report's period, e.g. 2026-W48 (default: the current one)")
    p.add_argument("--periods", type=int, default=12, help="periods the chart shows, this one included")
    extra: dict[str, Command] = {}
    for connector in registry.connectors():
        for command in connector.commands:
            command.add(sub)
            extra[command.name] = command.run

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
        "inbox-writer": _lazy("plugin.commands.serve", "run_inbox_writer"),
        "outbox": _lazy("plugin.commands.outbox", "run_outbox"),
        "deadletters": _lazy("plugin.commands.outbox", "run_deadletters"),
        "poll": _lazy("plugin.commands.poll", "run"),
        "provision": _lazy("plugin.commands.provision", "run"),
        "keys": _lazy("plugin.commands.keys", "run"),
        "verify": _lazy("plugin.commands.verify", "run"),
        "log": _lazy("plugin.commands.log", "run"),
        "directory": _lazy("plugin.commands.directory", "run"),
        "approvals": _lazy("plugin.commands.approvals", "run"),
        "leaders": _lazy("plugin.commands.leaders", "run"),
        "report": _lazy("plugin.commands.report", "run"),
        **extra,
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
