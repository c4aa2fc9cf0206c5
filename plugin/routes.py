"""Every HTTP route OnRecord serves, registered in one place."""

from __future__ import annotations

from flask import Flask

from connectors.power_automate.subscriptions import blueprint as power_automate_subscriptions
from connectors.power_automate.views import blueprint as power_automate
from connectors.salesforce.events import blueprint as salesforce_events
from connectors.salesforce.outbound_view import blueprint as salesforce_outbound
from plugin.openapi import blueprint as openapi
from plugin.ops import blueprint as ops
from plugin.provenance.api import blueprint as provenance


def init_app(app: Flask) -> None:
    """Register the blueprints of the core and of each connector."""
    for bp in (
        ops,
        salesforce_events,
        salesforce_outbound,
        power_automate,
        power_automate_subscriptions,
        openapi,
        provenance,
    ):
        app.register_blueprint(bp)
