"""GET /api/leaders[?period=2026-W48]: leaders' signals, scores, trends and champion candidates
for a period (default: the current one), recomputed from the facts; 400 naming the problem for a
malformed period."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from plugin.api_auth import api_error, require_api_auth
from plugin.directory_store import current_directory
from plugin.leaders.periods import PeriodError
from plugin.leaders.store import leaders_snapshot
from plugin.runtime import runtime

blueprint = Blueprint("leaders", __name__)


@blueprint.get("/api/leaders")
@require_api_auth
def leaders() -> Response:
    """The leaders of a period, best score first."""
    rt = runtime()
    period = request.args.get("period")
    try:
        body = leaders_snapshot(
            rt.engine, rt.config_in_force, period or None, directory=current_directory(rt)
        )
    except PeriodError as exc:
        return api_error(400, "bad_period", str(exc))
    return jsonify(body)
