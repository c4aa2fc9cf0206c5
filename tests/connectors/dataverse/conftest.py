"""The Dataverse emulator for the connector's tests, and a configuration pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugin.config import Config
from tests.conftest import make_config
from tests.dvemu import DataverseEmulator
from tests.dvemu.model import provision


@pytest.fixture
def dataverse() -> Iterator[DataverseEmulator]:
    """A started emulator with OnRecord's tables and columns provisioned (prefix `onr`)."""
    with DataverseEmulator() as emulator:
        provision(emulator.state)
        yield emulator
    assert emulator.errors == []


def config_for(emu: DataverseEmulator, db_url: str, tmp_path: Path, **overrides: Any) -> Config:
    """A configuration whose [dataverse] section signs in to and writes to the emulator."""
    return make_config(
        db_url,
        tmp_path,
        **{
            "dataverse.url": emu.url,
            "dataverse.tenant_id": emu.tenant_id,
            "dataverse.client_id": emu.client_id,
            "dataverse.client_secret": emu.client_secret,
            "dataverse.authority_host": emu.url,
            "dataverse.ca_bundle": emu.ca_path,
            "dataverse.application_user_id": emu.application_user_id,
            **overrides,
        },
    )
