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
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connectors.dataverse.config import DataverseConfig

ENV_PREFIX = "ONRECORD_"
# Variables with the prefix that are not configuration keys.
NOT_CONFIG = frozenset({"ONRECORD_CONFIG", "ONRECORD_TEST_POSTGRES_URL", "ONRECORD_INBOX_SOCKET"})
DEFAULT_CONFIG_PATH = Path("config/onrecord.toml")


class ConfigError(Exception):
    """The configuration is invalid; the message names every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    kind: Literal["auto", "dry_run", "salesforce"] = "auto"  # auto: salesforce if credentials exist


class SalesforceConfig(_Section):
    org_id: str = ""
    integration_user_id: str = ""
    login_url: str = "https://login.salesforce.com"
    # "jwt": OAuth 2.0 JWT bearer (client_id, username, private_key_file);
    # "client_credentials": client_id and the secret salesforce.client_secret.
    auth: Literal["jwt", "client_credentials"] = "jwt"
    client_id: str = ""
    username: str = ""
    private_key_file: str = ""
    api_version: str = "62.0"
    ca_bundle: str = ""
    timeout_seconds: float = Field(30.0, gt=0, le=600)
    # Pause writing once the org's daily API usage passes this share of its limit.
    api_budget_share: float = Field(0.8, gt=0, le=1)
    # Outbound message WSDLs ("Click for WSDL" on the message's Setup page); globs allowed.
    outbound_wsdls: list[str] = Field(default_factory=lambda: ["config/*.wsdl"])
    # Where a TLS-terminating proxy passes the client certificate's SHA-256 fingerprint, and the
    # fingerprints accepted (hex, colons optional). Empty header: not checked.
    client_cert_header: str = ""
    client_cert_fingerprints: list[str] = Field(default_factory=list)
    # How often the worker polls LoginHistory (0: never; `poll logins` still works).
    poll_logins_interval_seconds: float = Field(300.0, ge=0)
    events_tolerance_seconds: int = Field(300, ge=1, le=3600)
    # secrets (environment or files only)
    events_secret: list[str] = Field(default_factory=list)  # whsec_..., several during rotation
    outbound_token: str = ""  # the ?token= of the outbound message endpoint URL
    client_secret: str = ""  # the connected app's secret, for client_credentials

    @field_validator("events_secret", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _secret_list(v)

    @field_validator("events_secret")
    @classmethod
    def _whsec(cls, v: list[str]) -> list[str]:
        from plugin.signatures import SignatureError, decode_secret

        for s in v:  # refused here exactly when the receiver would refuse it: never both
            try:
                decode_secret(s)
            except SignatureError as exc:
                raise ValueError(f"each secret must look like whsec_<base64>: {exc}") from None
        return v

    @field_validator("outbound_token")
    @classmethod
    def _long_enough(cls, v: str) -> str:
        if v and len(v) < 24:
            raise ValueError("must be at least 24 characters (generate one with `python -m plugin init`)")
        return v


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


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# A callback host pattern: a name, or "*." and a domain (any subdomain of it), optionally ":port".
_HOST_PATTERN = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d{1,5})?$"
)
# Where Power Automate and Logic Apps callback (trigger) URLs live: classic flows and Logic Apps
# ("https://prod-NN.<region>.logic.azure.com:443/workflows/..."), and newer Power Automate
# environments ("https://<env>.NN.environment.api.powerplatform.com:443/powerautomate/...").
DEFAULT_CALLBACK_HOSTS = ("*.logic.azure.com", "*.environment.api.powerplatform.com")


def _secret_list(v: Any) -> Any:
    """A secret given as one string, or several (rotation) as a JSON list."""
    if isinstance(v, str):
        v = v.strip()
        if v.startswith("["):
            return json.loads(v)
        return [v] if v else []
    return v


AuthMode = Literal["entra", "api_key"]
AUTH_MODES: tuple[AuthMode, ...] = ("entra", "api_key")


class PowerAutomateConfig(_Section):
    # Which ways of authenticating the flows' HTTP actions are accepted on /hooks/power-automate/*.
    # A mode counts only once configured; with none configured every request is refused (503).
    auth_modes: list[AuthMode] = Field(default_factory=lambda: list(AUTH_MODES))
    # Entra ID app-only tokens ("Active Directory OAuth" in the HTTP action). Set tenant_id to enable.
    entra_tenant_id: str = ""
    entra_audiences: list[str] = Field(default_factory=list, validate_default=True)
    entra_allowed_client_ids: list[str] = Field(default_factory=list, validate_default=True)
    entra_required_role: str = Field("", validate_default=True)
    entra_jwks_url: str = ""  # default: the tenant's keys at login.microsoftonline.com
    entra_leeway_seconds: int = Field(120, ge=0, le=600)
    # secret (environment or files only): the X-OnRecord-Key value(s), several during rotation
    api_key: list[str] = Field(default_factory=list)

    @field_validator("entra_tenant_id")
    @classmethod
    def _tenant_guid(cls, v: str) -> str:
        if v and not _GUID.match(v.strip()):
            raise ValueError("must be the tenant's id (a GUID), not a domain or 'common'")
        return v.strip().lower()

    @field_validator("entra_audiences", "entra_required_role")
    @classmethod
    def _needed_with_tenant(cls, v: Any, info: ValidationInfo) -> Any:
        if info.data.get("entra_tenant_id") and not v:
            raise ValueError("is required when entra_tenant_id is set")
        return v

    @field_validator("entra_allowed_client_ids")
    @classmethod
    def _client_guids(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("entra_tenant_id") and not v:
            raise ValueError("is required when entra_tenant_id is set (the flows' app ids; fail closed)")
        for client in v:
            if not _GUID.match(client.strip()):
                raise ValueError(f"{client!r} is not a client (application) id GUID")
        return [c.strip().lower() for c in v]

    @field_validator("entra_jwks_url")
    @classmethod
    def _https_jwks(cls, v: str) -> str:
        parts = urlsplit(v)
        loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
        if v and parts.scheme != "https" and not loopback:
            raise ValueError("must be an https:// URL (http only on loopback)")
        return v

    @field_validator("api_key", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _secret_list(v)

    @field_validator("api_key")
    @classmethod
    def _long_enough(cls, v: list[str]) -> list[str]:
        if any(len(k) < 20 for k in v):
            raise ValueError("each key must be at least 20 characters")
        return v


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
    # secrets (environment or files only)
    tokens: list[str] = Field(default_factory=list)  # bearer tokens for /api/*, as a JSON list
    callback_key: list[str] = Field(default_factory=list)  # Fernet key(s): the first encrypts

    @field_validator("public_url")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if v and not v.startswith(("https://", "http://")):
            raise ValueError("must be an absolute http(s) URL")
        return v.rstrip("/")

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


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Config(BaseModel):
    """The whole validated configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    var_dir: str = "var"
    secrets_dir: str = "var/secrets"
    # [[governed]] tables; environment: ONRECORD_GOVERNED='[{"object": "Opportunity", "fields": [...]}]'
    governed: list[GovernedObject] = Field(default_factory=list)
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    worker: WorkerConfig = WorkerConfig()
    dispatch: DispatchConfig = DispatchConfig()
    crm: CrmConfig = CrmConfig()
    salesforce: SalesforceConfig = SalesforceConfig()
    dataverse: DataverseConfig = DataverseConfig()
    power_automate: PowerAutomateConfig = PowerAutomateConfig()
    api: ApiConfig = ApiConfig()
    provenance: ProvenanceConfig = ProvenanceConfig()
    directory: DirectoryConfig = DirectoryConfig()
    leaders: LeadersConfig = LeadersConfig()
    logging: LoggingConfig = LoggingConfig()


# section.key names whose values are secrets.
SECRET_KEYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("salesforce", "events_secret"),
        ("salesforce", "outbound_token"),
        ("salesforce", "client_secret"),
        ("dataverse", "client_secret"),
        ("dataverse", "webhook_key"),
        ("power_automate", "api_key"),
        ("api", "tokens"),
        ("api", "callback_key"),
        ("provenance", "key_passphrase"),
    }
)
# Secrets init never generates: the passphrase is the admin's choice, and the connected app's
# secret comes from Salesforce (a made-up one would only make the writer fail to log in).
OPTIONAL_SECRETS: frozenset[tuple[str, str]] = frozenset(
    {("provenance", "key_passphrase"), ("salesforce", "client_secret"), ("dataverse", "client_secret")}
)


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
    secret_files = {env_name(section, key) + "_FILE" for section, key in SECRET_KEYS}
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in NOT_CONFIG or name in secret_files:
            continue  # secrets' _FILE pointers are read by _read_secrets
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
