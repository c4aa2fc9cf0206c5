"""Choosing each CRM's writer from the configuration: the CRM's own when its credentials are
configured (or `crm.kind` names it), else the dry run, which records what would have been sent."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import Engine

from plugin import registry
from plugin.config import Config
from plugin.crm import CrmWriter
from plugin.dryrun import DryRunWriter
from plugin.events import CrmWrite

# Outbox rows stored before each row named its CRM (migration 0010) say "crm": the primary CRM's.
LEGACY_TARGET = "crm"


def writes_for_real(config: Config, crm: str) -> bool:
    """Whether `crm`'s writes go to that CRM (rather than to its dry run)."""
    kind = config.crm.kind
    if kind == "dry_run":
        return False
    if kind == crm:
        return True
    return kind == "auto" and registry.crm_side(crm).configured(config)


def writer_kind(config: Config, crm: str | None = None) -> str:
    """`dry_run` or the CRM's name, for `crm` (default: the primary CRM)."""
    crm = crm or config.crm.primary
    return crm if writes_for_real(config, crm) else "dry_run"


def build_writer(config: Config, engine: Engine, crm: str | None = None) -> CrmWriter:
    """The writer for `crm` (default: the primary CRM)."""
    crm = crm or config.crm.primary
    if writes_for_real(config, crm):
        return registry.crm_side(crm).build_writer(config)
    return DryRunWriter(engine)


def target_resolver(config: Config) -> Callable[[CrmWrite], str]:
    """Which CRM a write goes to: the one it names, else its governed object's, else the primary."""
    by_object = {g.object: g.crm for g in config.governed}
    primary = config.crm.primary

    def target_of(write: CrmWrite) -> str:
        return write.crm or by_object.get(write.object, primary)

    return target_of


def build_writers(config: Config, engine: Engine) -> dict[str, CrmWriter]:
    """One writer per CRM connector (dry runs share one writer), keyed by outbox target."""
    dry = DryRunWriter(engine)
    writers: dict[str, CrmWriter] = {}
    for crm in registry.crm_names():
        writers[crm] = registry.crm_side(crm).build_writer(config) if writes_for_real(config, crm) else dry
    writers[LEGACY_TARGET] = writers[config.crm.primary]
    return writers
