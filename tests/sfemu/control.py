"""The emulator's own HTTP control API under /__emulator/, for tests that drive a subprocess.

    GET  /__emulator/calls                      -> [{"method","path","status","records","counted"}]
    GET  /__emulator/records/<Object>           -> [record, ...]
    GET  /__emulator/usage                      -> {"used": N, "limit": M}
    GET  /__emulator/deployments                -> [{"id", "status", "check_only", "files": [...]}]
    POST /__emulator/reset
    POST /__emulator/consumers     {"client_id", "certificate_pem"?, "client_secret"?, "run_as"?,
                                    "approved_users"?}
    POST /__emulator/login-history {"user_id", "login_time" (ISO 8601), "login_type"?, ...}
    POST /__emulator/sessions      {"username"} -> {"access_token", "instance_url", "user_id"}:
                                   act as that user (created if new) through REST
    POST /__emulator/faults        one or more of:
        {"expire_sessions": true}
        {"api_usage": {"used": N, "limit": M}}
        {"lock_rows": {"object", "keys": [...], "attempts": K}}
        {"reject_records": {"object", "keys": [...], "message", "status_code"?, "fields"?}}
        {"fail_next": {"count": N, "status": 503}}
        {"slow_down": {"seconds": S, "count": N}}
        {"fail_next_deploy": {"file": "objects/Opportunity.object", "problem": "..."}}
        {"clear": true}

No authentication: the emulator listens on 127.0.0.1 only and exists for tests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from tests.sfemu.server import SalesforceEmulator


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def handle(emu: SalesforceEmulator, request: Request) -> Response:
    path = request.path.removeprefix("/__emulator/").strip("/")
    try:
        body = request.get_json(silent=True) or {}
        if request.method == "GET" and path == "calls":
            return _json([dataclasses.asdict(c) for c in emu.calls])
        if request.method == "GET" and path.startswith("records/"):
            return _json(emu.records(path.removeprefix("records/")))
        if request.method == "GET" and path == "usage":
            used, limit = emu.api_usage
            return _json({"used": used, "limit": limit})
        if request.method == "GET" and path == "deployments":
            return _json(
                [
                    {"id": d.id, "status": d.status, "check_only": d.check_only, "files": sorted(d.files)}
                    for d in emu.deployments
                ]
            )
        if request.method == "POST" and path == "reset":
            emu.reset()
            return _json({"ok": True})
        if request.method == "POST" and path == "consumers":
            emu.register_consumer(
                body["client_id"],
                certificate_pem=body.get("certificate_pem"),
                client_secret=body.get("client_secret"),
                run_as=body.get("run_as"),
                approved_users=body.get("approved_users"),
            )
            return _json({"ok": True})
        if request.method == "POST" and path == "login-history":
            when = dt.datetime.fromisoformat(body.pop("login_time").replace("Z", "+00:00"))
            return _json({"id": emu.add_login_history(body.pop("user_id"), when, **body)})
        if request.method == "POST" and path == "sessions":
            token = emu.login_as(str(body["username"]))
            return _json(
                {
                    "access_token": token,
                    "instance_url": emu.base_url,
                    "user_id": emu.user_id(body["username"]),
                }
            )
        if request.method == "POST" and path == "faults":
            _faults(emu, body)
            return _json({"ok": True})
    except (KeyError, TypeError, ValueError) as exc:
        return _json({"error": f"bad control request: {exc!r}"}, 400)
    return _json({"error": f"no control resource {request.method} /__emulator/{path}"}, 404)


def _faults(emu: SalesforceEmulator, body: dict[str, Any]) -> None:
    if body.get("clear"):
        emu.clear_faults()
    if body.get("expire_sessions"):
        emu.expire_sessions()
    if "api_usage" in body:
        emu.set_api_usage(int(body["api_usage"]["used"]), body["api_usage"].get("limit"))
    if "lock_rows" in body:
        spec = body["lock_rows"]
        emu.lock_rows(spec["object"], spec["keys"], int(spec.get("attempts", 1)))
    if "reject_records" in body:
        spec = body["reject_records"]
        emu.reject_records(
            spec["object"],
            spec["keys"],
            spec["message"],
            status_code=spec.get("status_code", "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
            fields=spec.get("fields", ()),
        )
    if "fail_next" in body:
        emu.fail_next(
            int(body["fail_next"].get("count", 1)), status=int(body["fail_next"].get("status", 503))
        )
    if "fail_next_deploy" in body:
        emu.fail_next_deploy(body["fail_next_deploy"]["file"], body["fail_next_deploy"]["problem"])
    if "slow_down" in body:
        emu.slow_down(float(body["slow_down"]["seconds"]), body["slow_down"].get("count"))
