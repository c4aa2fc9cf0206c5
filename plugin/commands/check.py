"""`check`: configuration, database and CRM, each with the exact problem when there is one."""

from __future__ import annotations

import argparse

import sqlalchemy as sa

from plugin import migrate
from plugin.config import Config, env_name
from plugin.rules import load_rules
from plugin.storage import get_engine
from plugin.writers import build_writer, writer_kind


def run(args: argparse.Namespace, config: Config) -> int:
    """Print one line per check; exit 1 if any failed."""
    results: list[tuple[bool, str]] = [(True, "configuration is valid")]
    engine = get_engine(config.storage.url)
    url = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        revision = migrate.current_revision(engine)
        if revision is None:
            results.append((False, f"database {url} answers but has no schema: run `python -m plugin init`"))
        else:
            results.append((True, f"database {url} answers (schema {revision})"))
    except Exception as exc:
        results.append((False, f"database {url} unreachable: {type(exc).__name__}: {exc}"))
    try:
        rules = load_rules(config)
        results.append((True, f"rules: {', '.join(r.name for r in rules) or 'none configured'}"))
    except Exception as exc:
        results.append((False, f"worker.rules: {exc}"))
    if config.salesforce.events_secret:
        results.append(
            (True, f"salesforce.events_secret: {len(config.salesforce.events_secret)} secret(s) set")
        )
    else:
        results.append(
            (
                False,
                f"salesforce.events_secret is not set ({env_name('salesforce', 'events_secret')}): "
                "POST /hooks/salesforce/events refuses everything",
            )
        )
    try:
        ok, why = build_writer(config, engine).ready()
        results.append((ok, f"CRM writer {writer_kind(config)}: {why}"))
    except Exception as exc:
        results.append((False, f"CRM writer {writer_kind(config)}: {type(exc).__name__}: {exc}"))
    for ok, line in results:
        print(f"{'ok  ' if ok else 'FAIL'} {line}")
    return 0 if all(ok for ok, _ in results) else 1
