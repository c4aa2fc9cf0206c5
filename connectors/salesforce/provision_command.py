"""`provision`: write the Salesforce metadata package OnRecord needs, and deploy it on request."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from connectors.salesforce.connector import configured as salesforce_configured
from connectors.salesforce.connector import settings as sf_settings
from plugin.config import Config
from plugin.crm import CrmError


def run(args: argparse.Namespace, config: Config) -> int:
    """Write the package to --out (or a temporary directory); with --deploy, deploy and report."""
    from connectors.salesforce.provision import PackageError, build_package, write_package

    try:
        files = build_package(config)
    except PackageError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="onrecord-package-"))
    for path in write_package(files, out):
        print(f"wrote {path}")
    if not args.deploy:
        print(f"deploy it with `python -m plugin provision --out {out} --deploy`, or any Metadata API tool")
        return 0
    if not salesforce_configured(config):
        print(
            "provision --deploy needs the Salesforce connection: salesforce.client_id and, for auth = jwt, "
            "salesforce.username and salesforce.private_key_file",
            file=sys.stderr,
        )
        return 2
    return _deploy(args, config, files)


def _deploy(args: argparse.Namespace, config: Config, files: dict[str, bytes]) -> int:
    from connectors.salesforce.provision import deploy_package, is_sandbox
    from connectors.salesforce.wiring import build_salesforce_writer

    writer = build_salesforce_writer(config)
    sandbox = is_sandbox(sf_settings(config).login_url)
    try:
        outcome = deploy_package(
            writer, files, sandbox=sandbox, check_only=args.check_only, wait_seconds=args.wait
        )
    except CrmError as exc:
        print(f"deploy failed: {exc}", file=sys.stderr)
        return 1
    finally:
        writer.close()
    what = "validated (check only)" if args.check_only else "deployed"
    if outcome.ok:
        done = f"{outcome.components_deployed} of {outcome.components_total} components"
        print(f"{what}: {done} (deploy {outcome.id})")
        return 0
    print(f"deploy {outcome.id} {outcome.status}", file=sys.stderr)
    for error in outcome.errors:
        print(f"  {error}", file=sys.stderr)
    if outcome.status not in ("Failed", "Canceled", "SucceededPartial"):
        print(f"  still running after {args.wait:g}s: see Setup > Deployment Status", file=sys.stderr)
    return 1
