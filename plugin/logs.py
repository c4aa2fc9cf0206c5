"""JSON logs with a request id. Never a secret or a payload body in a log line."""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import uuid
from contextvars import ContextVar, Token

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

from plugin.config import Config

request_id: ContextVar[str] = ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure(config: Config) -> None:
    """Root logging: one JSON object per line on stderr (or plain text if logging.json is off)."""
    handler = logging.StreamHandler(sys.stderr)
    if config.logging.format == "json":
        handler.setFormatter(
            JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s", timestamp=False)
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.logging.level)
    # Third-party loggers that could print URLs with tokens or bodies stay quiet.
    for noisy in ("urllib3", "zeep", "simple_salesforce", "werkzeug", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_id_prefix = ""
_id_counter = itertools.count(1)


def _reset_request_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix = uuid.uuid4().hex[:16]
    _id_counter = itertools.count(1)


_reset_request_ids()
os.register_at_fork(after_in_child=_reset_request_ids)  # gunicorn's workers are forks


def _new_request_id() -> str:
    # Unique per process (random prefix) and per request (counter), without a getrandom call on
    # every request: that syscall gives up the GIL the other request threads are queuing for.
    return f"{_id_prefix}{next(_id_counter):016x}"


def bind_request_id(offered: str) -> tuple[str, Token[str]]:
    """The request's id (the caller's X-Request-Id if it is sane), set for every log line."""
    rid = offered if _SAFE_ID.match(offered) else _new_request_id()
    return rid, request_id.set(rid)


def init_app(app: Flask) -> None:
    """Give every Flask request an id and echo it back (HookRouter does the same for /hooks)."""

    @app.before_request
    def _assign() -> None:
        g.request_id, _ = bind_request_id(request.headers.get("X-Request-Id", ""))

    @app.after_request
    def _echo(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = g.get("request_id", "-")
        return resp
