"""Configuration: file, environment overrides, validation that names the key, secrets rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin.config import ConfigError, ServerConfig, load_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A config/onrecord.toml left by `make run` in the work tree must not leak into these tests.
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "onrecord.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file_are_sqlite_and_the_dry_run() -> None:
    cfg = load_config(env={})
    assert cfg.storage.url.startswith("sqlite:///var/")
    assert cfg.crm.kind == "auto" and cfg.server.port == 8000
    assert cfg.salesforce.events_secret == []


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9000\nthreads = 4\n[storage]\nurl = "sqlite:///a.db"\n')
    cfg = load_config(path, env={"ONRECORD_SERVER__PORT": "9100", "ONRECORD_STORAGE__URL": "sqlite:///b.db"})
    assert cfg.server.port == 9100 and cfg.server.threads == 4 and cfg.storage.url == "sqlite:///b.db"


def test_lists_and_tables_come_from_the_environment_as_json() -> None:
    env = {
        "ONRECORD_WORKER__RULES": '["tests.support.rules:counting_rules"]',
        "ONRECORD_DISPATCH__EXTERNAL_IDS": '{"OnRecord_Leader_Signal__c": "OnRecord_Key__c"}',
    }
    cfg = load_config(env=env)
    assert cfg.worker.rules == ["tests.support.rules:counting_rules"]
    assert cfg.dispatch.external_ids == {"OnRecord_Leader_Signal__c": "OnRecord_Key__c"}


def test_config_path_from_onrecord_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nworkers = 3\n")
    assert load_config(env={"ONRECORD_CONFIG": str(path)}).server.workers == 3


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ONRECORD_SERVER__PORT": "eighty"}, "server.port"),
        ({"ONRECORD_SERVER__PORT": "70000"}, "server.port"),
        ({"ONRECORD_STORAGE__URL": "mysql://x"}, "storage.url"),
        ({"ONRECORD_STORAGE__ULR": "sqlite:///x"}, "storage.ulr"),
        ({"ONRECORD_WORKER__RULES": "not json"}, "worker.rules"),
        ({"ONRECORD_DISPATCH__BATCH_SIZE": "500"}, "dispatch.batch_size"),
        ({"ONRECORD_CRM__KIND": "hubspot"}, "crm.kind"),
        ({"ONRECORD_SERVER__WORKER_CLASS": "eventlet"}, "server.worker_class"),
    ],
)
def test_bad_values_stop_start_up_naming_the_key(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env=env)
    assert named in str(err.value)


def test_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.thread: unknown configuration key"):
        load_config(write(tmp_path, "[server]\nthread = 4\n"), env={})


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path, env={})


def test_secret_in_the_toml_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f'[salesforce]\nevents_secret = "{SECRET}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert "salesforce.events_secret" in str(err.value) and "ONRECORD_SALESFORCE__EVENTS_SECRET" in str(
        err.value
    )
    assert SECRET not in str(err.value)


def test_secret_from_environment_file_and_secrets_dir(tmp_path: Path) -> None:
    assert load_config(env={"ONRECORD_SALESFORCE__EVENTS_SECRET": SECRET}).salesforce.events_secret == [
        SECRET
    ]
    secret_file = tmp_path / "s"
    secret_file.write_text(SECRET + "\n")
    env = {"ONRECORD_SALESFORCE__EVENTS_SECRET_FILE": str(secret_file)}
    assert load_config(env=env).salesforce.events_secret == [SECRET]
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "salesforce.events_secret").write_text(SECRET)
    path = write(tmp_path, f'secrets_dir = "{tmp_path / "secrets"}"\n')
    assert load_config(path, env={}).salesforce.events_secret == [SECRET]


def test_several_secrets_during_rotation_as_a_json_list() -> None:
    other = "whsec_" + "A" * 43 + "="
    cfg = load_config(env={"ONRECORD_SALESFORCE__EVENTS_SECRET": f'["{SECRET}", "{other}"]'})
    assert cfg.salesforce.events_secret == [SECRET, other]


def test_malformed_secret_is_named_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"ONRECORD_SALESFORCE__EVENTS_SECRET": "hunter2-not-a-whsec"})
    assert "salesforce.events_secret" in str(err.value) and "hunter2" not in str(err.value)


def test_missing_secret_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope"):
        load_config(env={"ONRECORD_SALESFORCE__EVENTS_SECRET_FILE": str(tmp_path / "nope")})


EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "onrecord.example.toml"


def test_example_config_documents_every_key_with_its_default() -> None:
    from pydantic import BaseModel

    from plugin.config import SECRET_KEYS

    assert load_config(EXAMPLE, env={}) == load_config(env={})
    text = EXAMPLE.read_text()
    from plugin.config import section_models

    for name, model in section_models().items():
        if isinstance(model, type) and issubclass(model, BaseModel):
            assert f"[{name}]" in text
            for key in model.model_fields:
                documented = f"\n{key} = " in text or f"SECRET {name}.{key}" in text
                assert documented, f"{name}.{key} is not in {EXAMPLE.name}"
        else:
            assert f"\n{name} = " in text, f"{name} is not in {EXAMPLE.name}"
    for section, key in SECRET_KEYS:
        assert f"SECRET {section}.{key}" in text


def test_a_key_whose_name_ends_in_file_is_not_mistaken_for_a_secret_pointer() -> None:
    cfg = load_config(env={"ONRECORD_SALESFORCE__PRIVATE_KEY_FILE": "/etc/onrecord/sf.pem"})
    assert cfg.salesforce.private_key_file == "/etc/onrecord/sf.pem"


def test_the_defaults_bound_the_memory_unauthenticated_bodies_can_take() -> None:
    # A body is read whole before its signature can be checked, so anyone can make a worker hold
    # max_body_bytes for each request it serves at once.
    server = ServerConfig()
    at_once = server.worker_connections if server.worker_class == "gevent" else server.threads
    assert server.workers * at_once * server.max_body_bytes <= 1536 * 1024 * 1024


def test_the_connectors_contact_and_privacy_policy_are_checked_where_they_are_set() -> None:
    cfg = load_config(
        env={
            "ONRECORD_API__CONTACT_EMAIL": " crm-admins@contoso.com ",
            "ONRECORD_API__PRIVACY_URL": "https://www.contoso.com/privacy",
        }
    )
    assert (cfg.api.contact_email, cfg.api.privacy_url) == (
        "crm-admins@contoso.com",
        "https://www.contoso.com/privacy",
    )
    assert (load_config(env={}).api.contact_email, load_config(env={}).api.privacy_url) == ("", "")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("CONTACT_EMAIL", "crm-admins"),
        ("CONTACT_EMAIL", "CRM admins <crm-admins@contoso.com>"),
        ("CONTACT_EMAIL", "crm admins@contoso.com"),
        ("CONTACT_EMAIL", "a@" + "b" * 250 + ".com"),
        ("PRIVACY_URL", "http://www.contoso.com/privacy"),
        ("PRIVACY_URL", "www.contoso.com/privacy"),
        ("PRIVACY_URL", "https:///privacy"),
        ("PRIVACY_URL", "https://www.contoso.com/privacy policy"),
        ("PRIVACY_URL", "https://www.contoso.com/\x00"),
    ],
)
def test_a_contact_that_is_no_e_mail_or_a_policy_that_is_no_https_url_stops_start_up(
    key: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=rf"api\.{key.lower()}: .* must be "):
        load_config(env={f"ONRECORD_API__{key}": value})


def test_a_body_has_ten_seconds_and_no_proxy_is_trusted_unless_configured() -> None:
    # The defaults the hostile-sender fixes promise: a body that has not arrived 10 s after its
    # headers gets 408, and X-Forwarded-* count from no proxy until server.trusted_proxy_hops says.
    server = load_config(env={}).server
    assert (server.body_timeout_seconds, server.trusted_proxy_hops) == (10.0, 0)
    for key, value in (("BODY_TIMEOUT_SECONDS", "0"), ("TRUSTED_PROXY_HOPS", "-1")):
        with pytest.raises(ConfigError, match=rf"server\.{key.lower()}"):
            load_config(env={f"ONRECORD_SERVER__{key}": value})
