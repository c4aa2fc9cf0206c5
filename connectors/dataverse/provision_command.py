"""`provision --crm dataverse`: OnRecord's tables and columns in a Dataverse environment.

`--out DIR` writes the Web API metadata requests (one JSON file each, numbered, with a README
saying how to apply them); `--deploy` makes them through the Web API, creating only what is
missing, so it can be run again at any time (`--check-only` reports what it would create).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from connectors.dataverse.connector import configured, settings
from connectors.dataverse.provision import DeployError, PlanError, deploy, plan, write_plan
from plugin.config import Config
from plugin.crm import CrmError


def run(args: argparse.Namespace, config: Config) -> int:
    """Write the plan (to --out or a temporary directory); with --deploy, apply it and report."""
    dv = settings(config)
    try:
        requests = plan(config, solution=dv.solution)
    except PlanError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="onrecord-dataverse-"))
    for path in write_plan(requests, out):
        print(f"wrote {path}")
    if not args.deploy:
        print(f"apply it with `python -m plugin provision --crm dataverse --deploy`, or the files in {out}")
        return 0
    if not configured(config):
        print(
            "provision --deploy needs the Dataverse connection: dataverse.url, dataverse.tenant_id, "
            "dataverse.client_id and dataverse.client_secret",
            file=sys.stderr,
        )
        return 2
    from connectors.dataverse.webapi import WebApiClient, WebApiSettings

    client = WebApiClient(WebApiSettings.from_config(dv))
    try:
        report = deploy(config, client, solution=dv.solution, dry_run=args.check_only)
    except DeployError as exc:
        for line in exc.report:
            print(f"  {line}")
        print(f"deploy failed: {exc}", file=sys.stderr)
        return 1
    except CrmError as exc:
        print(f"deploy failed: {exc}", file=sys.stderr)
        return 1
    for line in report:
        print(f"  {line}")
    problems = [line for line in report if line.startswith(("conflict", "missing table"))]
    return 1 if problems else 0
