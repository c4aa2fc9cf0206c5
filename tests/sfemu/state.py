"""The emulated org: users, connected apps, sessions, records, API usage, faults and the call log.

Everything here is guarded by one re-entrant lock, so tests may inject faults while the server
threads answer requests.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from tests.sfemu.ids import IdFactory, checksum, to18


def sf_datetime(value: dt.datetime | None = None) -> str:
    """Salesforce's JSON datetime format: 2024-01-31T10:00:00.000+0000."""
    value = (value or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


@dataclass
class Consumer:
    """A connected app (or external client app) as the token endpoint sees it."""

    client_id: str
    public_key: RSAPublicKey | None = None  # from the uploaded certificate (JWT bearer)
    client_secret: str | None = None
    run_as: str | None = None  # client credentials flow: the integration user's username
    approved_users: frozenset[str] | None = None  # JWT: pre-authorized usernames; None = all


@dataclass(frozen=True)
class Session:
    token: str
    user_id: str
    username: str
    client_id: str


@dataclass(frozen=True)
class Call:
    """One request as the emulator saw it (for tests' inspection)."""

    method: str
    path: str
    status: int
    records: int = 0  # records in an sObject Collections body or single-record write
    counted: bool = False  # whether it counted against the daily API limit


@dataclass
class ObjectDef:
    name: str
    fields: dict[str, str] = field(default_factory=dict)  # lower -> canonical
    strict: bool = False  # unknown fields are INVALID_FIELD
    external_ids: set[str] | None = None  # lower-case names; None = any field may be used
    validation_rules: dict[str, Any] = field(default_factory=dict)  # name -> formula.ValidationRule
    # custom metadata types: metadata relationship field (lower) -> the type it points at
    relationships: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordFault:
    status_code: str
    message: str
    fields: tuple[str, ...] = ()


@dataclass
class Faults:
    fail_next: list[tuple[int, str, str]] = field(default_factory=list)  # status, errorCode, message
    delay_seconds: float = 0.0
    delay_count: int | None = None  # None: every request
    locks: dict[tuple[str, str], int] = field(default_factory=dict)  # (object lower, key) -> attempts
    rejects: dict[tuple[str, str], RecordFault] = field(default_factory=dict)


STANDARD_FIELDS = (
    "Id",
    "IsDeleted",
    "CreatedDate",
    "CreatedById",
    "LastModifiedDate",
    "LastModifiedById",
    "SystemModstamp",
)
LOGIN_HISTORY_FIELDS = ("UserId", "LoginTime", "LoginType", "Application", "Status", "SourceIp", "Platform")
USER_FIELDS = (
    "Id",
    "Username",
    "Name",
    "Email",
    "FederationIdentifier",
    "IsActive",
    "UserType",
    "UserRoleId",
)
# The standard fields of every custom metadata record (Object Reference, "Custom Metadata Type__mdt"),
# besides the audit fields every record has.
METADATA_RECORD_FIELDS = (
    "DeveloperName",
    "MasterLabel",
    "Label",
    "Language",
    "NamespacePrefix",
    "QualifiedApiName",
)
USER_ROLE_FIELDS = ("Name", "DeveloperName", "ParentRoleId")
GROUP_FIELDS = ("Name", "DeveloperName", "Type")
GROUP_MEMBER_FIELDS = ("GroupId", "UserOrGroupId")
# Key prefixes tests/sfemu/ids.py does not know (it would hand out a custom object's a0X).
EXTRA_KEY_PREFIXES = {"GroupMember": "011", "UserRole": "00E"}


class OrgState:
    def __init__(self, *, api_limit: int, api_used: int = 0) -> None:
        self.lock = threading.RLock()
        self.ids = IdFactory()
        self.org_id = self.ids.new("Organization")
        self.api_limit = api_limit
        self.api_used = api_used
        self.users: dict[str, str] = {}  # username -> user id
        self.consumers: dict[str, Consumer] = {}
        self.sessions: dict[str, Session] = {}
        self.objects: dict[str, ObjectDef] = {}  # lower name -> def
        self.records: dict[str, dict[str, dict[str, Any]]] = {}  # canonical object -> id -> fields
        self.deleted: set[str] = set()
        self.cursors: dict[str, list[dict[str, Any]]] = {}
        self.faults = Faults()
        self.calls: list[Call] = []
        self.define_object("LoginHistory", LOGIN_HISTORY_FIELDS, strict=True)
        self.define_object("User", USER_FIELDS, strict=False)
        self.define_object("Group", GROUP_FIELDS, strict=True)
        self.define_object("GroupMember", GROUP_MEMBER_FIELDS, strict=True)
        self.define_object("UserRole", USER_ROLE_FIELDS, strict=True)
        for standard in ("Account", "Contact", "Opportunity", "Lead", "Case"):
            self.define_object(standard, ["Name"])

    # --- schema -------------------------------------------------------------------------------

    def define_object(
        self,
        name: str,
        fields: list[str] | tuple[str, ...] | None = None,
        *,
        strict: bool = False,
        external_ids: list[str] | tuple[str, ...] | None = None,
    ) -> ObjectDef:
        with self.lock:
            odef = self.objects.get(name.lower()) or ObjectDef(name)
            for f in (*STANDARD_FIELDS, *(fields or ())):
                odef.fields.setdefault(f.lower(), f)
            odef.strict = strict
            if external_ids is not None:
                odef.external_ids = {e.lower() for e in external_ids}
                for e in external_ids:
                    odef.fields.setdefault(e.lower(), e)
            self.objects[name.lower()] = odef
            self.records.setdefault(odef.name, {})
            return odef

    def object_def(self, name: str, *, create: bool) -> ObjectDef | None:
        with self.lock:
            odef = self.objects.get(name.lower())
            if odef is None and create:
                odef = self.define_object(name)
            return odef

    def field_name(self, odef: ObjectDef, name: str) -> str | None:
        """Canonical spelling of a field, learning new fields of lenient objects; None if unknown."""
        canonical = odef.fields.get(name.lower())
        if canonical is None and not odef.strict:
            odef.fields[name.lower()] = canonical = name
        return canonical

    # --- users, apps, sessions -----------------------------------------------------------------

    def add_user(
        self,
        username: str,
        *,
        name: str | None = None,
        email: str | None = None,
        federation_identifier: str | None = None,
        user_type: str = "Standard",
        active: bool = True,
        role_id: str | None = None,
    ) -> str:
        """Create a user (if new; an existing one is returned as it is); return its id. Email
        defaults to the username, Name to the username's local part; role_id is a UserRole's id."""
        with self.lock:
            if username not in self.users:
                user_id = self.ids.new("User")
                self.users[username] = user_id
                self.records["User"][user_id] = {
                    "Id": user_id,
                    "Username": username,
                    "Name": name if name is not None else username.split("@")[0],
                    "Email": email if email is not None else username,
                    "FederationIdentifier": federation_identifier,
                    "IsActive": active,
                    "UserType": user_type,
                    "UserRoleId": to18(role_id) if role_id else None,
                }
            return self.users[username]

    def add_role(self, name: str, *, developer_name: str | None = None, parent_id: str | None = None) -> str:
        """Create a UserRole (a place in the role hierarchy); return its id. DeveloperName defaults
        to the name with underscores. Give users it with add_user(role_id=) or set_user(UserRoleId=)."""
        with self.lock:
            values = {
                "Name": name,
                "DeveloperName": developer_name or "_".join(name.split()),
                "ParentRoleId": to18(parent_id) if parent_id else None,
            }
            return self.insert(self.objects["userrole"], values, self._admin_id())

    def set_user(self, user_id: str, **fields: Any) -> None:
        """Change a user's fields (e.g. IsActive=False to deactivate, as Salesforce never deletes)."""
        with self.lock:
            self.records["User"][to18(user_id)].update(fields)

    def add_group(
        self,
        name: str,
        members: list[str] | tuple[str, ...] = (),
        *,
        developer_name: str | None = None,
        group_type: str = "Regular",
    ) -> str:
        """Create a Group (Type "Regular" is a public group) with these users or groups as direct
        members; return its id. DeveloperName defaults to the name with underscores."""
        with self.lock:
            group_id = self.insert(
                self.objects["group"],
                {
                    "Name": name,
                    "DeveloperName": developer_name or "_".join(name.split()),
                    "Type": group_type,
                },
                self._admin_id(),
            )
            for member in members:
                self.add_group_member(group_id, member)
            return group_id

    def add_group_member(self, group_id: str, user_or_group_id: str) -> str:
        """Make a user or group a direct member of a group (once); return the GroupMember id."""
        with self.lock:
            for row in self.records["GroupMember"].values():
                if row["GroupId"] == to18(group_id) and row["UserOrGroupId"] == to18(user_or_group_id):
                    return str(row["Id"])
            values = {"GroupId": to18(group_id), "UserOrGroupId": to18(user_or_group_id)}
            return self.insert(self.objects["groupmember"], values, self._admin_id())

    def remove_group_member(self, group_id: str, user_or_group_id: str) -> bool:
        """Take a member out of a group; whether it was one."""
        with self.lock:
            rows = self.records["GroupMember"]
            found = [
                k
                for k, row in rows.items()
                if row["GroupId"] == to18(group_id) and row["UserOrGroupId"] == to18(user_or_group_id)
            ]
            for key in found:
                del rows[key]
                self.deleted.add(key)
            return bool(found)

    def _admin_id(self) -> str:
        """Who set-up records are created by: the first user (the emulator's integration user)."""
        return next(iter(self.users.values()), "")

    def new_id(self, sobject: str) -> str:
        """A new record id, with the object's real key prefix where ids.py lacks it."""
        prefix = EXTRA_KEY_PREFIXES.get(sobject)
        if prefix is None:
            return self.ids.new(sobject)
        id15 = prefix + self.ids.new("Group")[3:15]  # the factory's numbering, another prefix
        return id15 + checksum(id15)

    def new_session(self, username: str, client_id: str) -> Session:
        with self.lock:
            token = f"{self.org_id[:15]}!AQ{secrets.token_urlsafe(48)}"
            session = Session(token, self.users[username], username, client_id)
            self.sessions[token] = session
            return session

    # --- records -------------------------------------------------------------------------------

    def insert(self, odef: ObjectDef, values: dict[str, Any], user_id: str) -> str:
        """Store a new record (values already canonical); return its 18-character id."""
        with self.lock:
            record_id = self.new_id(odef.name)
            now = sf_datetime()
            record = {
                "Id": record_id,
                "IsDeleted": False,
                "CreatedDate": now,
                "CreatedById": user_id,
                "LastModifiedDate": now,
                "LastModifiedById": user_id,
                "SystemModstamp": now,
            }
            record.update({k: v for k, v in values.items() if k != "Id"})
            self.records.setdefault(odef.name, {})[record_id] = record
            return record_id

    def update(self, odef: ObjectDef, record_id: str, values: dict[str, Any], user_id: str) -> None:
        with self.lock:
            record = self.records[odef.name][record_id]
            record.update({k: v for k, v in values.items() if k != "Id"})
            now = sf_datetime()
            record.update(LastModifiedDate=now, LastModifiedById=user_id, SystemModstamp=now)

    def find(self, odef: ObjectDef, record_id: str) -> dict[str, Any] | None:
        try:
            key = to18(record_id)
        except ValueError:
            return None
        return self.records.get(odef.name, {}).get(key)

    def find_by(self, odef: ObjectDef, field_name: str, value: Any) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.records.get(odef.name, {}).values()
            return [r for r in rows if r.get(field_name) is not None and str(r.get(field_name)) == str(value)]

    # --- custom metadata records ----------------------------------------------------------------

    def put_metadata_record(
        self, type_name: str, developer_name: str, values: dict[str, Any], user_id: str
    ) -> str:
        """Create or change a custom metadata record (as an admin does in Setup: the API cannot
        write them), found by DeveloperName; return its id. Each save stamps LastModifiedById and
        SystemModstamp. Values are stored as given: a metadata relationship holds the related
        record's id, as SOQL returns it."""
        with self.lock:
            odef = self.object_def(type_name, create=True)
            assert odef is not None
            canonical: dict[str, Any] = {}
            for key, value in values.items():
                name = self.field_name(odef, key)
                if name is None:
                    raise ValueError(f"no field {key} on {odef.name}")
                canonical[name] = value
            for row in self.records.get(odef.name, {}).values():
                if str(row.get("DeveloperName", "")).lower() == developer_name.lower():
                    self.update(odef, row["Id"], canonical, user_id)
                    return str(row["Id"])
            label = developer_name.replace("_", " ")
            standard = {
                "DeveloperName": developer_name,
                "MasterLabel": label,
                "Label": label,
                "QualifiedApiName": developer_name,
                "NamespacePrefix": None,
                "Language": "en_US",
            }
            return self.insert(odef, {**standard, **canonical}, user_id)

    def delete_metadata_record(self, type_name: str, developer_name: str) -> bool:
        """Delete a custom metadata record by DeveloperName; whether there was one."""
        with self.lock:
            odef = self.object_def(type_name, create=False)
            rows = self.records.get(odef.name, {}) if odef else {}
            found = [
                k
                for k, r in rows.items()
                if str(r.get("DeveloperName", "")).lower() == developer_name.lower()
            ]
            for key in found:
                del rows[key]
                self.deleted.add(key)
            return bool(found)

    # --- faults --------------------------------------------------------------------------------

    def record_fault(self, odef: ObjectDef, keys: list[str]) -> RecordFault | None:
        """The fault injected for a record addressed by any of `keys` (id or external id value)."""
        with self.lock:
            for key in keys:
                fault = self.faults.rejects.get((odef.name.lower(), key))
                if fault is not None:
                    return fault
            for key in keys:
                remaining = self.faults.locks.get((odef.name.lower(), key), 0)
                if remaining > 0:
                    self.faults.locks[(odef.name.lower(), key)] = remaining - 1
                    return RecordFault(
                        "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 records"
                    )
            return None

    def take_delay(self) -> float:
        with self.lock:
            f = self.faults
            if f.delay_seconds <= 0 or f.delay_count == 0:
                return 0.0
            if f.delay_count is not None:
                f.delay_count -= 1
            return f.delay_seconds

    def take_failure(self) -> tuple[int, str, str] | None:
        with self.lock:
            return self.faults.fail_next.pop(0) if self.faults.fail_next else None

    def log(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)
