"""Every HTTP route OnRecord serves, registered in one place."""

from __future__ import annotations

from flask import Flask

from plugin import registry
from plugin.approvals_view import blueprint as approvals
from plugin.leaders.api import blueprint as leaders
from plugin.openapi import blueprint as openapi
from plugin.ops import blueprint as ops
from plugin.provenance.api import blueprint as provenance
from plugin.receive import HookRouter
from plugin.runtime import Runtime


def init_app(app: Flask) -> None:
    """Register the blueprints of the core and of each connector, and the senders' hooks (what
    senders post to: each path goes through the one receive path, plugin/receive.py)."""
    for bp in (ops, openapi, provenance, approvals, leaders):
        app.register_blueprint(bp)

    def current_runtime() -> Runtime:
        rt: Runtime = app.extensions["onrecord"]
        return rt

    config = current_runtime().config
    for connector in registry.connectors():
        for bp in connector.blueprints():
            app.register_blueprint(bp)
        if connector.prepare is not None:
            connector.prepare(config)
    app.wsgi_app = HookRouter(app.wsgi_app, current_runtime, registry.hooks())  # type: ignore[method-assign]
