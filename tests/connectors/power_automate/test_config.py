"""The power_automate and api sections: secrets only from the environment, errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from plugin.commands.init import generate_secret
from plugin.config import SECRET_KEYS, ConfigError, load_config
from tests.connectors.power_automate.support import API_KEY, API_TOKEN, CALLBACK_KEY, TENANT


def test_secrets_come_from_the_environment_as_lists() -> None:
    config = load_config(
        env={
            "ONRECORD_POWER_AUTOMATE__API_KEY": API_KEY,
            "ONRECORD_API__TOKENS": json.dumps([API_TOKEN, API_TOKEN + "2"]),
            "ONRECORD_API__CALLBACK_KEY": CALLBACK_KEY,
        }
    )
    assert config.power_automate.api_key == [API_KEY]
    assert config.api.tokens == [API_TOKEN, API_TOKEN + "2"]
    assert config.api.callback_key == [CALLBACK_KEY]


@pytest.mark.parametrize(
    ("section", "key"), [("power_automate", "api_key"), ("api", "tokens"), ("api", "callback_key")]
)
def test_secret_written_in_the_toml_file_is_refused(tmp_path: Path, section: str, key: str) -> None:
    assert (section, key) in SECRET_KEYS
    path = tmp_path / "onrecord.toml"
    path.write_text(f'[{section}]\n{key} = "{CALLBACK_KEY}"\n')
    with pytest.raises(ConfigError, match=f"{section}.{key}: secrets may not be written"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"ONRECORD_POWER_AUTOMATE__ENTRA_TENANT_ID": "contoso.onmicrosoft.com"},
            "power_automate.entra_tenant_id",
        ),
        ({"ONRECORD_POWER_AUTOMATE__ENTRA_TENANT_ID": TENANT}, "power_automate.entra_audiences"),
        (
            {
                "ONRECORD_POWER_AUTOMATE__ENTRA_TENANT_ID": TENANT,
                "ONRECORD_POWER_AUTOMATE__ENTRA_AUDIENCES": '["api://onrecord"]',
                "ONRECORD_POWER_AUTOMATE__ENTRA_ALLOWED_CLIENT_IDS": '["flow-app"]',
                "ONRECORD_POWER_AUTOMATE__ENTRA_REQUIRED_ROLE": "OnRecord.Events.Write",
            },
            "power_automate.entra_allowed_client_ids",
        ),
        (
            {"ONRECORD_POWER_AUTOMATE__ENTRA_JWKS_URL": "http://keys.example.com/keys"},
            "power_automate.entra_jwks_url",
        ),
        ({"ONRECORD_POWER_AUTOMATE__AUTH_MODES": '["basic"]'}, "power_automate.auth_modes"),
        ({"ONRECORD_API__CALLBACK_HOSTS": '["https://x.logic.azure.com/"]'}, "api.callback_hosts"),
        ({"ONRECORD_API__PUBLIC_URL": "onrecord.contoso.com"}, "api.public_url"),
        ({"ONRECORD_API__TOKENS": '["short"]'}, "api.tokens"),
        ({"ONRECORD_API__CALLBACK_KEY": "not-a-fernet-key"}, "api.callback_key"),
        ({"ONRECORD_POWER_AUTOMATE__API_KEY": "short"}, "power_automate.api_key"),
    ],
)
def test_bad_values_name_the_key_without_echoing_secrets(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert named in str(info.value)
    assert "not-a-fernet-key" not in str(info.value) and "'short'" not in str(info.value)


def test_relaxed_address_rule_is_off_by_default_and_callbacks_go_only_to_power_platform() -> None:
    api = load_config(env={}).api
    assert api.callback_allow_private_addresses is False
    assert api.callback_hosts == ["*.logic.azure.com", "*.environment.api.powerplatform.com"]


def test_init_generates_secrets_the_configuration_accepts() -> None:
    env = {
        "ONRECORD_POWER_AUTOMATE__API_KEY": generate_secret("power_automate", "api_key"),
        "ONRECORD_API__TOKENS": generate_secret("api", "tokens"),
        "ONRECORD_API__CALLBACK_KEY": generate_secret("api", "callback_key"),
    }
    config = load_config(env=env)
    Fernet(config.api.callback_key[0].encode())  # a usable key
    assert len(config.api.tokens) == 1 and len(config.power_automate.api_key) == 1
