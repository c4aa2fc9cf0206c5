"""Choosing the CRM writer from the configuration."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from plugin.config import Config
from plugin.crm import CrmWriter
from plugin.dryrun import DryRunWriter


def salesforce_configured(config: Config) -> bool:
    """Whether credentials for the Salesforce writer are present."""
    sf = config.salesforce
    if sf.auth == "client_credentials":
        return bool(sf.client_id and sf.client_secret)
    return bool(sf.client_id and sf.username and sf.private_key_file)


def writer_kind(config: Config) -> str:
    """`dry_run` or `salesforce`, resolving `auto`."""
    if config.crm.kind != "auto":
        return config.crm.kind
    return "salesforce" if salesforce_configured(config) else "dry_run"


def build_writer(config: Config, engine: Engine) -> CrmWriter:
    """The writer the configuration asks for."""
    kind = writer_kind(config)
    if kind == "salesforce":
        from connectors.salesforce.wiring import build_salesforce_writer

        writer: CrmWriter = build_salesforce_writer(config)
        return writer
    return DryRunWriter(engine)
