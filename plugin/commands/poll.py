"""`poll logins [--crm NAME]`: read a CRM's login records once, now, as the worker's job does
(Salesforce: LoginHistory; Dataverse: auditing's user access records)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from plugin import logs, migrate, registry
from plugin.config import Config
from plugin.crm import CrmError
from plugin.storage import get_engine
from plugin.worker import worker_id
from plugin.writers import writes_for_real


def run(args: argparse.Namespace, config: Config) -> int:
    """Poll, store what was found, and say how many logins that was."""
    crm = getattr(args, "crm", None) or config.crm.primary
    side = registry.crm_side(crm)
    if side.poll_logins is None:
        print(f"poll logins: the {crm} connector has no login poller", file=sys.stderr)
        return 2
    if not writes_for_real(config, crm):
        print(
            f"poll logins needs the {crm} connection: set {side.needs} (or crm.kind = {crm})", file=sys.stderr
        )
        return 2
    logs.configure(config)
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    try:
        result = side.poll_logins(config, engine, owner=worker_id(), now=datetime.now(UTC))
    except (CrmError, RuntimeError) as exc:
        print(f"poll logins failed: {exc}", file=sys.stderr)
        return 1
    found = len(result.events)
    print(
        f"found {found} interactive login{'' if found == 1 else 's'}; "
        f"{_where(crm)} read up to {result.state.get('watermark')}"
    )
    return 0


def _where(crm: str) -> str:
    return {"salesforce": "LoginHistory", "dataverse": "auditing"}.get(crm, f"{crm}'s logins")
