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
    try:
        ok, why = build_writer(config, engine).ready()
        results.append((ok, f"CRM writer {writer_kind(config)}: {why}"))
    except Exception as exc:
        results.append((False, f"CRM writer {writer_kind(config)}: {type(exc).__name__}: {exc}"))
    for state, line in results:
        print(f"{_MARK[state]} {line}")
    return 0 if all(state is not False for state, _ in results) else 1


# True: fine; None: switched off (not configured), which is allowed; False: a problem.
_MARK = {True: "ok  ", None: "off ", False: "FAIL"}


def _wsdls(config: Config) -> tuple[bool | None, str]:
    """The outbound message WSDLs load (a broken one makes every message a server fault)."""
    from connectors.salesforce.outbound import OutboundWsdlError, preload_wsdls
    from connectors.salesforce.outbound_view import wsdl_paths

    paths = wsdl_paths(tuple(config.salesforce.outbound_wsdls))
    if not paths:
        return None, "outbound message WSDLs: none (fields of outbound messages arrive as text)"
    try:
        objects = preload_wsdls(paths)
    except OutboundWsdlError as exc:
        return False, f"outbound message WSDLs: {exc}"
    return True, f"outbound message WSDLs: {len(paths)} file(s), typing {', '.join(objects) or 'no object'}"


def _sources(config: Config) -> list[tuple[bool | None, str]]:
    """Which senders can reach OnRecord; an unconfigured one refuses everything (fail closed)."""
    sf, pa, api = config.salesforce, config.power_automate, config.api
    lines: list[tuple[bool | None, str]] = []

    def secret(section: str, key: str, what: str, value: object) -> None:
        if value:
            lines.append((True, f"{what}: {section}.{key} is set"))
        else:
            lines.append(
                (None, f"{what}: {section}.{key} is not set ({env_name(section, key)}), so it refuses all")
            )

    secret("salesforce", "events_secret", "POST /hooks/salesforce/events", sf.events_secret)
    secret("salesforce", "outbound_token", "POST /hooks/salesforce/outbound", sf.outbound_token)
    lines.append(_wsdls(config))
    if sf.outbound_token and not sf.org_id:
        lines.append(
            (None, "POST /hooks/salesforce/outbound: salesforce.org_id is not set, so it refuses all")
        )
    modes = []
    if "entra" in pa.auth_modes and pa.entra_tenant_id:
        modes.append(f"Entra ID tenant {pa.entra_tenant_id}")
    if "api_key" in pa.auth_modes and pa.api_key:
        modes.append(f"{len(pa.api_key)} API key(s)")
    if modes:
        lines.append((True, f"POST /hooks/power-automate/*: {', '.join(modes)}"))
    else:
        lines.append(
            (None, "POST /hooks/power-automate/*: no Entra ID tenant or API key configured, refuses all")
        )
    secret("api", "tokens", "/api/*", api.tokens)
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
