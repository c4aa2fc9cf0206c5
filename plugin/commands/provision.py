"""`provision [--crm NAME]`: write (and on request deploy) what OnRecord needs in a CRM — its
fields on governed objects, the violation and leader-signal objects — through that CRM's
connector (Salesforce: a metadata package; Dataverse: Web API metadata requests)."""

from __future__ import annotations

import argparse

from plugin import registry
from plugin.config import Config


def run(args: argparse.Namespace, config: Config) -> int:
    crm = getattr(args, "crm", None) or config.crm.primary
    return registry.crm_side(crm).provision(args, config)
