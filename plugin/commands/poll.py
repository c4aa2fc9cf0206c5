"""`poll logins`: read Salesforce LoginHistory once, now, as the worker's scheduled job does."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from plugin import logs, migrate
from plugin.config import Config
from plugin.crm import CrmError
from plugin.storage import get_engine
from plugin.worker import worker_id
from plugin.writers import writer_kind


def run(args: argparse.Namespace, config: Config) -> int:
    """Poll, store what was found, and say how many logins that was."""
    if writer_kind(config) != "salesforce":
        print(
            "poll logins needs the Salesforce connection: set salesforce.client_id and, for auth = jwt, "
            "salesforce.username and salesforce.private_key_file (or crm.kind = salesforce)",
            file=sys.stderr,
        )
        return 2
    logs.configure(config)
    from connectors.salesforce.logins import poll_logins_now

    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    try:
        result = poll_logins_now(config, engine, owner=worker_id(), now=datetime.now(UTC))
    except (CrmError, RuntimeError) as exc:
        print(f"poll logins failed: {exc}", file=sys.stderr)
        return 1
    found = len(result.events)
    print(
        f"found {found} interactive login{'' if found == 1 else 's'}; "
        f"LoginHistory read up to {result.state.get('watermark')}"
    )
    return 0
