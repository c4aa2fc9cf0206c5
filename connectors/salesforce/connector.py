"""The Salesforce connector as the core sees it (plugin/registry.py): hooks, settings, jobs,
checks, the writer, provisioning, the id scheme. Heavy modules are imported on first use."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from connectors.salesforce import ids
from connectors.salesforce.config import SalesforceConfig
from plugin.registry import CheckLine, Command, Connector, CrmSide, IdScheme, lazy

if TYPE_CHECKING:
    from plugin.config import Config
    from plugin.jobs import Job
    from plugin.receive import Source

NAME = "salesforce"
LOGIN_SOURCE = "salesforce.logins"
# LoginHistory LoginType values of a person logging in to the UI (connectors/salesforce/logins.py
# says where they come from); kept here so the signals rule need not import the poller.
INTERACTIVE_LOGIN_TYPES = (
    "Application",
    "SAML Idp Initiated SSO",
    "SAML Sfdc Initiated SSO",
    "Third Party SSO",
    "Lightning Login",
    "Passwordless Login",
    "Remote Access Client",
)


def settings(config: Config) -> SalesforceConfig:
    """The `[salesforce]` section, typed."""
    return config.section(NAME, SalesforceConfig)


def configured(config: Config) -> bool:
    """Whether credentials for the Salesforce writer are present."""
    sf = settings(config)
    if sf.auth == "client_credentials":
        return bool(sf.client_id and sf.client_secret)
    return bool(sf.client_id and sf.username and sf.private_key_file)


def _hooks() -> Mapping[str, Source]:
    from connectors.salesforce.events import HOOKS as EVENTS
    from connectors.salesforce.outbound_view import HOOKS as OUTBOUND

    return {**EVENTS, **OUTBOUND}


def _prepare(config: Config) -> None:
    from connectors.salesforce.outbound_view import preload

    preload(config)


def _writing(config: Config) -> bool:
    from plugin.writers import writes_for_real

    return writes_for_real(config, NAME)


def _jobs(config: Config) -> Sequence[Job]:
    found: list[Job] = []
    if _writing(config) and settings(config).poll_logins_interval_seconds > 0:
        from connectors.salesforce.logins import login_poll_job

        found.append(login_poll_job(config))
    if _writing(config) and config.directory.refresh_seconds > 0:
        from connectors.salesforce.users import directory_job

        found.append(directory_job(config))
    return found


def _own_users(config: Config) -> Sequence[str]:
    own = settings(config).integration_user_id
    return (own,) if own else ()


def _checks(config: Config) -> Sequence[CheckLine]:
    from plugin.commands.check import secret_line

    sf = settings(config)
    lines = [
        secret_line(NAME, "events_secret", "POST /hooks/salesforce/events", sf.events_secret),
        secret_line(NAME, "outbound_token", "POST /hooks/salesforce/outbound", sf.outbound_token),
        _wsdls(sf),
    ]
    if sf.outbound_token and not sf.org_id:
        lines.append(
            (None, "POST /hooks/salesforce/outbound: salesforce.org_id is not set, so it refuses all")
        )
    return lines


def _wsdls(sf: SalesforceConfig) -> CheckLine:
    """The outbound message WSDLs load (a broken one makes every message a server fault)."""
    from connectors.salesforce.outbound import OutboundWsdlError, preload_wsdls
    from connectors.salesforce.outbound_view import wsdl_paths

    paths = wsdl_paths(tuple(sf.outbound_wsdls))
    if not paths:
        return None, "outbound message WSDLs: none (fields of outbound messages arrive as text)"
    try:
        objects = preload_wsdls(paths)
    except OutboundWsdlError as exc:
        return False, f"outbound message WSDLs: {exc}"
    return True, f"outbound message WSDLs: {len(paths)} file(s), typing {', '.join(objects) or 'no object'}"


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="play a whole scenario against a running OnRecord and say what it did")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the OnRecord to play against")


def _demo(args: argparse.Namespace, config: Config) -> int:
    from connectors.salesforce.demo import run

    return run(args, config)


CONNECTOR = Connector(
    name=NAME,
    settings=SalesforceConfig,
    secrets=frozenset({"events_secret", "outbound_token", "client_secret"}),
    # The connected app's secret comes from Salesforce: a made-up one would only fail to log in.
    optional_secrets=frozenset({"client_secret"}),
    hooks=_hooks,
    prepare=_prepare,
    jobs=_jobs,
    checks=_checks,
    commands=(Command("demo", _add_demo, _demo),),
    crm=CrmSide(
        configured=configured,
        build_writer=lazy("connectors.salesforce.wiring:build_salesforce_writer"),
        own_users=_own_users,
        provision=lazy("connectors.salesforce.provision_command:run"),
        poll_logins=lazy("connectors.salesforce.logins:poll_logins_now"),
        refresh_directory=lazy("connectors.salesforce.users:refresh_directory_now"),
        read_config=lazy("connectors.salesforce.crm_config:read_config"),  # [crm_config]
        needs="salesforce.client_id and, for auth = jwt, salesforce.username and salesforce.private_key_file",
    ),
    ids=IdScheme(
        canonical=ids.canonical, match_key=ids.match_key, repair=ids.restore_case, user_id=ids.user_id
    ),
    login_types={LOGIN_SOURCE: frozenset(INTERACTIVE_LOGIN_TYPES)},
)
