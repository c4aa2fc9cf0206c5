"""The `[power_automate]` configuration section: how the flows' HTTP actions authenticate on
/hooks/power-automate/* (Entra ID app-only tokens, API keys)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator

from plugin.settings import GUID as _GUID
from plugin.settings import Section as _Section
from plugin.settings import secret_list as _secret_list

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
