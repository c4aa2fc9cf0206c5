"""Building the Salesforce writer from OnRecord's configuration."""

from __future__ import annotations

from connectors.salesforce.connector import settings as sf_settings
from connectors.salesforce.writer import SalesforceWriter, SalesforceWriterSettings
from plugin.config import Config


def writer_settings(config: Config) -> SalesforceWriterSettings:
    """The writer's settings, from the [salesforce] section and its secrets."""
    sf = sf_settings(config)
    return SalesforceWriterSettings(
        login_url=sf.login_url,
        client_id=sf.client_id,
        auth=sf.auth,
        username=sf.username or None,
        private_key_path=sf.private_key_file or None,
        client_secret=sf.client_secret or None,
        api_version=sf.api_version,
        ca_bundle=sf.ca_bundle or None,
        timeout=sf.timeout_seconds,
        api_budget_share=sf.api_budget_share,
    )


def build_salesforce_writer(config: Config) -> SalesforceWriter:
    """A writer for the configured org (it authenticates on first use)."""
    return SalesforceWriter(writer_settings(config))
