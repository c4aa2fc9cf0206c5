"""Every HTTP route OnRecord serves, registered in one place."""

from __future__ import annotations

from flask import Flask

from connectors.salesforce.events import blueprint as salesforce_events
from plugin.ops import blueprint as ops


def init_app(app: Flask) -> None:
    """Register the blueprints of the core and of each connector."""
    for bp in (ops, salesforce_events):
        app.register_blueprint(bp)
