"""The application factory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from plugin import logs, migrate, routes
from plugin.config import Config, load_config
from plugin.inbox import committer_for
from plugin.runtime import Runtime
from plugin.storage import get_engine


def create_app(config: Config | None = None, overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the WSGI app: configuration, storage (migrated), routes, logging."""
    config = config or load_config(overrides=overrides)
    app = Flask("onrecord")
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    app.extensions["onrecord"] = Runtime(
        config=config,
        engine=engine,
        committer=committer_for(engine, config.storage.group_commit_max, config.server.store_timeout_seconds),
    )
    logs.init_app(app)
    routes.init_app(app)
    hops = config.server.trusted_proxy_hops
    if hops:
        # Outermost, so /hooks (HookRouter) and Flask see the same client address, scheme, host
        # and prefix; only the nearest `hops` proxies' X-Forwarded-* values are believed.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops
        )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        # JSON for every error, with a reason a script (and a metric) can key on.
        reason = (exc.name or "error").lower().replace(" ", "_")
        resp = jsonify({"error": exc.description, "reason": reason})
        resp.status_code = exc.code or 500
        return resp

    return app
