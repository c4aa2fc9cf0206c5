"""The people directory's storage: the `directory` table, and building a `Directory` from it.

The table holds what a source knows about people (the Salesforce user job, `connectors.salesforce.
users`, writes source "salesforce"), one row per person as `Person.to_json()`. A Directory is
those rows, then the people of `[directory] people`: configuration comes last, so it adds
e-mails, ids and groups to the CRM's people and its names win (`Directory` merges later entries
into earlier ones of the same person).

`DirectoryCache` is what the worker asks on every event: a snapshot, re-read only when the table
changed (count and newest `updated_at`, checked at most every `max_age_seconds`).
`replace_people` writes a source's full set in one transaction and keeps `updated_at` strictly
increasing across changes, so that check cannot miss one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from plugin.config import Config, DirectoryPerson
from plugin.directory import Directory, Person
from plugin.jobs import JobRun
from plugin.registry import canonical_id
from plugin.storage import begin_write, directory, is_postgres

if TYPE_CHECKING:
    from plugin.runtime import Runtime

log = logging.getLogger(__name__)

_CHUNK = 500  # keys per DELETE ... IN (...)


def configured_person(entry: DirectoryPerson) -> Person:
    """A `[directory] people` entry as a Person; its key is its Salesforce id (18 characters),
    else its first e-mail, else its name."""
    sf_id = entry.salesforce_id.strip()
    sf_id = canonical_id(sf_id) or sf_id
    key = sf_id or (entry.emails[0] if entry.emails else f"name:{entry.name.strip().lower()}")
    return Person(
        key=key,
        name=entry.name.strip(),
        emails=tuple(entry.emails),
        crm_ids=(sf_id,) if sf_id else (),
        groups=tuple(g.strip() for g in entry.groups if g.strip()),
    )


def stored_people(engine: Engine, source: str | None = None) -> list[Person]:
    """The people in the table (of one source, or all), in key order."""
    query = sa.select(directory.c.data).order_by(directory.c.source, directory.c.key)
    if source is not None:
        query = query.where(directory.c.source == source)
    with engine.connect() as conn:
        return [Person.from_json(data) for data in conn.execute(query).scalars()]


def load_directory(engine: Engine, config: Config) -> Directory:
    """The CRM's people, then the configured ones, as one Directory."""
    configured = [configured_person(p) for p in config.directory.people]
    return Directory((*stored_people(engine), *configured))


@dataclass(frozen=True)
class DirectoryChange:
    """What replace_people did."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return (
            f"{self.added} added, {self.updated} updated, {self.removed} removed, {self.unchanged} unchanged"
        )


def refresh_from_crm(
    engine: Engine | Callable[[], Engine],
    source: str,
    crm: str,
    people: Iterable[Person],
    counts: dict[str, int],
    now: datetime,
) -> JobRun:
    """What a CRM's directory job does with the people it read: make them the directory's
    `source` rows, log it, and return the job's new state (what was read, and what changed)."""
    engine = engine if isinstance(engine, Engine) else engine()
    change = replace_people(engine, source, people, now=now)
    log.info(
        f"directory refreshed from {crm}",
        extra={**counts, "change": str(change), "reason": "directory_refreshed"},
    )
    state = {**counts, "refreshed_at": now.isoformat(), "added": change.added}
    return JobRun(state={**state, "updated": change.updated, "removed": change.removed})


def replace_people(
    engine: Engine, source: str, people: Iterable[Person], *, now: datetime | None = None
) -> DirectoryChange:
    """Make `people` the whole of `source`'s rows, in one transaction: new people inserted,
    changed ones updated, the source's others deleted. Rows that did not change keep their
    updated_at, so a DirectoryCache reloads only on a real change."""
    wanted = {p.key: p.to_json() for p in people}  # a key given twice: the last one
    insert = postgresql.insert if is_postgres(engine) else sqlite.insert
    with begin_write(engine) as conn:
        rows = conn.execute(
            sa.select(directory.c.key, directory.c.data).where(directory.c.source == source)
        ).all()
        existing = {r.key: r.data for r in rows}
        # A key another source holds is taken over (the upsert), and counts as added.
        changed = [k for k, data in wanted.items() if existing.get(k) != data]
        gone = [k for k in existing if k not in wanted]
        if changed:
            stamp = _next_stamp(conn, now or datetime.now(UTC))
            stmt = insert(directory)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["key"],
                    set_={
                        "source": stmt.excluded.source,
                        "data": stmt.excluded.data,
                        "updated_at": stmt.excluded.updated_at,
                    },
                ),
                [{"key": k, "source": source, "data": wanted[k], "updated_at": stamp} for k in changed],
            )
        for i in range(0, len(gone), _CHUNK):
            conn.execute(
                directory.delete().where(
                    directory.c.source == source, directory.c.key.in_(gone[i : i + _CHUNK])
                )
            )
    added = sum(1 for k in changed if k not in existing)
    return DirectoryChange(
        added=added,
        updated=len(changed) - added,
        removed=len(gone),
        unchanged=len(wanted) - len(changed),
    )


def _next_stamp(conn: sa.Connection, now: datetime) -> datetime:
    """`now`, or just after the newest stored updated_at if that is later (clocks differ between
    hosts): a change always moves max(updated_at) forward."""
    newest = conn.execute(sa.select(sa.func.max(directory.c.updated_at))).scalar()
    if newest is None:
        return now
    if newest.tzinfo is None:  # SQLite's func.max returns the stored text, untyped
        newest = _parse_stamp(newest)
    return max(now, newest + timedelta(microseconds=1))


def _parse_stamp(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


Stamp = tuple[int, str | None]


def directory_stamp(engine: Engine) -> Stamp:
    """A cheap fingerprint of the table: row count and newest updated_at."""
    with engine.connect() as conn:
        count, newest = conn.execute(
            sa.select(sa.func.count(), sa.func.max(directory.c.updated_at)).select_from(directory)
        ).one()
    return int(count), None if newest is None else str(newest)


class DirectoryCache:
    """The current Directory for a process: `current()` is safe to call on every event.

    Within `max_age_seconds` of the last check it returns the snapshot it has without touching
    the database; after that one aggregate query tells whether the table changed, and only then
    is the directory rebuilt. If that check fails (the database is briefly away), the last
    snapshot is kept and the error logged; with no snapshot yet the error is raised.
    """

    def __init__(
        self,
        engine: Engine,
        config: Config,
        max_age_seconds: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.config = config
        self.max_age = max_age_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._directory: Directory | None = None
        self._stamp: Stamp | None = None
        self._checked = 0.0
        self.loads = 0  # how many times the directory was (re)built, for tests and metrics

    def current(self) -> Directory:
        """The directory as of at most max_age seconds ago."""
        with self._lock:
            now = self._clock()
            if self._directory is not None and now - self._checked < self.max_age:
                return self._directory
            try:
                stamp = directory_stamp(self.engine)
                if self._directory is None or stamp != self._stamp:
                    # Stamp first, then rows: a change in between is loaded now and seen
                    # again (as a changed stamp) at the next check, never missed.
                    self._directory = load_directory(self.engine, self.config)
                    self._stamp = stamp
                    self.loads += 1
            except sa.exc.DBAPIError:
                if self._directory is None:
                    raise
                log.warning("directory check failed; keeping the last snapshot", exc_info=True)
            self._checked = now
            return self._directory

    def invalidate(self) -> None:
        """Check the table at the next current() call, whatever max_age says."""
        with self._lock:
            self._checked = float("-inf")


__all__ = [
    "DirectoryCache",
    "DirectoryChange",
    "configured_person",
    "directory_stamp",
    "load_directory",
    "replace_people",
    "stored_people",
]


def current_directory(rt: Runtime) -> Directory:
    """The directory for an HTTP request: one cache per app, shared by its request handlers."""
    cache = rt.extensions.get("directory")
    if cache is None:
        cache = rt.extensions.setdefault("directory", DirectoryCache(rt.engine, rt.config))
    current: Directory = cache.current()
    return current
