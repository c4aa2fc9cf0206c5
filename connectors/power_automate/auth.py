"""From configuration to verifiers: who may call /hooks/power-automate/* and /api/*.

The Entra ID verifier holds the tenant's signing keys in a cache, so there is one per settings per
app (built on first use), never one per request.
"""

from __future__ import annotations

import dataclasses
import threading

from connectors.power_automate.entra import EntraSettings, EntraVerifier
from plugin.config import Config
from plugin.runtime import Runtime

_EXTENSION = "power_automate.entra_verifiers"
_lock = threading.Lock()


def entra_settings(config: Config, *, role: str = "") -> EntraSettings | None:
    """The configured Entra ID settings (with `role` instead of the configured one), or None."""
    from connectors.power_automate.connector import settings as pa_settings

    pa = pa_settings(config)
    if not pa.entra_tenant_id:
        return None
    settings = EntraSettings(
        tenant_id=pa.entra_tenant_id,
        audiences=tuple(pa.entra_audiences),
        allowed_client_ids=tuple(pa.entra_allowed_client_ids),
        required_role=pa.entra_required_role,
        jwks_url=pa.entra_jwks_url,
        leeway_seconds=pa.entra_leeway_seconds,
    )
    return dataclasses.replace(settings, required_role=role) if role else settings


def entra_verifier(rt: Runtime, settings: EntraSettings) -> EntraVerifier:
    """This app's verifier for `settings` (one key cache each)."""
    with _lock:
        verifiers: dict[EntraSettings, EntraVerifier] = rt.extensions.setdefault(_EXTENSION, {})
        verifier = verifiers.get(settings)
        if verifier is None:
            verifier = verifiers[settings] = EntraVerifier(settings)
        return verifier
