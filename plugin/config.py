"""Configuration: the TOML file, overridden by ONRECORD_<SECTION>__<KEY> variables, validated once.

Secrets never come from the TOML file. Each secret key is read from, in order:
the variable `ONRECORD_<SECTION>__<KEY>`, the file named by `ONRECORD_<SECTION>__<KEY>_FILE`,
or the file `<secrets_dir>/<section>.<key>` (where `init` keeps generated dev secrets).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "ONRECORD_"
# Variables with the prefix that are not configuration keys.
NOT_CONFIG = frozenset({"ONRECORD_CONFIG", "ONRECORD_TEST_POSTGRES_URL"})
DEFAULT_CONFIG_PATH = Path("config/onrecord.toml")


class ConfigError(Exception):
    """The configuration is invalid; the message names every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(2, ge=1, le=64)
    threads: int = Field(16, ge=1, le=256)
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    run_worker: bool = True  # `serve` also runs one rules worker (single-machine default)
    store_timeout_seconds: float = Field(10.0, gt=0)  # give up storing, answer 503


class StorageConfig(_Section):
    url: str = "sqlite:///var/onrecord.db"
    group_commit_max: int = Field(500, ge=1, le=10000)  # rows per shared commit

    @field_validator("url")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if not v.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return v


class WorkerConfig(_Section):
    batch_size: int = Field(200, ge=1, le=5000)  # inbox events claimed at a time
    lease_seconds: float = Field(30.0, gt=0)  # a dead worker's claims are retaken after this
    poll_interval_seconds: float = Field(0.2, gt=0)
    # Rules run on each event: "module:attribute" paths, each a Rule or a list of Rules.
    rules: list[str] = Field(default_factory=lambda: ["plugin.rules:builtin_rules"])


class DispatchConfig(_Section):
    batch_size: int = Field(200, ge=1, le=200)  # Salesforce sObject Collections take at most 200
    claim_size: int = Field(2000, ge=1, le=20000)
    max_attempts: int = Field(8, ge=1, le=100)
    backoff_base_seconds: float = Field(2.0, gt=0)
    backoff_max_seconds: float = Field(900.0, gt=0)
    lease_seconds: float = Field(60.0, gt=0)
    # object -> external id field used to upsert (writes that carry an external id)
    external_ids: dict[str, str] = Field(default_factory=dict)


class CrmConfig(_Section):
    kind: Literal["auto", "dry_run", "salesforce"] = "auto"  # auto: salesforce if credentials exist


class SalesforceConfig(_Section):
    org_id: str = ""
    integration_user_id: str = ""
    login_url: str = "https://login.salesforce.com"
    client_id: str = ""
    username: str = ""
    private_key_file: str = ""
    api_version: str = "62.0"
    ca_bundle: str = ""
    # secrets (environment or files only)
    events_secret: list[str] = Field(default_factory=list)  # whsec_..., several during rotation
    events_tolerance_seconds: int = Field(300, ge=1, le=3600)

    @field_validator("events_secret", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [v] if v else []
        return v

    @field_validator("events_secret")
    @classmethod
    def _whsec(cls, v: list[str]) -> list[str]:
        for s in v:
            if not s.startswith("whsec_") or len(s) < 16:
                raise ValueError("each secret must look like whsec_<base64>")
        return v


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Config(BaseModel):
    """The whole validated configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    var_dir: str = "var"
    secrets_dir: str = "var/secrets"
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    worker: WorkerConfig = WorkerConfig()
    dispatch: DispatchConfig = DispatchConfig()
    crm: CrmConfig = CrmConfig()
    salesforce: SalesforceConfig = SalesforceConfig()
    logging: LoggingConfig = LoggingConfig()


# section.key names whose values are secrets.
SECRET_KEYS: frozenset[tuple[str, str]] = frozenset({("salesforce", "events_secret")})


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read, merge and validate; raise ConfigError naming each bad key."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    cfg_path = Path(path or env.get("ONRECORD_CONFIG") or DEFAULT_CONFIG_PATH)
    if path is not None or "ONRECORD_CONFIG" in env or cfg_path.exists():
        try:
            raw = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {cfg_path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {cfg_path}: {exc}") from exc
    errors = [
        f"{section}.{key}: secrets may not be written in the TOML file; set "
        f"{env_name(section, key)} or {env_name(section, key)}_FILE"
        for section, key in sorted(SECRET_KEYS)
        if key in raw.get(section, {})
    ]
    errors += _apply_env(raw, env)
    if errors:
        raise ConfigError("\n".join(errors))
    _apply_overrides(raw, overrides or {})
    secrets_dir = Path(raw.get("secrets_dir", Config.model_fields["secrets_dir"].default))
    try:
        _read_secrets(raw, env, secrets_dir)
    except OSError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """Fold ONRECORD_* variables into `raw`; return errors for unknown or malformed ones."""
    errors: list[str] = []
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in NOT_CONFIG or name.endswith("_FILE"):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if tuple(parts) in SECRET_KEYS:
            continue  # read by _read_secrets
        target: Any = Config
        for part in parts:
            fields = getattr(target, "model_fields", None)
            if fields is None or part not in fields:
                errors.append(f"{name}: unknown configuration key {'.'.join(parts)}")
                target = None
                break
            target = fields[part].annotation
        if target is None:
            continue
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if _is_structured(target):
            try:
                node[parts[-1]] = json.loads(value)
            except json.JSONDecodeError as exc:
                errors.append(f"{name}: {'.'.join(parts)} must be JSON ({exc.msg})")
        else:
            node[parts[-1]] = value
    return errors


def _is_structured(annotation: Any) -> bool:
    origin = getattr(annotation, "__origin__", None)
    return origin in (list, dict) or (isinstance(annotation, type) and issubclass(annotation, BaseModel))


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Dotted-key overrides for tests and the CLI: {"storage.url": "..."}."""
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value


def _read_secrets(raw: dict[str, Any], env: Mapping[str, str], secrets_dir: Path) -> None:
    for section, key in SECRET_KEYS:
        if key in raw.get(section, {}):  # set by overrides (tests)
            continue
        name = env_name(section, key)
        value: str | None = env.get(name)
        if value is None and env.get(name + "_FILE"):
            value = Path(env[name + "_FILE"]).read_text(encoding="utf-8").strip()
        if value is None:
            candidate = secrets_dir / f"{section}.{key}"
            if candidate.is_file():
                value = candidate.read_text(encoding="utf-8").strip()
        if value is not None:
            raw.setdefault(section, {})[key] = value


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown configuration key"
        if loc.split(".")[:2] and tuple(loc.split(".")[:2]) in SECRET_KEYS:
            lines.append(f"{loc}: {msg}")  # never echo a secret's value
        else:
            lines.append(f"{loc}: {msg} (got {err.get('input')!r})")
    return "\n".join(lines)
