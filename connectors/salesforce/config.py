"""The `[salesforce]` configuration section: the org, OnRecord's integration user, the connected
app OnRecord signs in with, and the secrets Salesforce's senders authenticate with."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from plugin.settings import Section as _Section
from plugin.settings import secret_list as _secret_list


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
