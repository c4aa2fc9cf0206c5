"""The CRM writer interface every CRM connector implements, and its small error family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Operation = Literal["update", "upsert"]


@dataclass(frozen=True)
class RecordWrite:
    """One record's coalesced fields within a batch."""

    record_key: str  # CRM id for update, external id value for upsert
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class WriteBatch:
    """At most the writer's `max_batch` records of one object, written in one CRM call."""

    object: str
    operation: Operation
    external_id_field: str | None  # set for upsert
    records: Sequence[RecordWrite]


@dataclass(frozen=True)
class RecordResult:
    """The CRM's verdict on one record of a batch (same order as the batch)."""

    ok: bool
    retryable: bool = False
    error: str = ""  # the CRM's own message and code, kept for the dead letter
    crm_id: str | None = None


class CrmError(Exception):
    """A whole call failed. `retryable` says whether trying again later can help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class CrmPaused(CrmError):
    """The writer chose not to call now (e.g. the org's API budget is nearly spent)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class CrmWriter(Protocol):
    """Writes batches to one CRM. Implementations: dry run, Salesforce, Dataverse."""

    name: str
    max_batch: int  # records one write_batch call may carry (Salesforce 200, Dataverse up to 1000)

    def api_usage(self) -> tuple[int, int] | None:
        """(used, limit) of the CRM's API budget as last read, for /metrics; None if unknown."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Whether writes can go out now, and why not."""
        ...

    def write_batch(self, batch: WriteBatch) -> list[RecordResult]:
        """Send one batch; one result per record, in order. Raise CrmError if the call failed."""
        ...

    def read_fields(self, object: str, record_id: str, fields: Sequence[str]) -> dict[str, Any] | None:
        """Current values of some fields of one record (None if unknown or unsupported)."""
        ...
