"""Bodies that never arrive, or arrive broken, through real gunicorn over a raw socket: each is
answered 408 or 400 in the sender's format, with one log line, nothing stored, and the
connection closed — on both worker classes."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from plugin.storage import get_engine, inbox
from tests.conftest import TEST_SECRET
from tests.support.processes import Server, onrecord_env

pytestmark = pytest.mark.slow

PATH = "/hooks/salesforce/events"


@pytest.fixture(scope="module", params=["gevent", "gthread"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    sqlite_url = f"sqlite:///{tmp_path}/onrecord.db"  # one server per worker class: nothing succeeds
    env = onrecord_env(
        sqlite_url,
        tmp_path / "var",
        TEST_SECRET,
        ONRECORD_SERVER__WORKER_CLASS=request.param,
        ONRECORD_SERVER__BODY_TIMEOUT_SECONDS="1",
        ONRECORD_LOGGING__LEVEL="INFO",
    )
    srv = Server(env, tmp_path / "serve.log")
    srv.db_url = sqlite_url  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def exchange(server: Server, head: bytes, body_parts: list[bytes], pause: float = 0.0) -> tuple[bytes, float]:
    """Send the request head and body parts; return the whole answer and how long it took."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        started = time.monotonic()
        conn.sendall(head)
        for part in body_parts:
            time.sleep(pause)
            try:
                conn.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed before the sender finished: read the answer
        answer = b""
        while chunk := conn.recv(65536):  # until the server closes the connection
            answer += chunk
        return answer, time.monotonic() - started


def request_head(extra: str) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "webhook-id: msg_1\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,x\r\n"
        f"{extra}\r\n"
    ).encode()


def stored(server: Server) -> int:
    with get_engine(server.db_url).connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(sa.select(sa.func.count()).select_from(inbox)).scalar() or 0)


def test_a_body_that_never_comes_gets_408_and_the_connection_closed(server: Server) -> None:
    answer, took = exchange(server, request_head("Content-Length: 100\r\n"), [b'{"id":'])
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"body_timeout" in answer and b"Connection: close" in answer  # and recv saw it closed
    assert 0.9 < took < 8
    assert stored(server) == 0


def test_a_body_sent_a_byte_at_a_time_is_cut_at_the_deadline_not_per_byte(server: Server) -> None:
    parts = [b"x"] * 40  # one byte every 0.1 s: each read is quick, the whole is not
    answer, took = exchange(server, request_head("Content-Length: 40\r\n"), parts, pause=0.1)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert took < 3.5


@pytest.mark.parametrize(
    "chunked",
    [
        pytest.param(b"zz\r\nabc\r\n0\r\n\r\n", id="bad chunk size"),
        pytest.param(b"3\r\nabcXY0\r\n\r\n", id="missing CRLF"),
        pytest.param(b"a\r\nabc", id="truncated chunk"),
        pytest.param(b"3;" + b"e" * 20_000 + b"\r\nabc\r\n0\r\n\r\n", id="20 KB chunk extension"),
        pytest.param(b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n", id="bad trailer"),
    ],
)
def test_a_malformed_chunked_body_is_400_with_one_log_line(server: Server, chunked: bytes) -> None:
    head = request_head("Transfer-Encoding: chunked\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as conn:
        conn.sendall(head + chunked)
        conn.shutdown(socket.SHUT_WR)  # a truncated body ends here
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b"bad_body" in answer or b"Bad Request" in answer
    log = server.output()
    assert "Traceback" not in log and "internal_error" not in log
    assert stored(server) == 0
