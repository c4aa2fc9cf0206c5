"""Every HTTP route OnRecord serves, registered in one place."""

from __future__ import annotations

from flask import Flask

from connectors.power_automate.subscriptions import blueprint as power_automate_subscriptions
from connectors.power_automate.views import HOOKS as POWER_AUTOMATE_HOOKS
from connectors.salesforce.events import HOOKS as SALESFORCE_EVENTS_HOOKS
from connectors.salesforce.outbound_view import HOOKS as SALESFORCE_OUTBOUND_HOOKS
from connectors.salesforce.outbound_view import preload as preload_outbound_wsdls
from plugin.approvals_view import blueprint as approvals
from plugin.leaders.api import blueprint as leaders
from plugin.openapi import blueprint as openapi
from plugin.ops import blueprint as ops
from plugin.provenance.api import blueprint as provenance
from plugin.receive import HookRouter, Source
from plugin.runtime import Runtime

# What senders post to: each path goes through the one receive path (plugin/receive.py).
HOOKS: dict[str, Source] = {**SALESFORCE_EVENTS_HOOKS, **SALESFORCE_OUTBOUND_HOOKS, **POWER_AUTOMATE_HOOKS}


def init_app(app: Flask) -> None:
    """Register the blueprints of the core and of each connector, and the senders' hooks."""
    for bp in (ops, power_automate_subscriptions, openapi, provenance, approvals, leaders):
        app.register_blueprint(bp)

    def current_runtime() -> Runtime:
        rt: Runtime = app.extensions["onrecord"]
        return rt

    preload_outbound_wsdls(current_runtime().config)
    app.wsgi_app = HookRouter(app.wsgi_app, current_runtime, HOOKS)  # type: ignore[method-assign]
