"""`worker`: the rules worker and the dispatcher, each in its own thread, until told to stop."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from plugin import logs, migrate, registry
from plugin.config import Config
from plugin.crm_config_job import JOB_NAME as CRM_CONFIG_JOB
from plugin.crm_config_job import CrmConfigFollower, effective_config, stored_version
from plugin.dispatch import Dispatcher, Notifier, no_subscribers
from plugin.jobs import JobRunner, load_jobs
from plugin.rules import load_rules
from plugin.storage import checkpoint_wal, get_engine
from plugin.worker import LeaseLost, Worker, worker_id
from plugin.writers import build_writer, build_writers, target_resolver

log = logging.getLogger("plugin.worker")


def build(config: Config) -> tuple[Worker, Dispatcher, JobRunner]:
    """A worker, a dispatcher and a job runner for this configuration (with [crm_config]
    enabled, the rules and jobs of the CRM's last good configuration stored by its job)."""
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    owner = worker_id()
    w = config.worker
    in_force = effective_config(config, engine)
    target_of = target_resolver(in_force)
    worker = Worker(
        engine,
        load_rules(in_force),
        batch_size=w.batch_size,
        lease_seconds=w.lease_seconds,
        owner=owner,
        target_of=target_of,
    )
    d = config.dispatch
    dispatcher = Dispatcher(
        engine,
        build_writer(config, engine),
        owner=owner,
        batch_size=d.batch_size,
        claim_size=d.claim_size,
        max_attempts=d.max_attempts,
        backoff_base_seconds=d.backoff_base_seconds,
        backoff_max_seconds=d.backoff_max_seconds,
        lease_seconds=d.lease_seconds,
        notifier=_notifier(config, engine),
        writers=build_writers(config, engine),
    )
    return worker, dispatcher, JobRunner(engine, load_jobs(in_force), owner=owner, target_of=target_of)


def _notifier(config: Config, engine: Engine) -> Notifier:
    """The connector that delivers notifications (Power Automate's subscriptions), if any."""
    for connector in registry.connectors():
        if connector.notifier is not None:
            return connector.notifier(config, engine)
    return no_subscribers


def run(args: argparse.Namespace, config: Config) -> int:
    """Loop until SIGTERM/SIGINT (or, with --once, until there is nothing left to do)."""
    logs.configure(config)
    if config.worker.nice:
        # The receive path acknowledges senders; the worker can catch up. On the machine they
        # share, the scheduler gives the gunicorn workers the cores first (docs/benchmarks.md).
        os.nice(config.worker.nice)
    worker, dispatcher, jobs = build(config)
    gc.freeze()  # long-lived objects out of the collector's way (see serve's _freeze_heap)
    follow_keys = KeyFollower(effective_config(config, worker.engine), worker)  # rebuilds what is in force
    follow_config = config_follower(config, worker, jobs, follow_keys)
    if args.once:
        jobs.run_due(datetime.now(UTC))
        follow_config.check(force=True)
        while worker.run_once().done or dispatcher.run_once().calls:
            pass
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    interval = config.worker.poll_interval_seconds
    parent = args.parent_pid

    def orphaned() -> bool:
        return parent is not None and os.getppid() != parent

    read_crm_config_now(jobs)  # at start, not only after the first refresh_seconds
    follow_config.check(force=True)

    def checkpoint_pass() -> bool:
        checkpoint_wal(worker.engine)
        return False  # then wait a second, whatever it copied

    def rules_pass() -> int:
        follow_config.check()
        follow_keys.check()
        return worker.run_once().done

    threads = [
        threading.Thread(target=_loop, args=("rules", rules_pass, stop, interval), daemon=True),
        threading.Thread(
            target=_loop, args=("dispatch", lambda: dispatcher.run_once().calls, stop, interval), daemon=True
        ),
        threading.Thread(
            target=_loop, args=("jobs", lambda: jobs.run_due(datetime.now(UTC)), stop, 1.0), daemon=True
        ),
        # The WAL's checkpoints, here rather than in the commits of the inbox writer (storage.py)
        threading.Thread(target=_loop, args=("checkpoint", checkpoint_pass, stop, 1.0), daemon=True),
    ]
    for t in threads:
        t.start()
    log.info("worker started", extra={"owner": worker.owner, "rules": [r.name for r in worker.rules]})
    while not stop.wait(1.0):
        if orphaned():  # `serve` died (even by kill -9): do not linger
            log.warning("parent process is gone; stopping")
            stop.set()
    for t in threads:
        t.join(timeout=30)
    log.info("worker stopped")
    return 0


def config_follower(config: Config, worker: Worker, jobs: JobRunner, keys: KeyFollower) -> CrmConfigFollower:
    """Applies each configuration version the crm_config job stores: the worker's rules and
    write targets, the jobs (leaders score with the CRM's leaders and weights) and what a key
    rotation rebuilds from are swapped for the new configuration's."""

    def rebuild(applied: Config) -> None:
        target_of = target_resolver(applied)  # a newly governed object's writes go to its CRM
        worker.rules = load_rules(applied)
        worker.target_of = target_of
        jobs.target_of = target_of
        jobs.jobs = load_jobs(applied)  # a new list: the jobs thread finishes the one it holds
        keys.config = applied

    follower = CrmConfigFollower(config, worker.engine, rebuild)
    follower.version = stored_version(worker.engine) if config.crm_config.enabled else ""  # build applied it
    return follower


def read_crm_config_now(jobs: JobRunner) -> None:
    """Run the crm_config job once at start (when configured and nobody else is running it)."""
    if not any(job.name == CRM_CONFIG_JOB for job in jobs.jobs):
        return
    try:
        jobs.run_now(CRM_CONFIG_JOB, datetime.now(UTC))
    except Exception:  # the CRM may be down at start: the stored version stays, the job retries
        log.exception(
            "reading the configuration from the CRM at start failed", extra={"reason": "crm_config_failed"}
        )


class KeyFollower:
    """Rebuilds the rules when `keys rotate` made another signing key active.

    The provenance rule holds its key (that keeps it a pure function); rotation deletes the old
    private key, so a worker must not go on signing with the copy it has in memory.
    """

    CHECK_EVERY_SECONDS = 2.0

    def __init__(self, config: Config, worker: Worker) -> None:
        self.config = config
        self.worker = worker
        self._next_check = 0.0
        self._kid = self._active_kid()

    def _active_kid(self) -> str | None:
        if not self.config.governed:
            return None
        from plugin.provenance.keys import KeyStoreError
        from plugin.provenance.rule import key_store

        try:
            kid: str = key_store(self.config).index()["active"]
        except (KeyStoreError, KeyError):
            return None
        return kid

    def check(self, force: bool = False) -> bool:
        """Reload the rules if the active key changed; whether it did."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.CHECK_EVERY_SECONDS
        kid = self._active_kid()
        if kid == self._kid:
            return False
        self.worker.rules = load_rules(self.config)
        self._kid = kid
        log.info("signing key rotated; rules reloaded", extra={"kid": kid})
        return True


def _loop(name: str, step: Callable[[], Any], stop: threading.Event, interval: float) -> None:
    """Run `step` until stopped; sleep only when it found nothing to do; survive its errors."""
    backoff = interval
    while not stop.is_set():
        try:
            busy = step()
            backoff = interval
        except LeaseLost as exc:  # another worker got there first: nothing was written, go again
            log.warning("%s pass yielded: %s", name, exc, extra={"reason": "lease_lost"})
            busy = True
        except Exception:  # keep going: the database may be back in a moment
            log.exception("%s pass failed", name, extra={"reason": f"{name}_failed"})
            busy = False
            backoff = min(backoff * 2, 30.0)
        if not busy:
            stop.wait(backoff)
