"""Scheduled jobs (pollers, aggregation), run by the workers: one runner at a time per job.

A job reads its stored state (e.g. a poller's watermark), may do I/O, and returns events for the
inbox and its new state. Both are stored in one transaction, so a crash re-runs the job from the
old state and the re-emitted events deduplicate on their delivery ids.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from plugin.config import Config, import_setting
from plugin.events import CrmWrite, Event, Notification
from plugin.inbox import insert_events
from plugin.outbox_rows import TargetOf, legacy_target, notification_row, write_row
from plugin.storage import begin_write, is_postgres, jobs, outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRun:
    """What one run produced: events for the inbox, CRM writes and notifications for the outbox
    (an aggregation's results), and the job's new state — all stored in one transaction."""

    events: Sequence[Event] = ()
    state: Mapping[str, Any] = field(default_factory=dict)
    writes: Sequence[CrmWrite] = ()
    notifications: Sequence[Notification] = ()


@dataclass(frozen=True)
class Job:
    """A named task run every `interval_seconds`: run(state, now) -> JobRun."""

    name: str
    interval_seconds: float
    run: Callable[[Mapping[str, Any], datetime], JobRun]


def builtin_jobs(config: Config) -> list[Job]:
    """The jobs OnRecord ships, as far as the configuration enables them."""
    from plugin import registry
    from plugin.provenance.log import sequencer_jobs

    found: list[Job] = list(sequencer_jobs(config))
    for connector in registry.connectors():
        found.extend(connector.jobs(config))
    if config.leaders.users or config.leaders.roles:
        from plugin.leaders.job import leaders_job

        found.append(leaders_job(config))
    if config.crm_config.enabled:  # disabled: the CRM's configuration records are never read
        from plugin.crm_config_job import crm_config_job

        found.append(crm_config_job(config))
    if config.storage.retention_days > 0:
        from plugin.retention import retention_job

        found.append(retention_job(config))
    return found


def load_jobs(config: Config) -> list[Job]:
    """Resolve `worker.jobs` ("module:attribute" naming a factory(config) -> list of Jobs)."""
    found: list[Job] = []
    for path in config.worker.jobs:
        found.extend(import_setting("worker.jobs", path)(config))
    return found


class JobRunner:
    """Runs due jobs under a per-job lease."""

    def __init__(
        self,
        engine: Engine,
        jobs_: Sequence[Job],
        *,
        owner: str,
        lease_seconds: float = 300,
        target_of: TargetOf = legacy_target,
    ) -> None:
        self.engine = engine
        self.target_of = target_of  # which CRM each write goes to
        self.jobs = list(jobs_)
        self.owner = owner
        self.lease = timedelta(seconds=lease_seconds)

    def run_due(self, now: datetime) -> int:
        """Run every job whose time has come and that nobody else is running; return how many ran."""
        ran = 0
        due = self._due(now)
        for job in self.jobs:
            if job.name not in due:
                continue
            state = self._claim(job, now, force=False)
            if state is None:
                continue
            with contextlib.suppress(Exception):  # logged in _run; one failing job must not stop the rest
                self._run(job, state, now)
            ran += 1
        return ran

    def run_now(self, name: str, now: datetime) -> JobRun:
        """Run one job at once (the CLI's `poll logins`), still under its lease."""
        job = next((j for j in self.jobs if j.name == name), None)
        if job is None:
            raise KeyError(f"no job named {name!r} is configured")
        state = self._claim(job, now, force=True)
        if state is None:
            raise RuntimeError(f"job {name!r} is running elsewhere right now")
        return self._run(job, state, now)

    def _due(self, now: datetime) -> set[str]:
        """The jobs that may be due, read without the write lock: this runs every second, and a
        write transaction per job each time made the inbox writer wait (and paid a commit each).
        `_claim` decides, under the lock; a job never stored is due (its claim stores it)."""
        names = [job.name for job in self.jobs]
        if not names:
            return set()
        query = sa.select(jobs.c.name, jobs.c.next_run_at, jobs.c.lease_until).where(jobs.c.name.in_(names))
        with self.engine.connect() as conn:
            stored = {row.name: row for row in conn.execute(query)}
        return {
            name
            for name in names
            if (row := stored.get(name)) is None
            or (row.next_run_at <= now and (row.lease_until is None or row.lease_until <= now))
        }

    def _claim(self, job: Job, now: datetime, *, force: bool) -> dict[str, Any] | None:
        insert = postgresql.insert if is_postgres(self.engine) else sqlite.insert
        with begin_write(self.engine) as conn:
            conn.execute(
                insert(jobs)
                .values(name=job.name, next_run_at=now, state={})
                .on_conflict_do_nothing(index_elements=["name"])
            )
            free = sa.or_(jobs.c.lease_until.is_(None), jobs.c.lease_until <= now)
            due = free if force else sa.and_(free, jobs.c.next_run_at <= now)
            claimed = conn.execute(
                jobs.update()
                .where(jobs.c.name == job.name, due)
                .values(lease_owner=self.owner, lease_until=now + self.lease)
                .returning(jobs.c.state)
            ).first()
        return dict(claimed.state) if claimed is not None else None

    def _run(self, job: Job, state: dict[str, Any], now: datetime) -> JobRun:
        try:
            result = job.run(state, now)
        except Exception:
            log.exception("job failed", extra={"job": job.name, "reason": "job_failed"})
            self._finish(job, None, now + timedelta(seconds=min(job.interval_seconds, 60)))
            raise
        self._finish(job, result, now + timedelta(seconds=job.interval_seconds))
        return result

    def _finish(self, job: Job, result: JobRun | None, next_run: datetime) -> None:
        with begin_write(self.engine) as conn:
            values: dict[str, Any] = {"lease_owner": None, "lease_until": None, "next_run_at": next_run}
            if result is not None:
                stored_at = datetime.now(UTC)
                insert_events(conn, result.events, stored_at)
                rows = [write_row(w, stored_at, stored_at, None, self.target_of) for w in result.writes]
                rows += [
                    notification_row(n, f"job/{job.name}", stored_at, stored_at) for n in result.notifications
                ]
                if rows:
                    conn.execute(outbox.insert(), rows)
                values["state"] = dict(result.state)
            conn.execute(
                jobs.update()
                .where(jobs.c.name == job.name, jobs.c.lease_owner == self.owner)
                .values(**values)
            )
