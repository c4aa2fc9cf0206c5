"""Hostile bodies from senders that passed authentication, through real gunicorn over a raw socket:
each one a hostile-sender probe got a 500 (or worse, a 200) for. Every one must be 400 naming the
problem, with nothing stored, no 5xx and no traceback in the log, on both worker classes — the
Flask test client cannot show this, since the recursion depth a 100,000-deep body meets, and what
the server does with an error the app did not catch, are gunicorn's and the worker class's."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from plugin import strict_json
from plugin.storage import get_engine
from tests.conftest import TEST_SECRET
from tests.connectors.power_automate.support import API_KEY, API_TOKEN, CALLBACK_KEY
from tests.support.events import change_event, signed_headers
from tests.support.processes import Server, onrecord_env

pytestmark = pytest.mark.slow

DEEP = b"[" * 100_000 + b"]" * 100_000
# The bodies every JSON path must refuse, and the reason it must give (plugin/strict_json.py).
HOSTILE_JSON = [
    pytest.param(DEEP, "too_deep", id="100,000-deep nesting"),
    pytest.param(b'{"Amount": ' + b"9" * 4301 + b"}", "not_a_number", id="4,301-digit integer"),
    pytest.param(b'{"Amount": NaN}', "not_a_number", id="NaN"),
    pytest.param(b'{"Amount": Infinity}', "not_a_number", id="Infinity"),
    pytest.param(b'{"Amount": 1e400}', "not_a_number", id="1e400"),
    pytest.param(b'{"Amount": 1, "Amount": 2}', "duplicate_key", id="duplicate key"),
    pytest.param('{"Amount": 1}'.encode("utf-16"), "not_utf8", id="UTF-16"),
    pytest.param(b'{"Amount": "\xff"}', "not_utf8", id="invalid UTF-8"),
    pytest.param(b'{"Amount": "\\ud800"}', "bad_string", id="lone surrogate"),
]
AUTH = f"Authorization: Bearer {API_TOKEN}\r\n"


@pytest.fixture(scope="module", params=["gevent", "gthread"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp(f"hostile-{request.param}")
    sqlite_url = f"sqlite:///{tmp_path}/onrecord.db"
    env = onrecord_env(
        sqlite_url,
        tmp_path / "var",
        TEST_SECRET,
        ONRECORD_SERVER__WORKER_CLASS=request.param,
        ONRECORD_POWER_AUTOMATE__API_KEY=API_KEY,
        ONRECORD_API__TOKENS=json.dumps([API_TOKEN]),
        ONRECORD_API__CALLBACK_KEY=CALLBACK_KEY,
        ONRECORD_LOGGING__LEVEL="INFO",
    )
    srv = Server(env, tmp_path / "serve.log")
    srv.db_url = sqlite_url  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def exchange(server: Server, path: str, body: bytes, headers: str) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as raw bytes (no client library to tidy it up); the status and JSON answer."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(head + body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    status = int(status_line.split()[1])
    _, _, payload = rest.partition(b"\r\n\r\n")
    try:
        parsed: dict[str, Any] = json.loads(payload)
    except ValueError:
        parsed = {"raw": payload[:300].decode(errors="replace")}
    return status, parsed


def rows(server: Server) -> dict[str, int]:
    """Every table's row count: 'nothing stored' means none of them moved."""
    engine = get_engine(server.db_url)  # type: ignore[attr-defined]
    with engine.connect() as conn:
        tables = sa.inspect(conn).get_table_names()
        count = sa.select(sa.func.count())
        return {t: int(conn.execute(count.select_from(sa.table(t))).scalar() or 0) for t in tables}


def refused(server: Server, path: str, body: bytes, headers: str) -> dict[str, Any]:
    before, log_before = rows(server), len(server.output())
    status, answer = exchange(server, path, body, headers)
    assert status == 400, (status, answer)
    assert rows(server) == before
    log = server.output()[log_before:]
    assert "Traceback" not in log and "internal_error" not in log, log[-2000:]
    return answer


def names(answer: dict[str, Any], reason: str) -> bool:
    """The answer names the problem: as its machine-readable reason (the hooks, /api/subscriptions),
    or after the message (/api/verify and /api/citations answer reason bad_request, "... (reason)")."""
    return answer.get("reason") == reason or str(answer.get("error", "")).endswith(f"({reason})")


def signed(body: bytes) -> str:
    return "".join(
        f"{k}: {v}\r\n" for k, v in signed_headers(TEST_SECRET, body).items() if k != "content-type"
    )


@pytest.mark.parametrize(("raw", "reason"), HOSTILE_JSON)
def test_a_hostile_signed_event_body_is_400_naming_the_problem(
    server: Server, raw: bytes, reason: str
) -> None:
    answer = refused(server, "/hooks/salesforce/events", raw, signed(raw))
    assert answer.get("reason") == reason, answer


@pytest.mark.parametrize("path", ["/api/verify", "/api/citations", "/api/subscriptions"])
@pytest.mark.parametrize(("raw", "reason"), HOSTILE_JSON)
def test_a_hostile_api_body_is_400_naming_the_problem(
    server: Server, path: str, raw: bytes, reason: str
) -> None:
    answer = refused(server, path, raw, AUTH)
    assert names(answer, reason), answer


@pytest.mark.parametrize("path", ["/hooks/power-automate/forms", "/hooks/power-automate/signals"])
@pytest.mark.parametrize(("raw", "reason"), HOSTILE_JSON)
def test_a_hostile_flow_body_is_400(server: Server, path: str, raw: bytes, reason: str) -> None:
    answer = refused(server, path, raw, f"X-OnRecord-Key: {API_KEY}\r\n")
    # The flows' hooks answer every unreadable body as reason invalid_json (as they always have,
    # connectors/power_automate/payloads.py), the problem named in the message.
    with pytest.raises(strict_json.JsonRefused) as problem:
        strict_json.loads(raw)
    assert problem.value.reason == reason
    assert answer.get("reason") == "invalid_json" and problem.value.message in answer["error"], answer


@pytest.mark.parametrize("year", ["0001", "9999"])
def test_an_event_dated_where_onrecord_cannot_process_it_is_400(server: Server, year: str) -> None:
    event = change_event(1)
    event["occurred_at"] = f"{year}-01-01T00:00:00Z"
    raw = json.dumps(event).encode()
    answer = refused(server, "/hooks/salesforce/events", raw, signed(raw))
    assert "out of range" in answer.get("error", ""), answer


@pytest.mark.parametrize("control", ["\r\nX-Injected: 1", "\n", "\r", "\x00"])
def test_a_callback_url_with_a_control_character_is_400(server: Server, control: str) -> None:
    raw = json.dumps(
        {
            "callback_url": "https://prod-01.westeurope.logic.azure.com/workflows/1" + control,
            "events": ["approval.blocked"],
        }
    ).encode()
    answer = refused(server, "/api/subscriptions", raw, AUTH)
    assert answer.get("reason") == "bad_url", answer


def test_the_row_count_sees_what_is_stored(server: Server) -> None:
    # The control for "nothing stored": the same server, the same count, an ordinary event.
    raw = json.dumps(change_event(2)).encode()
    before = rows(server)
    status, answer = exchange(server, "/hooks/salesforce/events", raw, signed(raw))
    assert (status, answer.get("stored")) == (200, 1), answer
    assert rows(server) != before
