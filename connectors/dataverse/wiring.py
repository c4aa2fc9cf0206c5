"""Building the Dataverse writer from OnRecord's configuration."""

from __future__ import annotations

from connectors.dataverse.config import DataverseConfig
from connectors.dataverse.webapi import WebApiSettings
from connectors.dataverse.writer import DataverseWriter, DataverseWriterSettings
from plugin.config import Config


def writer_settings(config: Config) -> DataverseWriterSettings:
    """The writer's settings, from the [dataverse] section (and its secret) and [provenance]
    (the names of the provenance fields, so their kinds are known)."""
    dv = config.section("dataverse", DataverseConfig)
    return DataverseWriterSettings(
        api=WebApiSettings.from_config(dv),
        publisher_prefix=dv.publisher_prefix,
        max_batch=dv.max_batch,
        provenance=config.provenance,
    )


def build_dataverse_writer(config: Config) -> DataverseWriter:
    """A writer for the configured environment (it signs in on first use). ValueError names the
    `dataverse.*` setting that is missing or wrong."""
    return DataverseWriter(writer_settings(config))
