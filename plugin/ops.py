"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify

from plugin import metrics
from plugin.runtime import runtime
from plugin.writers import writer_kind

blueprint = Blueprint("ops", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """The process is up and answering."""
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> Response:
    """Ready when the database answers and the CRM writer can write; says why not."""
    rt = runtime()
    checks: dict[str, dict[str, object]] = {}
    try:
        with rt.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["database"] = {"ok": True, "detail": rt.engine.dialect.name}
    except Exception as exc:  # any failure means not ready; say which
        checks["database"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    # The primary CRM as "crm"; every other CRM something is governed in as "crm:<name>".
    others = sorted({g.crm for g in rt.config.governed} - {rt.config.crm.primary})
    for name, crm in [("crm", rt.config.crm.primary), *((f"crm:{c}", c) for c in others)]:
        try:
            ok, why = rt.writer_for(crm).ready()  # building the writer can fail too (a bad key file)
        except Exception as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"[:300]
        checks[name] = {"ok": ok, "detail": why, "writer": writer_kind(rt.config, crm)}
    ready = all(c["ok"] for c in checks.values())
    status = "ready" if ready else "not ready"
    if rt.config.crm_config.enabled:
        # A refused configuration from the CRM leaves OnRecord working on the last good one:
        # ready, but "degraded", with the record and field to fix.
        from plugin.crm_config_job import status_line

        try:
            state, why = status_line(rt.config, rt.engine)
        except Exception as exc:
            state, why = None, f"{type(exc).__name__}: {exc}"[:300]
        checks["crm_config"] = {"ok": True, "degraded": state is False, "detail": why}
        if ready and state is False:
            status = "degraded"
    resp = jsonify({"ready": ready, "status": status, "checks": checks})
    resp.status_code = 200 if ready else 503
    return resp


@blueprint.get("/metrics")
def metrics_view() -> Response:
    """Prometheus text format, merged across processes."""
    return Response(metrics.render(runtime().engine), mimetype="text/plain; version=0.0.4; charset=utf-8")
