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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.salesforce.ids import is_salesforce_id


def _id_key(value: str) -> str:
    """How an identifier is looked up: Salesforce ids by their case-sensitive 15-char stem."""
    value = value.strip()
    if is_salesforce_id(value):
        return "sf:" + value[:15]
    return value.lower()


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

    def identifiers(self) -> tuple[str, ...]:
        """Everything this person can be named by."""
        return (*self.crm_ids, *self.emails)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (the directory table keeps people this way)."""
        return {
            "key": self.key,
            "name": self.name,
            "emails": list(self.emails),
            "crm_ids": list(self.crm_ids),
            "groups": list(self.groups),
            "active": self.active,
            "user_type": self.user_type,
        }

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
        merged: list[Person] = []
        by_id: dict[str, Person] = {}
        for person in self.people:
            known = next((by_id[k] for k in map(_id_key, person.identifiers()) if k in by_id), None)
            if known is not None:
                merged.remove(known)
                person = _merge(known, person)
            merged.append(person)
            for ident in person.identifiers():
                by_id[_id_key(ident)] = person
        by_group: dict[str, list[Person]] = {}
        for person in merged:
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


def _merge(a: Person, b: Person) -> Person:
    def union(x: tuple[str, ...], y: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*x, *y)))

    crm_ids = union(a.crm_ids, b.crm_ids)
    return Person(
        key=crm_ids[0] if crm_ids else a.key,
        name=b.name or a.name,
        emails=union(a.emails, b.emails),
        crm_ids=crm_ids,
        groups=union(a.groups, b.groups),
        active=b.active,
        user_type=b.user_type or a.user_type,
    )
