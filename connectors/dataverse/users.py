"""The directory job for Dataverse: the environment's users (the systemuser table), as the people
directory's CRM side.

Runs as a scheduled job in the worker ("directory.dataverse", every `directory.refresh_seconds`)
and from the command line, like `connectors.salesforce.users`. Each run reads, through the Web
API client's `get_all` (which follows @odata.nextLink):

    GET systemusers?$select=systemuserid,fullname,internalemailaddress,domainname,
                            azureactivedirectoryobjectid,isdisabled,accessmode,applicationid

and replaces source "dataverse" of the `directory` table with one Person per user
(`plugin.directory_store.replace_people`): key the systemuserid GUID in lower case; crm ids the
systemuserid and the Entra object id; name the full name; e-mails the primary e-mail and the
user name (UPN) that look like an address, lower-cased, without repeats; active = not disabled (a
disabled user stays, inactive: old records still name them); user_type "Application" for an
application user, else Dataverse's access mode label ("Standard" for Read-Write).

Sources (the User (SystemUser) table reference,
https://learn.microsoft.com/power-apps/developer/data-platform/reference/entities/systemuser):
- systemuserid: the primary key (EntitySetName `systemusers`, PrimaryNameAttribute `fullname`).
- internalemailaddress ("Primary Email", "Internal email address for the user", 100 characters):
  not unique; an integration or shared mailbox often repeats someone's address.
- domainname ("User Name", "Active Directory domain of which the user is a member", 1024
  characters): for Entra-backed environments the user's sign-in name, i.e. the UPN; Dataverse
  keeps one user per user name.
- azureactivedirectoryobjectid ("Azure AD Object ID"): the user's object id in Microsoft Entra ID.
- isdisabled ("Status": 1 Disabled, 0 Enabled).
- accessmode ("Access Mode", "Type of user": 0 Read-Write, 1 Administrative, 2 Read, 3 Support
  User, 4 Non-interactive, 5 Delegated Admin).
- applicationid ("Application ID"): set for an application user, the app registration that signs
  in as it (OnRecord's own application user is one).

Ambiguous addresses, following the Salesforce job's rule: an address that more than one user
claims is kept only by the user whose user name (domainname) it is, else by the only enabled
claimant, else by nobody: one address never joins two CRM users into one person.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import Engine

from plugin.config import Config
from plugin.directory import Person, address_owners
from plugin.directory_store import refresh_from_crm
from plugin.jobs import Job, JobRun, JobRunner

if TYPE_CHECKING:
    from connectors.dataverse.config import DataverseConfig
    from connectors.dataverse.webapi import WebApiClient

log = logging.getLogger(__name__)

JOB_NAME = "directory.dataverse"
SOURCE = "dataverse"
ENTITY_SET = "systemusers"
FIELDS = (
    "systemuserid",
    "fullname",
    "internalemailaddress",
    "domainname",
    "azureactivedirectoryobjectid",
    "isdisabled",
    "accessmode",
    "applicationid",
)
DEFAULT_INTERVAL = 3600.0

# accessmode labels, as the systemuser reference lists them; Read-Write is an ordinary user, the
# "Standard" of the Salesforce job (the CLI prints only the other kinds).
ACCESS_MODES = {
    0: "Standard",
    1: "Administrative",
    2: "Read",
    3: "Support User",
    4: "Non-interactive",
    5: "Delegated Admin",
}
NON_INTERACTIVE = 4
APPLICATION = "Application"

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Reader(Protocol):
    """What the job needs of the Web API client (`connectors.dataverse.webapi`)."""

    def get_all(self, path: str, params: Mapping[str, str] | None = None) -> Iterable[Mapping[str, Any]]:
        """Every row of a collection, following @odata.nextLink."""
        ...


def looks_like_address(value: str) -> bool:
    """Whether a value is shaped like an e-mail address or UPN (local@domain, no spaces)."""
    local, at, domain = value.partition("@")
    return bool(at and local and domain and "@" not in domain and not any(c.isspace() for c in value))


def guid(value: Any) -> str | None:
    """A GUID in the lower-case form OnRecord keeps it in; None for anything else."""
    text = str(value or "").strip().strip("{}").lower()
    return text if _GUID.match(text) else None


def user_type(row: Mapping[str, Any]) -> str:
    """ "Application" for an application user (its applicationid is set; Dataverse gives those
    access mode 4, Non-interactive); otherwise the access mode's label."""
    if guid(row.get("applicationid")) is not None:
        return APPLICATION
    mode = row.get("accessmode")
    if mode == NON_INTERACTIVE:
        return APPLICATION
    return ACCESS_MODES.get(mode if isinstance(mode, int) else 0, "Standard")


def _addresses(row: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for name in ("internalemailaddress", "domainname"):
        value = str(row.get(name) or "").strip().lower()
        if value and looks_like_address(value) and value not in found:
            found.append(value)
    return found


def people_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[Person]:
    """systemuser rows as Persons, in key order (rows without a valid systemuserid are skipped)."""
    users: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        user_id = guid(row.get("systemuserid"))
        if user_id is not None:
            users[user_id] = row
    owners = address_owners(
        {u: _addresses(row) for u, row in users.items()},
        {u: str(row.get("domainname") or "") for u, row in users.items()},
        {u: not row.get("isdisabled") for u, row in users.items()},
        "Dataverse",
    )
    people = []
    for user_id, row in sorted(users.items()):
        # The Entra object id is how Power Automate names a person (an approval's responder, a
        # flow's "modified by"), so it must find the same person as the systemuserid does.
        entra = guid(row.get("azureactivedirectoryobjectid"))
        name = str(row.get("fullname") or "").strip() or str(row.get("domainname") or "").strip()
        people.append(
            Person(
                key=user_id,
                name=name or user_id,
                emails=tuple(a for a in _addresses(row) if owners.get(a) == user_id),
                crm_ids=(user_id, entra) if entra and entra != user_id else (user_id,),
                active=not row.get("isdisabled"),
                user_type=user_type(row),
            )
        )
    return people


def read_people(reader: Reader) -> tuple[list[Person], dict[str, int]]:
    """The environment's users as Persons, and counts (users, ambiguous addresses withheld)."""
    rows = list(reader.get_all(ENTITY_SET, {"$select": ",".join(FIELDS)}))
    people = people_from_rows(rows)
    claimed = {a for row in rows if guid(row.get("systemuserid")) for a in _addresses(row)}
    kept = {e for p in people for e in p.emails}
    counts = {"users": len(people), "ambiguous_addresses": len(claimed - kept)}
    return people, counts


class DirectoryRefresh:
    """One refresh: run(state, now) -> JobRun, as a Job wants it."""

    def __init__(self, reader: Reader | Callable[[], Reader], engine: Engine | Callable[[], Engine]) -> None:
        self._reader = reader
        self._engine = engine

    def run(self, state: Mapping[str, Any], now: datetime) -> JobRun:
        """Read the users; make them the directory's "dataverse" rows."""
        reader = self._reader() if callable(self._reader) else self._reader
        people, counts = read_people(reader)
        return refresh_from_crm(self._engine, SOURCE, "Dataverse", people, counts, now)


def directory_job(config: Config, engine: Engine | None = None, reader: Reader | None = None) -> Job:
    """The scheduled job; it builds its Web API client (and finds its engine) on first use."""
    from plugin.storage import get_engine

    refresh = DirectoryRefresh(
        reader or lazy_client(config), engine or (lambda: get_engine(config.storage.url))
    )
    interval = config.directory.refresh_seconds or DEFAULT_INTERVAL  # 0: not scheduled
    return Job(name=JOB_NAME, interval_seconds=interval, run=refresh.run)


def refresh_directory_now(
    config: Config,
    engine: Engine,
    *,
    owner: str,
    now: datetime | None = None,
    reader: Reader | None = None,
) -> JobRun:
    """Run the refresh once, now, under its job lease (the CLI's `directory --refresh`)."""
    runner = JobRunner(engine, [directory_job(config, engine, reader)], owner=owner)
    return runner.run_now(JOB_NAME, now or datetime.now(UTC))


def dataverse_settings(config: Config) -> DataverseConfig:
    """The `[dataverse]` section, typed."""
    from connectors.dataverse.connector import settings

    return settings(config)


def lazy_client(config: Config) -> Callable[[], WebApiClient]:
    """The Web API client, built once, on first use (a worker that never runs the job never
    signs in; a job that runs again reuses the client and its token)."""
    lock = threading.Lock()
    built: list[WebApiClient] = []

    def client() -> WebApiClient:
        with lock:
            if not built:
                from connectors.dataverse.webapi import WebApiClient, WebApiSettings

                built.append(WebApiClient(WebApiSettings.from_config(dataverse_settings(config))))
            return built[0]

    return client


__all__ = [
    "ENTITY_SET",
    "FIELDS",
    "JOB_NAME",
    "SOURCE",
    "DirectoryRefresh",
    "Reader",
    "dataverse_settings",
    "directory_job",
    "guid",
    "lazy_client",
    "looks_like_address",
    "people_from_rows",
    "read_people",
    "refresh_directory_now",
    "user_type",
]
