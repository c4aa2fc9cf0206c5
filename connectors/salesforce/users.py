"""The directory job: Salesforce's users and public groups, as the people directory's CRM side.

Runs as a scheduled job in the worker ("directory.salesforce", every `directory.refresh_seconds`;
not scheduled when that is 0 or Salesforce is not the writer) and from the command line
(`python -m plugin directory --refresh`). Each run reads, through the writer's `query()`
(queryMore paging):

    SELECT Id, Name, Email, Username, FederationIdentifier, IsActive, UserType, UserRoleId FROM User
    SELECT Id, Name FROM UserRole                    (only when some user has a role)
    SELECT Id, Name, DeveloperName FROM Group WHERE Type = 'Regular'
    SELECT GroupId, UserOrGroupId FROM GroupMember WHERE GroupId IN (...)

and replaces source "salesforce" of the `directory` table with one Person per user
(`plugin.directory_store.replace_people`): key and crm id the 18-character user id; name the
user's Name; e-mails the Email, Username and FederationIdentifier that look like an e-mail or UPN,
lower-cased, without repeats; groups the Name and DeveloperName of every public group the user
is in; roles the Name of the user's UserRole ([leaders] roles name them); active = IsActive (a
deactivated user stays, inactive: Salesforce never deletes users, and old records still name
them); user_type = UserType.

Sources (Salesforce Object Reference / Field Reference):
- User: Id, Name, Email, Username, FederationIdentifier (the SAML federation id, usually the
  IdP's UPN or e-mail), IsActive, UserType (the license category: "Standard",
  "PowerPartner", "CsnOnly", "AutomatedProcess", ...), UserRoleId (the user's role, if any).
  https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_objects_user.htm
- UserRole: "Represents a role in your organization"; Name is the role's label. Read in a query
  of its own (not the UserRole.Name relationship field), so roles cost one query, not a join.
  https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_objects_userrole.htm
- Group: "A set of User records"; a public group is a Group whose Type is "Regular" (other
  types: Queue, Role, RoleAndSubordinates, Territory, Organization, ...). Name (40 characters)
  is the label; DeveloperName, unique by group type, is the API name ("Group Name" in Setup).
  https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_objects_group.htm
- GroupMember: "Represents a User or Group that is a member of a public group"; GroupId and
  UserOrGroupId (polymorphic: User or Group) are filterable. "A record exists for every User or
  Group who is a direct member of a public group whose Type field is set to Regular. User records
  that are indirect members of Regular public groups are not listed."
  https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_objects_groupmember.htm

Membership: GroupMember is read only for the public groups found (GroupId IN, 200 ids a query),
not for queues. A public group nested in another public group passes its users on (expanded
here, transitively, cycles ignored). Members that are other kinds of groups (roles, roles and
subordinates, territories, "all internal users") are ignored: their users are not resolved, so
a policy naming such a group only reaches its direct user members.

Ambiguous addresses: Username is unique across Salesforce, FederationIdentifier per org, but
Email is not (an integration user often carries an admin's address). An address that more than
one user claims is kept only by the user whose Username it is, else by the only active claimant,
else by nobody: one address never joins two CRM users into one person. Configuration
(`[directory] people` with a salesforce_id) can still give such an address to one of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from connectors.salesforce.ids import is_salesforce_id, to_18
from plugin.config import Config
from plugin.directory import Person, address_owners
from plugin.directory_store import refresh_from_crm
from plugin.jobs import Job, JobRun, JobRunner

log = logging.getLogger(__name__)

JOB_NAME = "directory.salesforce"
SOURCE = "salesforce"
USER_QUERY = (
    "SELECT Id, Name, Email, Username, FederationIdentifier, IsActive, UserType, UserRoleId FROM User"
)
ROLE_QUERY = "SELECT Id, Name FROM UserRole"
GROUP_QUERY = "SELECT Id, Name, DeveloperName FROM Group WHERE Type = 'Regular'"
MEMBER_QUERY = "SELECT GroupId, UserOrGroupId FROM GroupMember"
GROUPS_PER_MEMBER_QUERY = 200  # keeps each query far below SOQL's 100,000 characters
DEFAULT_INTERVAL = 3600.0

Query = Callable[[str], Iterable[Mapping[str, Any]]]


def looks_like_address(value: str) -> bool:
    """Whether a value is shaped like an e-mail address or UPN (local@domain, no spaces)."""
    local, at, domain = value.partition("@")
    return bool(at and local and domain and "@" not in domain and not any(c.isspace() for c in value))


def member_query(group_ids: list[str]) -> str:
    """The GroupMember SOQL for some groups (ids only: nothing from outside goes in)."""
    ids = ", ".join(f"'{to_18(g)}'" for g in group_ids)
    return f"{MEMBER_QUERY} WHERE GroupId IN ({ids})"


def _id(value: Any) -> str | None:
    text = str(value or "").strip()
    return to_18(text) if is_salesforce_id(text) else None


def _addresses(row: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for name in ("Email", "Username", "FederationIdentifier"):
        value = str(row.get(name) or "").strip().lower()
        if value and looks_like_address(value) and value not in found:
            found.append(value)
    return found


def _group_names(group: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for name in ("Name", "DeveloperName"):
        value = str(group.get(name) or "").strip()
        if value and value.lower() not in (n.lower() for n in names):
            names.append(value)
    return names


def read_people(query: Query) -> tuple[list[Person], dict[str, int]]:
    """Salesforce's users with their public groups, as Persons (in id order), and counts."""
    users: dict[str, Mapping[str, Any]] = {}
    for row in query(USER_QUERY):
        user_id = _id(row.get("Id"))
        if user_id is not None:
            users[user_id] = row
    roles: dict[str, str] = {}  # role id -> Name
    if any(_id(row.get("UserRoleId")) for row in users.values()):
        for row in query(ROLE_QUERY):
            role_id, name = _id(row.get("Id")), str(row.get("Name") or "").strip()
            if role_id is not None and name:
                roles[role_id] = name
    groups: dict[str, Mapping[str, Any]] = {}
    for row in query(GROUP_QUERY):
        group_id = _id(row.get("Id"))
        if group_id is not None:
            groups[group_id] = row

    direct: dict[str, set[str]] = {g: set() for g in groups}  # group -> users and public groups
    ids = sorted(groups)
    for i in range(0, len(ids), GROUPS_PER_MEMBER_QUERY):
        for row in query(member_query(ids[i : i + GROUPS_PER_MEMBER_QUERY])):
            group_id, member = _id(row.get("GroupId")), _id(row.get("UserOrGroupId"))
            if group_id in direct and member is not None and (member in users or member in groups):
                direct[group_id].add(member)

    user_groups: dict[str, set[str]] = {}
    for group_id in groups:
        for user_id in _users_in(group_id, direct, users):
            user_groups.setdefault(user_id, set()).add(group_id)

    owners = address_owners(
        {u: _addresses(row) for u, row in users.items()},
        {u: str(row.get("Username") or "") for u, row in users.items()},
        {u: bool(row.get("IsActive")) for u, row in users.items()},
        "Salesforce",
    )
    people = []
    for user_id, row in sorted(users.items()):
        names = sorted(
            (groups[g] for g in user_groups.get(user_id, ())),
            key=lambda g: (str(g.get("Name") or "").lower(), str(g.get("Id"))),
        )
        role = roles.get(_id(row.get("UserRoleId")) or "")
        people.append(
            Person(
                key=user_id,
                name=str(row.get("Name") or row.get("Username") or user_id).strip(),
                emails=tuple(a for a in _addresses(row) if owners.get(a) == user_id),
                crm_ids=(user_id,),
                groups=tuple(n for g in names for n in _group_names(g)),
                active=bool(row.get("IsActive")),
                user_type=str(row.get("UserType") or ""),
                roles=(role,) if role else (),
            )
        )
    withheld = sum(1 for owner in owners.values() if owner is None)
    counts = {"users": len(users), "groups": len(groups), "ambiguous_addresses": withheld}
    if roles:
        counts["roles"] = len(roles)
    return people, counts


def _users_in(group_id: str, direct: Mapping[str, set[str]], users: Mapping[str, Any]) -> set[str]:
    """A public group's users, through nested public groups (each group visited once)."""
    found: set[str] = set()
    seen = {group_id}
    todo = [group_id]
    while todo:
        for member in direct.get(todo.pop(), ()):
            if member in users:
                found.add(member)
            elif member not in seen:
                seen.add(member)
                todo.append(member)
    return found


class DirectoryRefresh:
    """One refresh: run(state, now) -> JobRun, as a Job wants it."""

    def __init__(self, query: Query, engine: Engine | Callable[[], Engine]) -> None:
        self._query = query
        self._engine = engine

    def run(self, state: Mapping[str, Any], now: datetime) -> JobRun:
        """Read users and groups; make them the directory's "salesforce" rows."""
        people, counts = read_people(self._query)
        return refresh_from_crm(self._engine, SOURCE, "Salesforce", people, counts, now)


def directory_job(config: Config, engine: Engine | None = None) -> Job:
    """The scheduled job; it builds its Salesforce client (and finds its engine) on first use."""
    from connectors.salesforce.wiring import build_salesforce_writer
    from connectors.salesforce.writer import SalesforceWriter
    from plugin.storage import get_engine

    lock = threading.Lock()
    writer: list[SalesforceWriter] = []

    def query(soql: str) -> Iterable[Mapping[str, Any]]:
        with lock:
            if not writer:
                writer.append(build_salesforce_writer(config))
        return writer[0].query(soql)

    refresh = DirectoryRefresh(query, engine or (lambda: get_engine(config.storage.url)))
    interval = config.directory.refresh_seconds or DEFAULT_INTERVAL  # 0: not scheduled
    return Job(name=JOB_NAME, interval_seconds=interval, run=refresh.run)


def refresh_directory_now(
    config: Config, engine: Engine, *, owner: str, now: datetime | None = None
) -> JobRun:
    """Run the refresh once, now, under its job lease (the CLI's `directory --refresh`)."""
    runner = JobRunner(engine, [directory_job(config, engine)], owner=owner)
    return runner.run_now(JOB_NAME, now or datetime.now(UTC))


__all__ = [
    "GROUP_QUERY",
    "JOB_NAME",
    "MEMBER_QUERY",
    "ROLE_QUERY",
    "SOURCE",
    "USER_QUERY",
    "DirectoryRefresh",
    "directory_job",
    "looks_like_address",
    "member_query",
    "read_people",
    "refresh_directory_now",
]
