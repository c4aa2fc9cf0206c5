"""Prometheus metrics, correct under several gunicorn workers (multiprocess mode).

`serve` sets PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client, so every
gunicorn worker and the rules worker write to shared files; /metrics merges them. Gauges
that describe the database (inbox lag, outbox depth, dead letters) are read at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

REQUESTS = Counter("onrecord_requests_total", "Requests received, by source", ["source"])
ACCEPTED = Counter("onrecord_events_accepted_total", "Events newly stored in the inbox", ["source"])
DUPLICATES = Counter("onrecord_events_duplicate_total", "Re-delivered events acknowledged again", ["source"])
REJECTED = Counter("onrecord_requests_rejected_total", "Requests refused, by reason", ["source", "reason"])
IGNORED = Counter("onrecord_events_ignored_total", "Known events OnRecord ignores", ["source", "reason"])
PROCESSED = Counter("onrecord_events_processed_total", "Inbox events applied by the rules", ["kind"])
PARKED = Counter("onrecord_events_parked_total", "Inbox events parked because a rule raised", ["kind"])
CRM_CALLS = Counter("onrecord_crm_calls_total", "Calls to the CRM writer", ["writer", "object", "outcome"])
CRM_RECORDS_PER_CALL = Histogram(
    "onrecord_crm_records_per_call",
    "Records sent per CRM call",
    ["writer"],
    buckets=(1, 5, 10, 25, 50, 100, 150, 200),
)
# Set by the dispatcher (the process that talks to the CRM); the most recent value wins.
CRM_API_USED = Gauge(
    "onrecord_crm_api_used",
    "The org's API calls used today (Sforce-Limit-Info)",
    multiprocess_mode="mostrecent",
)
CRM_API_LIMIT = Gauge(
    "onrecord_crm_api_limit", "The org's daily API call limit", multiprocess_mode="mostrecent"
)
CRM_PAUSED = Gauge(
    "onrecord_crm_writes_paused",
    "1 while writes are paused to spare the org's API budget",
    multiprocess_mode="mostrecent",
)
APPROVAL_VERDICTS = Counter(
    "onrecord_approval_verdicts_total",
    "Approval verdicts given: by verdict, and whether a person's change was judged or OnRecord set it",
    ["verdict", "how"],
)
APPROVAL_VERDICT_SECONDS = Histogram(
    "onrecord_approval_verdict_seconds",
    "From receiving a status change to its verdict (a Pending change counts when it is settled)",
    ["verdict"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800, 3600),
)
CRM_RECORDS = Counter("onrecord_crm_records_total", "Records written, by result", ["writer", "result"])


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time, so any process can serve them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from plugin.crm_config_job import stored as crm_config_stored
        from plugin.stats import pipeline_stats

        stats = pipeline_stats(self._engine)
        yield GaugeMetricFamily(
            "onrecord_inbox_pending", "Inbox events waiting for the rules", stats.inbox_pending
        )
        yield GaugeMetricFamily(
            "onrecord_inbox_parked", "Inbox events parked after a rule failed", stats.inbox_parked
        )
        yield GaugeMetricFamily(
            "onrecord_inbox_lag_seconds", "Age of the oldest pending inbox event", stats.inbox_lag_seconds
        )
        yield GaugeMetricFamily(
            "onrecord_outbox_depth", "Outbox rows waiting to be sent", stats.outbox_pending
        )
        yield GaugeMetricFamily("onrecord_dead_letters", "Outbox rows given up on", stats.outbox_dead)
        yield GaugeMetricFamily(
            "onrecord_crm_config_problems",
            "Problems in the CRM's configuration records; over 0: the last good configuration is in force",
            len(crm_config_stored(self._engine).problems),
        )


def render(engine: Engine) -> bytes:
    """The /metrics body: this process's (or every process's) counters, then the database gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY as counters
    database = CollectorRegistry()
    database.register(DatabaseCollector(engine))
    return generate_latest(counters) + generate_latest(database)
