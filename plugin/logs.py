"""JSON logs with a request id. Never a secret or a payload body in a log line."""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar

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


def init_app(app: Flask) -> None:
    """Give every request an id (the caller's X-Request-Id if it is sane) and echo it back."""

    @app.before_request
    def _assign() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        g.request_id = rid
        request_id.set(rid)

    @app.after_request
    def _echo(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = g.get("request_id", "-")
        return resp
