"""The Dataverse (Dynamics 365) connector as the core sees it (plugin/registry.py): the webhook,
the `[dataverse]` section, the Web API writer, provisioning, the directory and audit jobs, and
Dataverse's ids (lower-case GUIDs). Heavy modules (msal) are imported on first use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from connectors.dataverse import ids
from connectors.dataverse.config import DataverseConfig
from plugin.registry import CheckLine, Connector, CrmSide, IdScheme, lazy

if TYPE_CHECKING:
    from plugin.config import Config
    from plugin.jobs import Job
    from plugin.receive import Source

NAME = "dataverse"
LOGIN_SOURCE = "dataverse.audit"
# The audit record's action label of an interactive sign-in (connectors/dataverse/logins.py).
INTERACTIVE_LOGIN_TYPES = ("User Access via Web",)


def settings(config: Config) -> DataverseConfig:
    """The `[dataverse]` section, typed."""
    return config.section(NAME, DataverseConfig)


def configured(config: Config) -> bool:
    """Whether OnRecord can sign in to the environment to write."""
    return settings(config).configured()


def _hooks() -> Mapping[str, Source]:
    from connectors.dataverse.hooks import HOOKS

    return HOOKS


def _writing(config: Config) -> bool:
    from plugin.writers import writes_for_real

    return writes_for_real(config, NAME)


def _jobs(config: Config) -> Sequence[Job]:
    found: list[Job] = []
    if _writing(config) and settings(config).poll_audit_interval_seconds > 0:
        from connectors.dataverse.logins import login_poll_job

        found.append(login_poll_job(config))
    if _writing(config) and config.directory.refresh_seconds > 0:
        from connectors.dataverse.users import directory_job

        found.append(directory_job(config))
    return found


def _own_users(config: Config) -> Sequence[str]:
    own = settings(config).application_user_id
    return (own,) if own else ()


def _checks(config: Config) -> Sequence[CheckLine]:
    from plugin.commands.check import secret_line

    return [secret_line(NAME, "webhook_key", "POST /hooks/dataverse", settings(config).webhook_key)]


CONNECTOR = Connector(
    name=NAME,
    settings=DataverseConfig,
    secrets=frozenset({"client_secret", "webhook_key"}),
    # The client secret comes from the app registration: a made-up one would only fail to sign in.
    optional_secrets=frozenset({"client_secret"}),
    hooks=_hooks,
    jobs=_jobs,
    checks=_checks,
    crm=CrmSide(
        configured=configured,
        build_writer=lazy("connectors.dataverse.wiring:build_dataverse_writer"),
        own_users=_own_users,
        provision=lazy("connectors.dataverse.provision_command:run"),
        poll_logins=lazy("connectors.dataverse.logins:poll_logins_now"),
        refresh_directory=lazy("connectors.dataverse.users:refresh_directory_now"),
        needs="dataverse.url, dataverse.tenant_id, dataverse.client_id and dataverse.client_secret",
    ),
    ids=IdScheme(canonical=ids.canonical, match_key=ids.match_key, user_id=ids.canonical),
    login_types={LOGIN_SOURCE: frozenset(INTERACTIVE_LOGIN_TYPES)},
)
