"""Configuration: the TOML file, overridden by ONRECORD_<SECTION>__<KEY> variables, validated once.

Secrets never come from the TOML file. Each secret key is read from, in order:
the variable `ONRECORD_<SECTION>__<KEY>`, the file named by `ONRECORD_<SECTION>__<KEY>_FILE`,
or the file `<secrets_dir>/<section>.<key>` (where `init` keeps generated dev secrets).
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from plugin.api_models import EMAIL_RE
from plugin.settings import Section as _Section
from plugin.settings import secret_list as _secret_list

ENV_PREFIX = "ONRECORD_"
# Variables with the prefix that are not configuration keys.
NOT_CONFIG = frozenset({"ONRECORD_CONFIG", "ONRECORD_TEST_POSTGRES_URL", "ONRECORD_INBOX_SOCKET"})
DEFAULT_CONFIG_PATH = Path("config/onrecord.toml")


class ConfigError(Exception):
    """The configuration is invalid; the message names every offending key."""


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(2, ge=1, le=64)
    # gevent: each request is a greenlet, so waiting for its commit costs no thread switch and no
    # GIL handoff (docs/benchmarks.md); gthread: `threads` OS threads per worker.
    worker_class: Literal["gevent", "gthread"] = "gevent"
    threads: int = Field(16, ge=1, le=256)
    # gevent: requests one worker serves at once; each may hold a body of max_body_bytes in memory
    worker_connections: int = Field(100, ge=1, le=10000)
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    run_worker: bool = True  # `serve` also runs one rules worker (single-machine default)
    store_timeout_seconds: float = Field(10.0, gt=0)  # give up storing, answer 503
    # A request's body must have arrived this long after its headers, or it gets 408.
    body_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Reverse proxies in front of OnRecord whose X-Forwarded-For/Proto/Host/Prefix are trusted (the
    # nearest N hops; werkzeug's ProxyFix). 0: the headers are ignored (a client could forge them).
    trusted_proxy_hops: int = Field(0, ge=0, le=5)


class StorageConfig(_Section):
    url: str = "sqlite:///var/onrecord.db"
    group_commit_max: int = Field(500, ge=1, le=10000)  # rows per shared commit
    # Days a processed (done) event keeps its payload; then only its evidence stays. 0: keep all.
    retention_days: int = Field(0, ge=0, le=36500)

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
    # Scheduling priority the worker lowers itself by (nice), so that on a shared machine the
    # receive path, which acknowledges senders, gets the CPU first. 0: as the parent.
    nice: int = Field(10, ge=0, le=19)
    # Scheduled jobs (pollers): "module:attribute" paths of factories(config) -> list of Jobs.
    jobs: list[str] = Field(default_factory=lambda: ["plugin.jobs:builtin_jobs"])


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
    # "auto": each CRM is written to when its credentials are configured, else its writes go to
    # the dry run; "dry_run": every CRM's; a CRM's name: that CRM's writer even without credentials
    # (so `check` says what is missing). Checked against the installed CRM connectors.
    kind: str = Field("auto", pattern=r"^[a-z][a-z0-9_]{0,39}$")
    # The CRM that writes not tied to one governed record go to (leader signals), and the one
    # `provision`, `poll logins` and `directory --refresh` mean without --crm.
    primary: str = Field("salesforce", pattern=r"^[a-z][a-z0-9_]{0,39}$")


_API_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,79}$"


class ApprovalStage(_Section):
    """One stage of an approval policy: who may decide it, what counts as yes, how many must."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_ .-]{0,79}$")
    # e-mails / UPNs, CRM user ids, or Salesforce public group names (resolved through the directory)
    approvers: list[str] = Field(min_length=1)
    approve_responses: list[str] = Field(default_factory=lambda: ["Approve"], min_length=1)
    # "first": one approver's yes decides the stage; "everyone": every approver must say yes
    require: Literal["first", "everyone"] = "first"

    @field_validator("approvers", "approve_responses")
    @classmethod
    def _non_blank(cls, v: list[str]) -> list[str]:
        for item in v:
            if not item.strip() or len(item) > 255:
                raise ValueError(f"{item!r} must be 1-255 characters")
        return [item.strip() for item in v]


class GovernedObject(_Section):
    """A CRM object OnRecord governs, and the fields whose provenance it tracks."""

    object: str = Field(pattern=_API_NAME)
    # The CRM the object lives in (a CRM connector's name: "salesforce", "dataverse").
    crm: str = Field("salesforce", pattern=r"^[a-z][a-z0-9_]{0,39}$")
    fields: list[str] = Field(min_length=1)
    # Approval-governed objects: the field holding the approval status, its type, and the
    # values that mean "approved". `provision` adds a validation rule that lets only OnRecord's
    # integration user set one of them. Empty approval_field: not approval-governed.
    approval_field: str = Field("", pattern=r"^([A-Za-z][A-Za-z0-9_]{0,79})?$")
    approval_field_type: Literal["picklist", "text", "checkbox"] = "picklist"
    approved_values: list[str] = Field(default_factory=list, validate_default=True)

    @field_validator("approved_values")
    @classmethod
    def _approved_values(cls, v: list[str], info: ValidationInfo) -> list[str]:
        kind = info.data.get("approval_field_type", "picklist")
        if info.data.get("approval_field") and kind != "checkbox" and not v:
            raise ValueError("is required when approval_field is set (the values that mean approved)")
        for value in v:
            if not value or len(value) > 255 or any(c in value for c in '"\\\r\n'):
                raise ValueError(f"{value!r} must be 1-255 characters without quotes, backslashes, newlines")
        return v

    # The approval policy (form-only approvals): the official form, its stages in order, what an
    # unproven approval falls back to. Set together with approval_field; see docs/approvals.md.
    form_id: str = Field("", max_length=200)
    stages: list[ApprovalStage] = Field(default_factory=list)
    revert_to: str = Field("", max_length=255)
    set_status: bool = True  # OnRecord sets the approved value itself once a chain is proven
    status_writers: list[str] = Field(default_factory=list)  # CRM users also allowed to set it
    grace_seconds: int = Field(600, ge=0, le=7 * 86400)  # wait this long for late flow events
    max_chain_age_days: int = Field(30, ge=1, le=3650)

    @model_validator(mode="after")
    def _policy(self) -> GovernedObject:
        if not self.approval_field:
            if self.stages or self.form_id or self.revert_to or self.status_writers:
                raise ValueError("approval_field is required with form_id, stages, revert_to, status_writers")
            return self
        if not self.stages:
            raise ValueError(
                "stages: an approval policy needs at least one stage ({name, approvers}); "
                "approval_field is set but stages is empty"
            )
        if not self.form_id.strip():
            raise ValueError("form_id: is required when approval_field is set (the official form's id)")
        names = [s.name.lower() for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: stage names must be unique, got {[s.name for s in self.stages]}")
        if self.approval_field_type == "checkbox":
            if self.revert_to:
                raise ValueError("revert_to: a checkbox approval falls back to false; leave revert_to empty")
        elif not self.revert_to:
            raise ValueError("revert_to: is required (the status an unproven approval falls back to)")
        elif self.revert_to in self.approved_values:
            raise ValueError(f"revert_to: {self.revert_to!r} is itself an approved value")
        return self


# A callback host pattern: a name, or "*." and a domain (any subdomain of it), optionally ":port".
_HOST_PATTERN = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d{1,5})?$"
)
# Where Power Automate and Logic Apps callback (trigger) URLs live: classic flows and Logic Apps
# ("https://prod-NN.<region>.logic.azure.com:443/workflows/..."), and newer Power Automate
# environments ("https://<env>.NN.environment.api.powerplatform.com:443/powerautomate/...").
DEFAULT_CALLBACK_HOSTS = ("*.logic.azure.com", "*.environment.api.powerplatform.com")


class ApiConfig(_Section):
    # The address Power Automate and Salesforce reach OnRecord at ("https://onrecord.contoso.com"),
    # for Location headers and the OpenAPI documents. Empty: taken from each request.
    public_url: str = ""
    # Also accept Entra ID app-only tokens (power_automate.entra_*) on /api/*.
    accept_entra: bool = True
    entra_required_role: str = ""  # empty: power_automate.entra_required_role
    # Hosts subscription callbacks may point at: names, "*.domain", optionally ":port" (else 443).
    callback_hosts: list[str] = Field(default_factory=lambda: list(DEFAULT_CALLBACK_HOSTS))
    # Deliver to callbacks whose address is private, loopback, link-local... (tests only).
    callback_allow_private_addresses: bool = False
    callback_ca_bundle: str = ""  # CA bundle to trust for callbacks instead of the system's
    callback_timeout_seconds: float = Field(10.0, gt=0, le=60)
    # The Power Automate connector's publisher details in /openapi-v2.json (info.contact.email and
    # x-ms-connector-metadata's "Privacy policy"): whose they are is the deployment owner's choice,
    # so nothing is made up when they are unset; Microsoft's connector certification asks for both.
    contact_email: str = ""
    privacy_url: str = ""
    # secrets (environment or files only)
    tokens: list[str] = Field(default_factory=list)  # bearer tokens for /api/*, as a JSON list
    callback_key: list[str] = Field(default_factory=list)  # Fernet key(s): the first encrypts

    @field_validator("public_url")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if v and not v.startswith(("https://", "http://")):
            raise ValueError("must be an absolute http(s) URL")
        return v.rstrip("/")

    @field_validator("contact_email")
    @classmethod
    def _email(cls, v: str) -> str:
        # The connector schema declares info.contact.email with format "email": one address, no
        # display name, so the document an admin imports is refused nowhere.
        v = v.strip()
        if v and (len(v) > 254 or not EMAIL_RE.match(v)):
            raise ValueError("must be one e-mail address, like crm-admins@contoso.com")
        return v

    @field_validator("privacy_url")
    @classmethod
    def _https(cls, v: str) -> str:
        # Shown to every flow author who adds the connector: a public page, so https with a host, and
        # nothing (spaces, control characters) that would make it a different link once rendered.
        v = v.strip()
        if not v:
            return v
        parts = urlsplit(v)
        if (
            parts.scheme != "https"
            or not parts.hostname
            or any(c.isspace() or not c.isprintable() for c in v)
        ):
            raise ValueError("must be an https:// URL with a host and no spaces")
        return v

    @field_validator("callback_hosts")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for host in v:
            if not _HOST_PATTERN.match(host.lower()):
                raise ValueError(f"{host!r} is not a host name or *.domain (optionally :port)")
        return [h.lower() for h in v]

    @field_validator("tokens", "callback_key", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _secret_list(v)

    @field_validator("tokens")
    @classmethod
    def _long_enough(cls, v: list[str]) -> list[str]:
        if any(len(t) < 20 for t in v):
            raise ValueError("each token must be at least 20 characters")
        return v

    @field_validator("callback_key")
    @classmethod
    def _fernet(cls, v: list[str]) -> list[str]:
        for key in v:
            try:
                valid = len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
            except (ValueError, UnicodeEncodeError):
                valid = False
            if not valid:
                raise ValueError("each key must be a Fernet key (32 bytes, url-safe base64)")
        return v


class ProvenanceConfig(_Section):
    # Where the Ed25519 signing keys live (keys.json and the active key's PEM, mode 0600);
    # empty: <var_dir>/keys.
    key_dir: str = ""
    # The log's origin line in checkpoints and the key name of their signed notes: a schema-less URL.
    log_origin: str = Field("onrecord.local/provenance", pattern=r"^[^\s+]{1,200}$")
    # CRM users whose changes are channel "API" (integrations) and "Import" (bulk loads).
    api_user_ids: list[str] = Field(default_factory=list)
    import_user_ids: list[str] = Field(default_factory=list)
    # A change correlates with a form response or flow run at most this long after it.
    form_window_seconds: int = Field(600, ge=1, le=86400)
    # The fields written on each governed record.
    channel_field: str = Field("OnRecord_Channel__c", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
    source_field: str = Field("OnRecord_Source__c", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
    recorded_at_field: str = Field("OnRecord_Recorded_At__c", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
    digest_field: str = Field("OnRecord_Digest__c", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
    signature_field: str = Field("OnRecord_Signature__c", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
    # secret (environment or files only, optional): encrypts the private key file
    key_passphrase: str = ""


class DirectoryPerson(_Section):
    """A person OnRecord should know by name, whatever the CRM's user table says."""

    name: str = Field(min_length=1, max_length=255)
    emails: list[str] = Field(default_factory=list)  # e-mail addresses and UPNs
    salesforce_id: str = ""
    groups: list[str] = Field(default_factory=list)  # approver group names this person belongs to

    @field_validator("emails")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        for e in v:
            if "@" not in e or len(e) > 320 or any(c.isspace() for c in e.strip()):
                raise ValueError(f"{e!r} is not an e-mail address or UPN")
        return [e.strip().lower() for e in v]


class DirectoryConfig(_Section):
    # People from configuration (always), merged with the CRM's users when Salesforce is connected.
    people: list[DirectoryPerson] = Field(default_factory=list)
    # How often the worker re-reads the CRM's users and public groups (0: never).
    refresh_seconds: float = Field(3600.0, ge=0)


# What each leader signal is worth in the buy-in score (published in the README; change the
# version whenever the weights change, so a score always names the weights it was computed with).
SIGNAL_KINDS = (
    "login",
    "record_touched",
    "form_approval",
    "off_system_approval",
    "training",
    "citation",
    "report_view",
    "dashboard_view",
)
DEFAULT_WEIGHTS: dict[str, float] = {
    "login": 1.0,
    "record_touched": 2.0,
    "form_approval": 3.0,
    "off_system_approval": -10.0,
    "training": 5.0,
    "citation": 4.0,
    "report_view": 0.5,
    "dashboard_view": 0.5,
}


class LeaderEntry(_Section):
    """A leader, by e-mail / UPN and/or CRM user id."""

    email: str = ""
    salesforce_id: str = ""
    name: str = ""

    @model_validator(mode="after")
    def _identified(self) -> LeaderEntry:
        if not self.email and not self.salesforce_id:
            raise ValueError("a leader needs an email or a salesforce_id")
        if self.email and ("@" not in self.email or any(c.isspace() for c in self.email.strip())):
            raise ValueError(f"email: {self.email!r} is not an e-mail address or UPN")
        return self


class LeadersConfig(_Section):
    # Who counts as a leader: listed users, and/or everyone in these Salesforce roles (UserRole.Name,
    # resolved through the directory). Integration and flow users never count.
    users: list[LeaderEntry] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    # Periods: ISO weeks ("2026-W48") or days ("2026-11-26").
    period: Literal["week", "day"] = "week"
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    weights_version: str = Field("2026.1", min_length=1, max_length=40)
    # Champion candidates: the top `champions_top` leaders scoring over `champion_threshold` who
    # gave no off-system approval in the last `champion_clean_periods` periods (this one included).
    champions_top: int = Field(2, ge=0, le=100)
    champion_threshold: float = 10.0
    champion_clean_periods: int = Field(4, ge=1, le=104)
    # Salesforce Campaign ids whose members' "Attended" status counts as training.
    training_campaigns: list[str] = Field(default_factory=list)
    # How often the worker recomputes the periods that changed (seconds).
    aggregate_seconds: float = Field(60.0, gt=0)

    @field_validator("weights")
    @classmethod
    def _known_kinds(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(SIGNAL_KINDS))
        if unknown:
            raise ValueError(f"unknown signal kinds {unknown}; known: {list(SIGNAL_KINDS)}")
        if v.get("off_system_approval", 0) > 0:
            raise ValueError("off_system_approval must weigh zero or less")
        return {kind: float(v.get(kind, 0.0)) for kind in SIGNAL_KINDS}


class CrmConfigSection(_Section):
    # Configuration from the CRM (docs/configuration-in-crm.md): the primary CRM's OnRecord custom
    # metadata records define the governed objects, approval policies, leaders and score settings,
    # replacing those sections of this file. false: the CRM's records are never read.
    enabled: bool = False
    # How often the worker re-reads them (and once at start), in seconds.
    refresh_seconds: float = Field(300.0, ge=10, le=86400)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Config(BaseModel):
    """The whole validated configuration.

    The core's sections are declared here; each connector's section (`[salesforce]`,
    `[dataverse]`, `[power_automate]`, ...) is declared in its own folder and validated by
    `load_config` with the same rules: read it with `section(name, Model)`."""

    # "allow": the connectors' sections, each already validated by load_config (unknown
    # top-level keys are refused there, by name).
    model_config = ConfigDict(extra="allow", frozen=True)

    var_dir: str = "var"
    secrets_dir: str = "var/secrets"
    # [[governed]] tables; environment: ONRECORD_GOVERNED='[{"object": "Opportunity", "fields": [...]}]'
    governed: list[GovernedObject] = Field(default_factory=list)
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    worker: WorkerConfig = WorkerConfig()
    dispatch: DispatchConfig = DispatchConfig()
    crm: CrmConfig = CrmConfig()
    api: ApiConfig = ApiConfig()
    provenance: ProvenanceConfig = ProvenanceConfig()
    directory: DirectoryConfig = DirectoryConfig()
    leaders: LeadersConfig = LeadersConfig()
    crm_config: CrmConfigSection = CrmConfigSection()
    logging: LoggingConfig = LoggingConfig()

    # The configuration version from the CRM this configuration applies (plugin/crm_config.py's
    # `apply` sets it); empty for the file's own. Not a key: nothing reads it from the file.
    _crm_version: str = PrivateAttr(default="")
    # The file's configuration it was made from (so applying the next version starts from the file)
    _crm_base: Config | None = PrivateAttr(default=None)

    @property
    def crm_version(self) -> str:
        """The version of the CRM's configuration records in force here ("": the file alone)."""
        return self._crm_version

    def section(self, name: str, model: type[S]) -> S:
        """A connector's section, typed (e.g. `config.section("salesforce", SalesforceConfig)`)."""
        value = (self.__pydantic_extra__ or {}).get(name)
        if not isinstance(value, model):
            raise KeyError(f"no [{name}] section of type {model.__name__} (is its connector installed?)")
        return value


S = TypeVar("S", bound=BaseModel)

# The core's section.key names whose values are secrets (connectors declare their own).
CORE_SECRET_KEYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("api", "tokens"),
        ("api", "callback_key"),
        ("provenance", "key_passphrase"),
    }
)
# Secrets init never generates: the passphrase is the admin's choice.
CORE_OPTIONAL_SECRETS: frozenset[tuple[str, str]] = frozenset({("provenance", "key_passphrase")})


def secret_keys() -> frozenset[tuple[str, str]]:
    """Every section.key whose value is a secret: the core's and every connector's."""
    from plugin import registry

    return CORE_SECRET_KEYS | registry.secret_keys()


def optional_secrets() -> frozenset[tuple[str, str]]:
    """Secrets `init` does not generate (an admin's choice, or a value the CRM hands out)."""
    from plugin import registry

    return CORE_OPTIONAL_SECRETS | registry.optional_secret_keys()


def section_models() -> dict[str, Any]:
    """Top-level key -> its annotation: the core's fields and every connector's section."""
    from plugin import registry

    found: dict[str, Any] = {name: f.annotation for name, f in Config.model_fields.items()}
    for name, model in registry.settings_sections().items():
        if name in found:
            raise ValueError(f"connector section [{name}] collides with a core configuration key")
        found[name] = model
    return found


def __getattr__(name: str) -> Any:
    # SECRET_KEYS / OPTIONAL_SECRETS as constants for older callers; computed on first use
    # because the connectors' sections are discovered, not imported here.
    if name == "SECRET_KEYS":
        return secret_keys()
    if name == "OPTIONAL_SECRETS":
        return optional_secrets()
    raise AttributeError(name)


def import_setting(setting: str, path: str) -> Any:
    """The object a "module:attribute" setting names (worker.rules, worker.jobs)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{setting}: {path!r} is not of the form module:attribute")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{setting}: cannot import {path!r}: {exc}") from exc


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
        for section, key in sorted(secret_keys())
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
    return _validate(raw)


def revalidate(base: Config, replace: Mapping[str, Any]) -> Config:
    """`base` with some top-level sections replaced (raw values), validated by the very code that
    validates the file (configuration from the CRM: plugin/crm_config.py), so the same mistake
    gets the same message. Raises ConfigError like load_config."""
    raw: dict[str, Any] = base.model_dump()
    raw.update(replace)
    return _validate(raw)


def _validate(raw: dict[str, Any]) -> Config:
    """The core's sections by the Config model, each connector's by its own, every error named."""
    from plugin import registry

    errors: list[str] = []
    sections = registry.settings_sections()
    unknown = sorted(set(raw) - set(Config.model_fields) - set(sections))
    errors += [f"{name}: unknown configuration key" for name in unknown]
    validated: dict[str, Any] = {}
    for name, model in sections.items():
        try:
            validated[name] = model.model_validate(raw.get(name, {}))
        except ValidationError as exc:
            errors.append(_describe(exc, prefix=name))
    core = {k: v for k, v in raw.items() if k in Config.model_fields}
    try:
        config = Config.model_validate({**core, **validated})
    except ValidationError as exc:
        errors.append(_describe(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    errors += _known_crms(config)
    if errors:
        raise ConfigError("\n".join(errors))
    return config


def _known_crms(config: Config) -> list[str]:
    """`crm.kind` and each governed object's `crm` must name a CRM a connector provides."""
    from plugin import registry

    names = registry.crm_names()
    errors = []
    if config.crm.primary not in names:
        errors.append(f"crm.primary: must be one of {', '.join(names)} (got {config.crm.primary!r})")
    if config.crm.kind not in ("auto", "dry_run", *names):
        allowed = ", ".join(("auto", "dry_run", *names))
        errors.append(f"crm.kind: must be one of {allowed} (got {config.crm.kind!r})")
    if config.crm_config.enabled and config.crm.primary in names:
        side = registry.crm_side(config.crm.primary)
        if side.read_config is None:
            able = [n for n in names if registry.crm_side(n).read_config is not None]
            errors.append(
                f"crm_config.enabled: configuration records are read from the primary CRM, and "
                f"{config.crm.primary!r} offers none (one of: {', '.join(able) or 'none'})"
            )
    seen: dict[str, str] = {}
    for i, governed in enumerate(config.governed):
        if governed.crm not in names:
            errors.append(f"governed.{i}.crm: must be one of {', '.join(names)} (got {governed.crm!r})")
        elif seen.setdefault(governed.object, governed.crm) != governed.crm:
            # Rules and the outbox know a record by object name and id: one name, one CRM.
            errors.append(f"governed.{i}.object: {governed.object!r} is governed in two CRMs")
    return errors


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """Fold ONRECORD_* variables into `raw`; return errors for unknown or malformed ones."""
    errors: list[str] = []
    secrets = secret_keys()
    models = section_models()
    secret_files = {env_name(section, key) + "_FILE" for section, key in secrets}
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in NOT_CONFIG or name in secret_files:
            continue  # secrets' _FILE pointers are read by _read_secrets
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if tuple(parts) in secrets:
            continue  # read by _read_secrets
        target: Any = None
        for depth, part in enumerate(parts):
            fields = models if depth == 0 else getattr(target, "model_fields", None)
            if fields is None or part not in fields:
                errors.append(f"{name}: unknown configuration key {'.'.join(parts)}")
                target = None
                break
            target = fields[part] if depth == 0 else fields[part].annotation
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
    for section, key in sorted(secret_keys()):
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


def _describe(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    secrets = secret_keys()
    for err in exc.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown configuration key"
        if loc.split(".")[:2] and tuple(loc.split(".")[:2]) in secrets:
            lines.append(f"{loc}: {msg}")  # never echo a secret's value
        else:
            lines.append(f"{loc}: {msg} (got {err.get('input')!r})")
    return "\n".join(lines)
