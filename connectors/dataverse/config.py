"""The `[dataverse]` configuration section: where the Dataverse environment is, how OnRecord
signs in to it (an Entra app registration with client credentials, mapped to an application
user), and how Dataverse's webhook authenticates to OnRecord."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from plugin.settings import GUID as _GUID
from plugin.settings import Section, secret_list

# How the webhook registration (Plug-in Registration Tool, "Register New Web Hook") authenticates:
# "WebhookKey" appends ?code=<key>; "HttpHeader" sends configured header(s); "HttpQueryString"
# adds configured query parameter(s).
WebhookAuth = Literal["webhook_key", "http_header", "http_query_string"]


def _https(v: str, *, what: str) -> str:
    v = v.strip().rstrip("/")
    parts = urlsplit(v)
    if v and (parts.scheme != "https" or not parts.hostname):
        raise ValueError(f"{what} must be an https:// URL")
    if v and (parts.query or parts.fragment):
        raise ValueError(f"{what} must not carry a query or fragment")
    return v


class DataverseConfig(Section):
    # The environment's URL, as Power Platform admin center shows it: https://contoso.crm4.dynamics.com
    url: str = ""
    # The Entra app registration OnRecord signs in with (client credentials), and its tenant.
    tenant_id: str = ""
    client_id: str = ""
    authority_host: str = "https://login.microsoftonline.com"
    api_version: str = Field("9.2", pattern=r"^9\.[0-9]$")
    ca_bundle: str = ""
    timeout_seconds: float = Field(30.0, gt=0, le=600)
    # The application user's systemuserid: changes made by it are OnRecord's own, never judged.
    application_user_id: str = ""
    # The environment's organization id: a webhook body from any other (a sandbox copied from
    # production keeps the webhook and its key) is refused with 403. Empty: not checked.
    organization_id: str = ""
    # The publisher prefix of OnRecord's columns and tables (onr_approval, onr_violation, ...).
    publisher_prefix: str = Field("onr", pattern=r"^[a-z][a-z0-9]{1,7}$")
    # The unmanaged solution `provision` adds OnRecord's tables and columns to (its unique name,
    # sent as MSCRM.SolutionUniqueName; its publisher must own publisher_prefix). Empty: the
    # environment's default solution.
    solution: str = Field("", pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,64})?$")
    # Requests per $batch (Dataverse allows at most 1000).
    max_batch: int = Field(200, ge=1, le=1000)
    # How the webhook authenticates, and the header or query parameter name carrying the key
    # (WebhookKey always uses `code`).
    webhook_auth: WebhookAuth = "webhook_key"
    webhook_param: str = Field("code", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # How often the worker polls Dataverse auditing for leaders' logins (0: never).
    poll_audit_interval_seconds: float = Field(300.0, ge=0)
    # secrets (environment or files only)
    client_secret: str = ""
    webhook_key: list[str] = Field(default_factory=list)  # several during rotation

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _https(v, what="url")

    @field_validator("authority_host")
    @classmethod
    def _authority(cls, v: str) -> str:
        return _https(v, what="authority_host")

    @field_validator("tenant_id", "client_id", "application_user_id", "organization_id")
    @classmethod
    def _guid(cls, v: str) -> str:
        v = v.strip()
        if v and not _GUID.match(v):
            raise ValueError("must be a GUID")
        return v.lower()

    @field_validator("webhook_key", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return secret_list(v)

    @field_validator("webhook_key")
    @classmethod
    def _long_enough(cls, v: list[str]) -> list[str]:
        if any(len(k) < 24 for k in v):
            raise ValueError("each key must be at least 24 characters (`python -m plugin init` makes one)")
        return v

    def configured(self) -> bool:
        """Whether OnRecord can sign in to write."""
        return bool(self.url and self.tenant_id and self.client_id and self.client_secret)
