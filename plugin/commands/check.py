"""`check`: configuration, database and CRM, each with the exact problem when there is one."""

from __future__ import annotations

import argparse

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin import migrate, registry
from plugin.config import Config, env_name
from plugin.rules import load_rules
from plugin.storage import get_engine
from plugin.writers import build_writer, writer_kind


def run(args: argparse.Namespace, config: Config) -> int:
    """Print one line per check; exit 1 if any failed."""
    results: list[tuple[bool | None, str]] = [(True, "configuration is valid")]
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
    results += _sources(config)
    results += _writers(config, engine)
    results.append(_crm_config(config, engine))
    for state, line in results:
        print(f"{_MARK[state]} {line}")
    return 0 if all(state is not False for state, _ in results) else 1


# True: fine; None: switched off (not configured), which is allowed; False: a problem.
_MARK = {True: "ok  ", None: "off ", False: "FAIL"}


def secret_line(section: str, key: str, what: str, value: object) -> tuple[bool | None, str]:
    """A sender's secret: set, or not set (so that sender is refused: fail closed)."""
    if value:
        return True, f"{what}: {section}.{key} is set"
    return None, f"{what}: {section}.{key} is not set ({env_name(section, key)}), so it refuses all"


def _sources(config: Config) -> list[tuple[bool | None, str]]:
    """Which senders can reach OnRecord; an unconfigured one refuses everything (fail closed)."""
    lines: list[tuple[bool | None, str]] = []
    for connector in registry.connectors():
        lines += connector.checks(config)
    api = config.api
    lines.append(secret_line("api", "tokens", "/api/*", api.tokens))
    if api.tokens and not api.callback_key:
        lines.append(
            (False, f"api.callback_key is not set ({env_name('api', 'callback_key')}): no subscriptions")
        )
    if config.governed:
        names = ", ".join(g.object for g in config.governed)
        lines.append((True, f"governed objects: {names}"))
    else:
        lines.append(
            (None, "no governed objects ([[governed]]): record changes are acknowledged and ignored")
        )
    return lines


def _crm_config(config: Config, engine: Engine) -> tuple[bool | None, str]:
    """[crm_config]: the CRM's configuration in force, or the records' problems (FAIL: an admin
    has a record to fix, though OnRecord runs on with the last good configuration)."""
    from plugin.crm_config_job import status_line

    try:
        return status_line(config, engine)
    except Exception as exc:  # no schema yet: said above
        return None, f"configuration from the CRM: unknown ({type(exc).__name__})"


def _writers(config: Config, engine: Engine) -> list[tuple[bool | None, str]]:
    """Each CRM's writer: the primary CRM's always, another's when something is governed in it."""
    lines: list[tuple[bool | None, str]] = []
    used = {config.crm.primary, *(g.crm for g in config.governed)}
    for crm in registry.crm_names():
        if crm not in used:
            continue
        label = "CRM writer" if crm == config.crm.primary else f"CRM writer ({crm})"
        try:
            ok, why = build_writer(config, engine, crm).ready()
            lines.append((ok, f"{label} {writer_kind(config, crm)}: {why}"))
        except Exception as exc:
            lines.append((False, f"{label} {writer_kind(config, crm)}: {type(exc).__name__}: {exc}"))
    return lines
