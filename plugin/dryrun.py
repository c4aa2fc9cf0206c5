"""The dry-run CRM: every batch that would have been sent is recorded locally; nothing leaves.

It is the embedded default whenever no CRM credentials are configured, so `make run` shows the
whole pipeline working, and admins can see exactly what OnRecord would write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from plugin.crm import RecordResult, WriteBatch
from plugin.storage import begin_write, dryrun_calls, dryrun_records, is_postgres


class DryRunWriter:
    """A CrmWriter that writes into two local tables instead of a CRM."""

    name = "dry_run"
    max_batch = 200

    def api_usage(self) -> tuple[int, int] | None:
        """No budget: nothing leaves."""
        return None

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def ready(self) -> tuple[bool, str]:
        """Always ready: it needs nothing but the database."""
        return True, "dry run: writes are recorded locally, nothing is sent to a CRM"

    def write_batch(self, batch: WriteBatch) -> list[RecordResult]:
        """Record the call and fold the fields into the record as it would now stand.

        The records as they stand are read before the write lock is taken: only the dispatcher
        (one at a time) writes here, and the inbox writer, which acknowledges senders, should not
        wait while a call of 200 records is read and merged."""
        now = datetime.now(UTC)
        insert = postgresql.insert if is_postgres(self._engine) else sqlite.insert
        keys = [r.record_key for r in batch.records]
        with self._engine.connect() as conn:
            current = dict(
                conn.execute(
                    sa.select(dryrun_records.c.record_key, dryrun_records.c.fields).where(
                        dryrun_records.c.object == batch.object, dryrun_records.c.record_key.in_(keys)
                    )
                )
                .tuples()
                .all()
            )
        rows = [
            {
                "object": batch.object,
                "record_key": r.record_key,
                "fields": {**current.get(r.record_key, {}), **r.fields},
                "updated_at": now,
            }
            for r in batch.records
        ]
        with begin_write(self._engine) as conn:
            conn.execute(
                dryrun_calls.insert().values(
                    object=batch.object,
                    operation=batch.operation,
                    external_id_field=batch.external_id_field,
                    records=[{"key": r.record_key, "fields": dict(r.fields)} for r in batch.records],
                    called_at=now,
                )
            )
            stmt = insert(dryrun_records)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["object", "record_key"],
                    set_={"fields": stmt.excluded.fields, "updated_at": stmt.excluded.updated_at},
                ),
                rows,
            )
        return [RecordResult(ok=True, crm_id=r.record_key) for r in batch.records]

    def read_fields(self, object: str, record_id: str, fields: Sequence[str]) -> dict[str, Any] | None:
        """The fields as the dry run last recorded them (those it never wrote are left out)."""
        with self._engine.connect() as conn:
            stored = conn.execute(
                sa.select(dryrun_records.c.fields).where(
                    dryrun_records.c.object == object, dryrun_records.c.record_key == record_id
                )
            ).scalar()
        if stored is None:
            return None
        # Only what OnRecord itself wrote is known here; the record's other fields are not.
        return {f: stored[f] for f in fields if f in stored}

    def calls(self) -> list[dict[str, Any]]:
        """Every recorded call, oldest first (for `outbox`, tests and the demo)."""
        with self._engine.connect() as conn:
            return [
                dict(r._mapping) for r in conn.execute(sa.select(dryrun_calls).order_by(dryrun_calls.c.id))
            ]
