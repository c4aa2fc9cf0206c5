"""People: one directory mapping each person's CRM user ids, e-mails / UPNs, name and groups.

Rules compare people only through it: a form's responder ("ana.ruiz@contoso.com"), the approver
Power Automate reports (e-mail or UPN) and the CRM user who changed a record ("005...") are the
same person exactly when the directory says so. Sentences name people by their display name.

Pure and in memory: the worker builds one from configuration (`[directory] people`) and the rows
the directory job keeps from the CRM's user table (`plugin.directory_store`), and hands rules a
snapshot. Identifiers are matched case-insensitively; Salesforce ids in their 15- and
18-character forms are the same id.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plugin.registry import id_match_key, repaired_id

log = logging.getLogger(__name__)


def _id_key(value: str) -> str:
    """How an identifier is looked up: a CRM id by its CRM's match key (Salesforce ids by their
    case-sensitive 15-character stem, even from an 18-character id whose case was lost; GUIDs in
    lower case), the rest lower-cased."""
    value = value.strip()
    return id_match_key(value) or value.lower()


def identifier_key(value: str) -> str:
    """The form an identifier is matched by (two identifiers with equal keys name one person)."""
    return _id_key(value)


@dataclass(frozen=True)
class Person:
    """One person, with every identifier they are known by."""

    key: str  # stable: the Salesforce user id (18) when known, else the first e-mail
    name: str
    emails: tuple[str, ...] = ()  # e-mails and UPNs, lower case
    crm_ids: tuple[str, ...] = ()  # CRM user ids (Salesforce 18-character)
    groups: tuple[str, ...] = ()  # public group / approver group names
    active: bool = True
    user_type: str = ""  # Salesforce UserType ("Standard", "AutomatedProcess", ...)
    roles: tuple[str, ...] = ()  # Salesforce role names (UserRole.Name)

    def identifiers(self) -> tuple[str, ...]:
        """Everything this person can be named by."""
        return (*self.crm_ids, *self.emails)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (the directory table keeps people this way); "roles" only when some."""
        value: dict[str, Any] = {
            "key": self.key,
            "name": self.name,
            "emails": list(self.emails),
            "crm_ids": list(self.crm_ids),
            "groups": list(self.groups),
            "active": self.active,
            "user_type": self.user_type,
        }
        if self.roles:
            value["roles"] = list(self.roles)
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Person:
        """The inverse of to_json."""
        return cls(
            key=str(value["key"]),
            name=str(value["name"]),
            emails=tuple(value.get("emails") or ()),
            crm_ids=tuple(value.get("crm_ids") or ()),
            groups=tuple(value.get("groups") or ()),
            active=bool(value.get("active", True)),
            user_type=str(value.get("user_type") or ""),
            roles=tuple(value.get("roles") or ()),
        )


@dataclass(frozen=True)
class Directory:
    """A snapshot of everyone OnRecord knows. Later entries add to earlier ones of the same person."""

    people: tuple[Person, ...] = ()
    _by_id: dict[str, Person] = field(default_factory=dict, init=False, repr=False, compare=False)
    _by_group: dict[str, tuple[Person, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # People who share any identifier are one person, transitively: a later entry naming an
        # e-mail of one earlier entry and the id of another joins all three, whatever the order.
        given = list(self.people)
        parent = list(range(len(given)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        owner: dict[str, int] = {}
        for i, person in enumerate(given):
            for key in {_id_key(ident) for ident in person.identifiers() if ident.strip()}:
                a, b = root(owner.setdefault(key, i)), root(i)
                if a != b:  # a set's root is its earliest entry, so merging keeps the given order
                    parent[max(a, b)] = min(a, b)
        components: dict[int, list[Person]] = {}
        for i, person in enumerate(given):
            components.setdefault(root(i), []).append(person)
        merged = [
            functools.reduce(_merge, members[1:], _normalise(members[0])) for members in components.values()
        ]

        by_id: dict[str, Person] = {}
        by_group: dict[str, list[Person]] = {}
        for person in merged:
            for ident in person.identifiers():
                by_id[_id_key(ident)] = person
            for group in person.groups:
                by_group.setdefault(group.strip().lower(), []).append(person)
        object.__setattr__(self, "people", tuple(merged))
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_by_group", {g: tuple(p) for g, p in by_group.items()})

    def find(self, identifier: str | None) -> Person | None:
        """The person an e-mail, UPN or CRM user id names, or None."""
        if not identifier:
            return None
        return self._by_id.get(_id_key(identifier))

    def same_person(self, a: str | None, b: str | None) -> bool:
        """Whether two identifiers name one person (equal identifiers always do)."""
        if not a or not b:
            return False
        if _id_key(a) == _id_key(b):
            return True
        pa, pb = self.find(a), self.find(b)
        return pa is not None and pa is pb

    def name_of(self, identifier: str | None) -> str:
        """The person's display name; the identifier itself when unknown ("someone" when empty)."""
        if not identifier:
            return "someone"
        person = self.find(identifier)
        return person.name if person is not None else identifier

    def known_name(self, identifier: str | None) -> str | None:
        """The person's display name, or None when the directory does not know them."""
        person = self.find(identifier)
        return person.name if person is not None else None

    def group(self, name: str) -> tuple[Person, ...]:
        """The members of a group (empty when no such group is known)."""
        return self._by_group.get(name.strip().lower(), ())

    def resolve_approvers(self, names: Iterable[str]) -> tuple[list[Person], list[str]]:
        """Approver entries -> (people, entries naming nobody known). An entry is an identifier of
        a person or a group name; an unknown e-mail or id stands for a person not (yet) in the
        directory, and is returned in the second list so it can still match by equality."""
        people: list[Person] = []
        loose: list[str] = []
        for entry in names:
            person = self.find(entry)
            members = self.group(entry) if person is None else ()
            if person is not None:
                people.append(person)
            elif members:
                people.extend(members)
            else:
                loose.append(entry)
        return people, loose

    def is_one_of(self, identifier: str | None, entries: Iterable[str]) -> bool:
        """Whether the identifier names a person that the approver entries include."""
        if not identifier:
            return False
        people, loose = self.resolve_approvers(entries)
        person = self.find(identifier)
        if person is not None and any(p is person for p in people):
            return True
        return any(self.same_person(identifier, entry) for entry in loose)


def _unique(values: Iterable[str], key: Any = str.lower) -> tuple[str, ...]:
    """Blank values dropped, and the first of each set of equal ones (per `key`) kept."""
    seen: dict[str, str] = {}
    for value in values:
        value = value.strip()
        if value:
            seen.setdefault(key(value), value)
    return tuple(seen.values())


def _crm_id(value: str) -> str:
    """A CRM user id as stored: canonical (Salesforce ids in 18 characters, GUIDs lower case)."""
    return repaired_id(value.strip())


def _normalise(person: Person) -> Person:
    """E-mails lower case, ids 18 characters, no repeats (groups compared case-insensitively)."""
    return Person(
        key=person.key,
        name=person.name,
        emails=_unique(e.lower() for e in person.emails),
        crm_ids=_unique((_crm_id(i) for i in person.crm_ids), key=_id_key),
        groups=_unique(person.groups),
        active=person.active,
        user_type=person.user_type,
        roles=_unique(person.roles),
    )


def _merge(a: Person, b: Person) -> Person:
    """b's entry added to a's: ids, e-mails, groups and roles joined; b's name and user type win when set;
    inactive when either says so (configuration, which never says, cannot re-activate a
    deactivated CRM user)."""
    b = _normalise(b)
    crm_ids = _unique((*a.crm_ids, *b.crm_ids), key=_id_key)
    return Person(
        key=crm_ids[0] if crm_ids else a.key,
        name=b.name or a.name,
        emails=_unique((*a.emails, *b.emails)),
        crm_ids=crm_ids,
        groups=_unique((*a.groups, *b.groups)),
        active=a.active and b.active,
        user_type=b.user_type or a.user_type,
        roles=_unique((*a.roles, *b.roles)),
    )


def address_owners(
    addresses: Mapping[str, Iterable[str]],
    sign_in_name: Mapping[str, str],
    active: Mapping[str, bool],
    crm: str,
) -> dict[str, str | None]:
    """Each e-mail address / UPN -> the one CRM user it identifies, or None when it is ambiguous.

    A CRM's e-mail column is not unique (an integration user often carries an admin's address),
    and one address must never join two users into one person. So an address several users carry
    is kept only by the user who signs in with it (`sign_in_name`: Salesforce's Username,
    Dataverse's domainname; unique in the CRM), else by the only active claimant, else by nobody.
    `addresses`: user id -> the addresses that user carries (lower case)."""
    claims: dict[str, list[str]] = {}
    for user_id in sorted(addresses):
        for address in addresses[user_id]:
            claims.setdefault(address, []).append(user_id)
    owners: dict[str, str | None] = {}
    for address, claimants in claims.items():
        if len(claimants) == 1:
            owners[address] = claimants[0]
            continue
        signs_in = [u for u in claimants if sign_in_name.get(u, "").strip().lower() == address]
        still_active = [u for u in claimants if active.get(u)]
        owner = signs_in[0] if signs_in else still_active[0] if len(still_active) == 1 else None
        owners[address] = owner
        log.info(
            f"directory: an address several {crm} users carry",
            extra={"users": claimants, "kept_by": owner, "reason": "ambiguous_address"},
        )
    return owners
