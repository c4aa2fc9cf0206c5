"""The configuration-from-the-CRM job, and how the worker follows what it stored.

With `[crm_config] enabled = true` the job "crm_config" runs in the worker every
`refresh_seconds` (and once at start: plugin/commands/work.py): it reads the primary CRM's
OnRecord configuration records (`CrmSide.read_config`), composes and validates them
(plugin/crm_config.py), and returns, stored in one transaction by the JobRunner:

- its state (the `jobs` row, JSON): `applied`, the last good version with its composed
  configuration and the records it came from, kept when a new version is refused; `problems`
  and `seen`, what the last read found (for `check`, /readyz and the metric); `statuses`, what
  each record's status record says, so a status is written only when it changes;
- one `OnRecord_Config_Status__c` upsert per record whose status changed (by `OnRecord_Key__c`,
  type and developer name), through the outbox: OK, or Problem with the field and what is
  allowed; when it was applied; the configuration version in force.

Each version applied is also signed into the provenance log (`log_configuration`: an in-toto
statement whose subject digest is the version, listing each record with who changed it last and
when), so the version a verdict names can be verified against the log.

`enabled = false`: no job, no read, no write: the CRM is not asked anything.

`CrmConfigFollower` is the worker's side: every few seconds it reads the stored version (one
small query) and, when it changed, rebuilds the worker's rules (and the jobs: the leaders job
scores with the CRM's leaders and weights) from `apply(file configuration, stored composed)`.
Verdicts already given are stored facts and stay as they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin.config import Config
from plugin.crm_config import (
    Composed,
    ConfigRecord,
    CrmConfigError,
    RecordProblem,
    apply,
    compose,
    file_config,
)
from plugin.events import CrmWrite
from plugin.jobs import Job, JobRun

if TYPE_CHECKING:
    from plugin.provenance.keys import SigningKey

log = logging.getLogger(__name__)

JOB_NAME = "crm_config"
STATUS_OBJECT = "OnRecord_Config_Status__c"
KEY_FIELD = "OnRecord_Key__c"
# What a status record says -> its field (connectors/salesforce/provision.py: config_status_fields)
STATUS_FIELDS = {
    "type": "OnRecord_Metadata_Type__c",
    "developer_name": "OnRecord_Developer_Name__c",
    "status": "OnRecord_Status__c",
    "problem": "OnRecord_Problem__c",
    "applied_at": "OnRecord_Applied_At__c",
    "version": "OnRecord_Config_Version__c",
}
MAX_PROBLEM = 32000  # the long text area holds 32,768 characters

Read = Callable[[Config], Sequence[ConfigRecord]]


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class CrmConfigRefresh:
    """One refresh: run(state, now) -> JobRun, as a Job wants it."""

    def __init__(self, config: Config, read: Read) -> None:
        self.config = file_config(config)  # each version is applied to the file's configuration
        self.read = read

    def run(self, state: Mapping[str, Any], now: datetime) -> JobRun:
        records = list(self.read(self.config))
        composed = compose(records, crm=self.config.crm.primary)
        try:
            apply(self.config, composed)
            problems: list[RecordProblem] = []
        except CrmConfigError as exc:
            problems = exc.problems
        applied: dict[str, Any] | None = state.get("applied")
        new = not problems and (applied is None or applied.get("version") != composed.version)
        if not problems:
            applied = {
                "version": composed.version,
                "composed": composed.to_json(),
                "records": [r.to_json() for r in records],
                # when this version took effect (not every read: the same version stays)
                "applied_at": _iso(now) if new or applied is None else applied["applied_at"],
            }
        in_force = applied["version"] if applied else ""
        statuses: dict[str, Any] = dict(state.get("statuses") or {})
        writes = []
        for record in records:
            status = self._status(record, problems, in_force, composed.version)
            if statuses.get(record.key) == status:
                continue  # unchanged: no API call
            statuses[record.key] = status
            writes.append(self._write(record, status, now))
        for gone in sorted(set(statuses) - {r.key for r in records}):
            del statuses[gone]  # a deleted record: its status record stays as it was last
        if new:
            self._on_record(composed.version, records, now)
            log.info(
                "configuration from the CRM applied",
                extra={"version": composed.version, "records": len(records), "reason": "crm_config_applied"},
            )
        elif problems:
            log.warning(
                "configuration from the CRM refused; the last good one stays in force",
                extra={
                    "version": composed.version,
                    "in_force": in_force,
                    "problems": [f"{p.key}: {p.describe()}" for p in problems],
                    "reason": "crm_config_refused",
                },
            )
        return JobRun(
            state={
                "applied": applied,
                "seen": {"version": composed.version, "at": _iso(now), "records": len(records)},
                "problems": [p.to_json() for p in problems],
                "statuses": statuses,
            },
            writes=writes,
        )

    def _on_record(self, version: str, records: Sequence[ConfigRecord], now: datetime) -> None:
        """Sign the new version into the provenance log (once per version: a retried refresh
        finds it there). Without a signing key the version still applies; the log says nothing."""
        from plugin.provenance.keys import KeyStoreError
        from plugin.provenance.rule import key_store
        from plugin.storage import get_engine

        try:
            key = key_store(self.config).signing_key()
        except KeyStoreError:
            log.warning(
                "no signing key: configuration version not logged", extra={"reason": "crm_config_unsigned"}
            )
            return
        log_configuration(get_engine(self.config.storage.url), self.config, key, version, records, now)

    @staticmethod
    def _status(
        record: ConfigRecord, problems: Sequence[RecordProblem], in_force: str, seen: str
    ) -> dict[str, str]:
        mine = [p for p in problems if p.key == record.key]
        if mine:
            text = "; ".join(p.describe() for p in mine)
            kept = f" The last good configuration ({in_force[:12]}) stays in force." if in_force else ""
            return {"status": "Problem", "problem": f"{text}.{kept}"[:MAX_PROBLEM], "version": in_force}
        if problems:
            others = sorted({p.key for p in problems})
            text = (
                "This record is fine, but the configuration it belongs to is not applied: "
                f"{', '.join(others)} has a problem (see its status record)."
            )
            return {"status": "OK", "problem": text[:MAX_PROBLEM], "version": in_force}
        return {"status": "OK", "problem": "", "version": seen}

    def _write(self, record: ConfigRecord, status: Mapping[str, str], now: datetime) -> CrmWrite:
        fields = {
            STATUS_FIELDS["type"]: record.type,
            STATUS_FIELDS["developer_name"]: record.developer_name,
            STATUS_FIELDS["status"]: status["status"],
            STATUS_FIELDS["problem"]: status["problem"],
            STATUS_FIELDS["applied_at"]: _iso(now),
            STATUS_FIELDS["version"]: status["version"][:80],
        }
        return CrmWrite(
            object=STATUS_OBJECT,
            fields=fields,
            external_id_field=KEY_FIELD,
            external_id=record.key[:100],
            crm=self.config.crm.primary,  # the status lives beside the records it is about
        )


# --- every version on record: a signed statement in the provenance log --------------------------

CONFIG_PREDICATE = "https://onrecord.dev/attestations/configuration/v1"
CONFIG_KIND = "config"  # provenance_statements.kind
CONFIG_OBJECT = "OnRecord_Configuration"  # its object; record_id is the version


def configuration_statement(
    version: str, records: Sequence[ConfigRecord], crm: str, applied_at: datetime
) -> dict[str, Any]:
    """in-toto Statement of one configuration version: its subject digest is the version (sha256
    of the records' canonical JSON, recomputable from the predicate's records), and each record
    says who changed it last and when (LastModifiedBy, SystemModstamp): Setup Audit Trail's
    answer, kept beside every verdict that names the version."""
    from plugin.provenance.statement import STATEMENT_TYPE, iso

    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f"{CONFIG_OBJECT}/{version}", "digest": {"sha256": version}}],
        "predicateType": CONFIG_PREDICATE,
        "predicate": {
            "version": version,
            "crm": crm,
            "appliedAt": iso(applied_at),
            "records": [
                {
                    "type": r.type,
                    "developer_name": r.developer_name,
                    "fields": dict(r.fields),
                    "lastModifiedBy": {"id": r.modified_by_id, "name": r.modified_by_name},
                    "systemModstamp": r.modstamp,
                }
                for r in sorted(records, key=lambda r: (r.type, r.developer_name))
            ],
        },
    }


def log_configuration(
    engine: Engine,
    config: Config,
    key: SigningKey,
    version: str,
    records: Sequence[ConfigRecord],
    now: datetime,
) -> str | None:
    """Store the signed statement of `version` (unless one is stored) and sequence the log; the
    statement's digest, or None when the version was on record already."""
    from plugin.provenance.dsse import sign_envelope
    from plugin.provenance.log import envelope_text, integrate
    from plugin.provenance.statement import payload_of, statement_digest
    from plugin.storage import begin_write, provenance_statements

    statement = configuration_statement(version, records, config.crm.primary, now)
    payload = payload_of(statement)
    digest = statement_digest(payload)
    with begin_write(engine) as conn:
        known = conn.execute(
            sa.select(provenance_statements.c.id).where(
                provenance_statements.c.kind == CONFIG_KIND, provenance_statements.c.record_id == version
            )
        ).first()
        if known is not None:
            return None
        conn.execute(
            provenance_statements.insert().values(
                kind=CONFIG_KIND,
                object=CONFIG_OBJECT,
                record_id=version,
                digest=digest,
                envelope=envelope_text(sign_envelope(payload, key)),
                recorded_at=now,
            )
        )
    integrate(engine, key, config.provenance.log_origin, now)  # in the log now, not at the next pass
    return digest


def crm_config_job(config: Config, read: Read | None = None) -> Job:
    """The scheduled job: reads through the primary CRM's `read_config` (or `read`, for tests)."""
    if read is None:
        from plugin import registry

        side = registry.crm_side(config.crm.primary)
        if side.read_config is None:
            raise ValueError(
                f"crm_config.enabled: the CRM {config.crm.primary!r} cannot be configured from the CRM"
            )
        read = side.read_config
    return Job(JOB_NAME, config.crm_config.refresh_seconds, CrmConfigRefresh(config, read).run)


# --- what the job stored, for the worker, check, /readyz and the metric -------------------------


@dataclass(frozen=True)
class Stored:
    """The job's state: the version in force (if any) and what the last read found."""

    version: str = ""
    composed: Composed | None = None
    applied_at: str = ""
    seen_version: str = ""
    seen_at: str = ""
    problems: tuple[RecordProblem, ...] = ()

    @property
    def degraded(self) -> str:
        """Why the configuration in force is not the CRM's latest, in words ("" when it is)."""
        if not self.problems:
            return ""
        where = "; ".join(f"{p.key} {p.describe()}" for p in self.problems[:3])
        more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        kept = f"version {self.version[:12]} stays in force" if self.version else "the file's stays in force"
        return f"configuration from the CRM refused, {kept}: {where}{more}"


def stored(engine: Engine) -> Stored:
    """The crm_config job's stored state (empty when it never ran)."""
    from plugin.storage import jobs

    with engine.connect() as conn:
        state = conn.execute(sa.select(jobs.c.state).where(jobs.c.name == JOB_NAME)).scalar()
    return stored_from(state or {})


def stored_from(state: Mapping[str, Any]) -> Stored:
    applied = state.get("applied") or {}
    seen = state.get("seen") or {}
    return Stored(
        version=str(applied.get("version") or ""),
        composed=Composed.from_json(applied["composed"]) if applied.get("composed") else None,
        applied_at=str(applied.get("applied_at") or ""),
        seen_version=str(seen.get("version") or ""),
        seen_at=str(seen.get("at") or ""),
        problems=tuple(RecordProblem.from_json(p) for p in state.get("problems") or []),
    )


def status_line(config: Config, engine: Engine) -> tuple[bool | None, str]:
    """What `check` and /readyz say: None when switched off or not read yet, True when the CRM's
    latest configuration is in force, False (degraded: the last good one is) with the reason."""
    if not config.crm_config.enabled:
        return None, "configuration from the CRM: off ([crm_config] enabled = false)"
    found = stored(engine)
    if not found.seen_version:
        return None, "configuration from the CRM: not read yet (the worker reads it at start)"
    if found.problems:
        return False, found.degraded
    return True, (
        f"configuration from the CRM: version {found.version[:12]} in force since {found.applied_at} "
        f"(last read {found.seen_at})"
    )


def stored_version(engine: Engine) -> str:
    """Only the version in force: the worker's cheap check."""
    return stored(engine).version


def effective_config(config: Config, engine: Engine) -> Config:
    """The configuration in force: the file's, with the CRM's last good version applied (when
    [crm_config] is enabled and a version was stored)."""
    if not config.crm_config.enabled:
        return config
    found = stored(engine)
    if found.composed is None:
        return config
    try:
        return apply(config, found.composed)
    except CrmConfigError:  # the file changed under a stored version: the file's alone
        log.exception(
            "stored configuration from the CRM no longer applies", extra={"reason": "crm_config_stale"}
        )
        return config


class CrmConfigFollower:
    """Rebuilds a running worker's rules (and jobs) when the job stored a new version."""

    CHECK_EVERY_SECONDS = 2.0

    def __init__(
        self,
        config: Config,
        engine: Engine,
        rebuild: Callable[[Config], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.engine = engine
        self.rebuild = rebuild  # (the configuration now in force) -> None
        self.clock = clock
        self._next_check = 0.0
        self.version = ""

    def check(self, force: bool = False) -> bool:
        """Apply a newly stored version; whether one was applied."""
        if not self.config.crm_config.enabled:
            return False
        now = self.clock()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.CHECK_EVERY_SECONDS
        found = stored(self.engine)
        if found.version == self.version or found.composed is None:
            return False
        try:
            applied = apply(self.config, found.composed)
        except CrmConfigError:
            log.exception(
                "stored configuration from the CRM no longer applies", extra={"reason": "crm_config_stale"}
            )
            self.version = found.version  # do not retry it every check
            return False
        self.rebuild(applied)
        self.version = found.version
        log.info(
            "configuration from the CRM in force",
            extra={"version": found.version, "reason": "crm_config_followed"},
        )
        return True


__all__ = [
    "CONFIG_KIND",
    "CONFIG_OBJECT",
    "CONFIG_PREDICATE",
    "JOB_NAME",
    "KEY_FIELD",
    "STATUS_FIELDS",
    "STATUS_OBJECT",
    "CrmConfigFollower",
    "CrmConfigRefresh",
    "Stored",
    "configuration_statement",
    "crm_config_job",
    "effective_config",
    "log_configuration",
    "status_line",
    "stored",
    "stored_from",
    "stored_version",
]
