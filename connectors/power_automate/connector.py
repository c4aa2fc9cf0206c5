"""The Power Automate connector as the core sees it (plugin/registry.py): the flows' hooks, the
webhook-trigger subscriptions and their notifier, Entra ID tokens for /api/*, its checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from connectors.power_automate.config import PowerAutomateConfig
from plugin.registry import CheckLine, Connector

if TYPE_CHECKING:
    from flask import Blueprint
    from sqlalchemy.engine import Engine

    from plugin.config import Config
    from plugin.dispatch import Notifier
    from plugin.openapi import Operation
    from plugin.receive import Source
    from plugin.runtime import Runtime

NAME = "power_automate"


def settings(config: Config) -> PowerAutomateConfig:
    """The `[power_automate]` section, typed."""
    return config.section(NAME, PowerAutomateConfig)


def _hooks() -> Mapping[str, Source]:
    from connectors.power_automate.views import HOOKS

    return HOOKS


def _models() -> Sequence[type[BaseModel]]:
    from connectors.power_automate.models import OPENAPI_MODELS

    return OPENAPI_MODELS


def _operations() -> Sequence[Operation]:
    from connectors.power_automate.openapi import OPERATIONS

    return OPERATIONS


def _path_extensions() -> Mapping[str, Mapping[str, Any]]:
    from connectors.power_automate.openapi import PATH_EXTENSIONS

    return PATH_EXTENSIONS


def _blueprints() -> Sequence[Blueprint]:
    from connectors.power_automate.subscriptions import blueprint

    return (blueprint,)


def _notifier(config: Config, engine: Engine) -> Notifier:
    from connectors.power_automate.subscriptions import build_notifier

    return build_notifier(config, engine)


def _api_verifier(rt: Runtime) -> Callable[[str], str] | None:
    """Entra ID app-only tokens on /api/*, checked as on the hooks, with api.entra_required_role."""
    config = rt.config
    if not config.api.accept_entra:
        return None
    from connectors.power_automate.auth import entra_settings, entra_verifier
    from connectors.power_automate.entra import AuthRejected
    from plugin.api_auth import ApiAuthError

    entra = entra_settings(config, role=config.api.entra_required_role)
    if entra is None:
        return None

    def verify(authorization: str) -> str:
        try:
            return entra_verifier(rt, entra).verify(authorization).sender
        except AuthRejected as exc:
            if exc.reason == "jwks_unavailable":
                raise ApiAuthError(503, exc.reason, "the tenant's signing keys cannot be fetched") from exc
            raise ApiAuthError(401, exc.reason, exc.message) from exc

    return verify


def _checks(config: Config) -> Sequence[CheckLine]:
    pa = settings(config)
    modes = []
    if "entra" in pa.auth_modes and pa.entra_tenant_id:
        modes.append(f"Entra ID tenant {pa.entra_tenant_id}")
    if "api_key" in pa.auth_modes and pa.api_key:
        modes.append(f"{len(pa.api_key)} API key(s)")
    if modes:
        return [(True, f"POST /hooks/power-automate/*: {', '.join(modes)}")]
    return [(None, "POST /hooks/power-automate/*: no Entra ID tenant or API key configured, refuses all")]


CONNECTOR = Connector(
    name=NAME,
    settings=PowerAutomateConfig,
    secrets=frozenset({"api_key"}),
    hooks=_hooks,
    blueprints=_blueprints,
    openapi_models=_models,
    openapi_operations=_operations,
    openapi_path_extensions=_path_extensions,
    checks=_checks,
    api_verifier=_api_verifier,
    entra_tenant=lambda config: settings(config).entra_tenant_id,
    notifier=_notifier,
)
