"""Pointing OnRecord at the Salesforce emulator: configuration overrides and the CLI's environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.sfemu import KeyPair, SalesforceEmulator

CLIENT_ID = "3MVG9OnRecordConnectorTests"


def connect(emu: SalesforceEmulator, keypair: KeyPair) -> None:
    """Register OnRecord's connected app (JWT bearer, the certificate uploaded) in the emulator."""
    emu.register_consumer(CLIENT_ID, certificate_pem=keypair.certificate_pem)


def key_file(keypair: KeyPair, tmp_path: Path) -> Path:
    path = tmp_path / "jwt.key"
    path.write_bytes(keypair.private_key_pem)
    path.chmod(0o600)
    return path


def overrides(emu: SalesforceEmulator, keypair: KeyPair, tmp_path: Path) -> dict[str, Any]:
    """make_config overrides for a JWT bearer connection to the emulator."""
    return {
        "salesforce.client_id": CLIENT_ID,
        "salesforce.username": emu.username,
        "salesforce.private_key_file": str(key_file(keypair, tmp_path)),
        "salesforce.login_url": emu.base_url,
        "salesforce.ca_bundle": emu.ca_path,
        "salesforce.org_id": emu.org_id,
        "salesforce.integration_user_id": emu.user_id(),
    }


def server_environment(emu: SalesforceEmulator, org_id: str, outbound_token: str) -> dict[str, str]:
    """The ONRECORD_SALESFORCE__* variables of a server connected to the emulator, as an admin sets
    them (the JWT key file goes in the TOML: see cli_environment)."""
    return {
        "ONRECORD_SALESFORCE__CLIENT_ID": CLIENT_ID,
        "ONRECORD_SALESFORCE__USERNAME": emu.username,
        "ONRECORD_SALESFORCE__LOGIN_URL": emu.base_url,
        "ONRECORD_SALESFORCE__CA_BUNDLE": emu.ca_path,
        "ONRECORD_SALESFORCE__ORG_ID": org_id,
        "ONRECORD_SALESFORCE__OUTBOUND_TOKEN": outbound_token,
        "ONRECORD_SALESFORCE__INTEGRATION_USER_ID": emu.user_id(),
        "ONRECORD_SALESFORCE__POLL_LOGINS_INTERVAL_SECONDS": "0",
    }


def cli_environment(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    emu: SalesforceEmulator,
    keypair: KeyPair,
    toml: str = "",
) -> None:
    """The environment `python -m plugin ...` reads, as an admin would set it."""
    # private_key_file goes in the file: plugin.config reads any ONRECORD_..._FILE variable as a
    # secret's file, so ONRECORD_SALESFORCE__PRIVATE_KEY_FILE is never seen as the key itself.
    config = tmp_path / "onrecord.toml"
    config.write_text(f'{toml}\n[salesforce]\nprivate_key_file = "{key_file(keypair, tmp_path)}"\n')
    for name, value in {
        "ONRECORD_CONFIG": str(config),
        "ONRECORD_STORAGE__URL": f"sqlite:///{tmp_path}/cli.db",
        "ONRECORD_VAR_DIR": str(tmp_path / "var"),
        "ONRECORD_SECRETS_DIR": str(tmp_path / "var" / "secrets"),
        "ONRECORD_LOGGING__LEVEL": "ERROR",
        "ONRECORD_SALESFORCE__CLIENT_ID": CLIENT_ID,
        "ONRECORD_SALESFORCE__USERNAME": emu.username,
        "ONRECORD_SALESFORCE__LOGIN_URL": emu.base_url,
        "ONRECORD_SALESFORCE__CA_BUNDLE": emu.ca_path,
        "ONRECORD_SALESFORCE__INTEGRATION_USER_ID": emu.user_id(),
    }.items():
        monkeypatch.setenv(name, value)
