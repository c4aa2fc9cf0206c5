"""`directory`: everyone the people directory knows (name, e-mails, ids, groups).

`--refresh` first reads the CRM's users (Salesforce: and public groups), now, as the worker's scheduled job
does; `--json` prints one JSON document instead of the table.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from plugin import logs, migrate, registry
from plugin.cli import print_json
from plugin.config import Config
from plugin.crm import CrmError
from plugin.directory import Person
from plugin.directory_store import load_directory, stored_people
from plugin.storage import get_engine
from plugin.worker import worker_id
from plugin.writers import writes_for_real


def run(args: argparse.Namespace, config: Config) -> int:
    """Refresh if asked, then list the directory."""
    engine = get_engine(config.storage.url)
    refreshed: dict[str, Any] | None = None
    crm = getattr(args, "crm", None) or config.crm.primary
    if args.refresh:
        side = registry.crm_side(crm)
        if side.refresh_directory is None:
            print(f"directory --refresh: the {crm} connector reads no users", file=sys.stderr)
            return 2
        if not writes_for_real(config, crm):
            print(
                f"directory --refresh needs the {crm} connection: set {side.needs} (or crm.kind = {crm})",
                file=sys.stderr,
            )
            return 2
        logs.configure(config)
        migrate.upgrade(engine)
        try:
            result = side.refresh_directory(config, engine, owner=worker_id(), now=datetime.now(UTC))
        except (CrmError, RuntimeError) as exc:
            print(f"directory refresh failed: {exc}", file=sys.stderr)
            return 1
        refreshed = dict(result.state)
    else:
        migrate.upgrade(engine)

    directory = load_directory(engine, config)
    from_crm = len(stored_people(engine))
    configured = len(config.directory.people)
    if args.json:
        print_json(
            {
                "people": [_entry(p) for p in _ordered(directory.people)],
                "stored": from_crm,
                "configured": configured,
                **({"refresh": refreshed} if refreshed is not None else {}),
            }
        )
        return 0
    if refreshed is not None:
        groups = f"{refreshed['groups']} public groups " if "groups" in refreshed else ""
        print(
            f"refreshed from {crm.replace('_', ' ').title()}: {refreshed.get('users', 0)} users, "
            f"{groups}({refreshed.get('added', 0)} added, "
            f"{refreshed.get('updated', 0)} updated, {refreshed.get('removed', 0)} removed)"
        )
    people = _ordered(directory.people)
    print(
        f"directory: {len(people)} {'person' if len(people) == 1 else 'people'} "
        f"({from_crm} from the CRM, {configured} configured)"
    )
    for person in people:
        line = f"  {person.name}"
        if not person.active:
            line += " (inactive)"
        if person.user_type and person.user_type != "Standard":
            line += f" [{person.user_type}]"
        print(line)
        if person.emails:
            print(f"      e-mails: {', '.join(person.emails)}")
        if person.crm_ids:
            print(f"      ids:     {', '.join(person.crm_ids)}")
        if person.groups:
            print(f"      groups:  {', '.join(person.groups)}")
    return 0


def _ordered(people: tuple[Person, ...]) -> list[Person]:
    return sorted(people, key=lambda p: (p.name.lower(), p.key))


def _entry(person: Person) -> dict[str, Any]:
    return person.to_json()
