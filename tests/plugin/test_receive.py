"""The shared receive path, as plain WSGI in front of Flask: what every source gets for free."""

from __future__ import annotations

import io
import logging
import multiprocessing
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugin import logs
from plugin.app import create_app
from plugin.events import Event
from plugin.receive import HookRouter, Incoming, Parsed, Rejected, Source, json_ack, json_refusal
from plugin.runtime import Runtime
from tests.conftest import make_config

PATH = "/hooks/test"


def _authenticate(incoming: Incoming) -> str:
    if incoming.headers.get("X-Test-Key") != "let-me-in":
        raise Rejected(401, "bad_key", "wrong key")
    return "tester"


def _parse(incoming: Incoming, sender: str) -> Parsed:
    if incoming.body == b"boom":
        raise RuntimeError("a bug in a parser")
    if incoming.query("ignore") == "1":
        return Parsed(events=[], ignored={"asked_to": 1})
    return Parsed(
        events=[
            Event(
                source="test",
                delivery_id=incoming.headers.get("X-Delivery", "d1"),
                kind="record.changed",
                occurred_at=datetime.now(UTC),
                object="Opportunity",
                record_id="0065g00000AbCdEAAA",
                sender=sender,
                raw_digest=incoming.digest,
                data={"size": len(incoming.body)},
            )
        ]
    )


TEST_SOURCE = Source("test", _authenticate, _parse, json_ack, json_refusal)


@pytest.fixture
def app(sqlite_url: str, tmp_path: Path) -> Flask:
    app = create_app(make_config(sqlite_url, tmp_path, **{"server.max_body_bytes": 1024}))
    rt: Runtime = app.extensions["onrecord"]
    app.wsgi_app = HookRouter(app.wsgi_app, lambda: rt, {PATH: TEST_SOURCE})  # type: ignore[method-assign]
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


KEY = {"X-Test-Key": "let-me-in"}


def test_a_stored_event_is_acknowledged_with_counts_and_a_request_id(client: FlaskClient) -> None:
    first = client.post(PATH, data=b"{}", headers=KEY)
    again = client.post(PATH, data=b"{}", headers={**KEY, "X-Request-Id": "caller-42"})

    assert first.status_code == 200 and first.json == {"stored": 1, "duplicates": 0, "ignored": 0}
    assert again.json == {"stored": 0, "duplicates": 1, "ignored": 0}
    assert len(first.headers["X-Request-Id"]) == 32
    assert again.headers["X-Request-Id"] == "caller-42"


def test_ignored_events_are_acknowledged_and_counted(client: FlaskClient) -> None:
    resp = client.post(f"{PATH}?ignore=1", data=b"{}", headers=KEY)

    assert resp.status_code == 200 and resp.json == {"stored": 0, "duplicates": 0, "ignored": 1}


def test_a_refusal_names_its_reason_and_logs_it_with_the_request_id(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="plugin.receive"):
        resp = client.post(PATH, data=b"{}", headers={"X-Request-Id": "req-7"})

    assert resp.status_code == 401 and resp.json == {"error": "wrong key", "reason": "bad_key"}
    [record] = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert record.reason == "bad_key"  # type: ignore[attr-defined]
    assert logs.request_id.get() == "-"  # reset once the request is answered


def test_only_post_is_accepted_and_the_reply_says_so(client: FlaskClient) -> None:
    resp = client.get(PATH, headers=KEY)

    assert resp.status_code == 405 and resp.headers["Allow"] == "POST"
    assert resp.json is not None and resp.json["reason"] == "method_not_allowed"


def test_a_body_over_the_limit_is_refused_before_it_is_read(client: FlaskClient) -> None:
    resp = client.post(PATH, data=b"x" * 1025, headers=KEY)

    assert resp.status_code == 413 and resp.json is not None and resp.json["reason"] == "too_large"


def test_a_chunked_body_over_the_limit_is_refused_too(app: Flask) -> None:
    status, body = _call(app, b"x" * 5000, content_length=None)

    assert status.startswith("413") and b"too_large" in body


@pytest.mark.parametrize(
    ("content_length", "body", "reason"),
    [("12x", b"{}", b"bad_length"), ("-1", b"{}", b"bad_length"), ("10", b"{}", b"incomplete_body")],
)
def test_a_content_length_that_does_not_fit_the_body_is_a_400(
    app: Flask, content_length: str, body: bytes, reason: bytes
) -> None:
    status, answer = _call(app, body, content_length=content_length)

    assert status.startswith("400") and reason in answer


def test_a_bug_in_a_source_is_a_500_in_the_sources_format_and_nothing_is_stored(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="plugin.receive"):
        resp = client.post(PATH, data=b"boom", headers=KEY)

    assert resp.status_code == 500
    assert resp.json is not None and resp.json["reason"] == "internal_error"
    assert "a bug in a parser" not in resp.get_data(as_text=True)  # details stay in the log
    assert any(r.exc_info for r in caplog.records)
    assert client.post(PATH, data=b"{}", headers=KEY).json == {"stored": 1, "duplicates": 0, "ignored": 0}


def test_other_paths_are_flasks(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.post(PATH + "/more", data=b"{}", headers=KEY).status_code == 404


def _call(app: Flask, body: bytes, *, content_length: str | None) -> tuple[str, bytes]:
    """Straight through WSGI, where the test client would fix up Content-Length itself."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": PATH,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "HTTP_X_TEST_KEY": "let-me-in",
    }
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    seen: list[str] = []
    chunks = app(environ, lambda status, headers, exc_info=None: seen.append(status))  # type: ignore[arg-type,func-returns-value]
    return seen[0], b"".join(chunks)


def _child_request_id(conn: Any) -> None:
    conn.send(logs.bind_request_id("")[0])


def test_request_ids_differ_between_forked_workers() -> None:
    parent = logs.bind_request_id("")[0]
    ctx = multiprocessing.get_context("fork")  # as gunicorn makes its workers
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_request_id, args=(writer,))
    child.start()
    forked = reader.recv()
    child.join(10)

    assert len(parent) == len(forked) == 32
    assert parent[:16] != forked[:16]


@pytest.fixture(autouse=True)
def _no_request_id_left_behind() -> Iterator[None]:
    token = logs.request_id.set("-")
    yield
    logs.request_id.reset(token)
