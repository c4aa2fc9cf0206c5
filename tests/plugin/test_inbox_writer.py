"""The inbox writer process: commits for every worker, answers only after COMMIT, fails loudly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from plugin import migrate
from plugin.events import Event
from plugin.inbox import GroupCommitter, prepare_rows
from plugin.inbox_writer import InboxWriter, SocketSink, WriterUnavailable, encode
from plugin.storage import get_engine, inbox
from tests.conftest import TEST_SECRET
from tests.support.events import change_event, signed
from tests.support.processes import ROOT, Server, onrecord_env, wait_for


def event(n: int) -> Event:
    return Event(
        source="test",
        delivery_id=f"d{n}",
        kind="record.changed",
        occurred_at=datetime.now(UTC),
        object="Opportunity",
        record_id=f"r{n}",
    )


def rows(*ns: int) -> list[tuple[object, ...]]:
    return prepare_rows("sqlite", [event(n) for n in ns], datetime.now(UTC))  # type: ignore[return-value]


@pytest.fixture
def writer(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[InboxWriter, str]]:
    engine = get_engine(sqlite_url)
    migrate.upgrade(engine)
    database = engine.url.database
    assert database
    socket_path = str(tmp_path / "inbox.sock")
    w = InboxWriter(database, socket_path)
    stop = threading.Event()
    thread = threading.Thread(target=w.serve, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: os.path.exists(socket_path), timeout=10)
    yield w, socket_path
    stop.set()
    thread.join(5)


def count(sqlite_url: str) -> int:
    with get_engine(sqlite_url).connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(inbox)).scalar() or 0)


def test_rows_are_committed_before_the_reply_and_duplicates_are_told_apart(
    writer: tuple[InboxWriter, str], sqlite_url: str
) -> None:
    _, path = writer
    sink = SocketSink(path, timeout=10)
    assert sink.write(rows(1, 2)) == {("test", "d1"), ("test", "d2")}
    assert count(sqlite_url) == 2  # durable by the time the reply arrived
    assert sink.write(rows(2, 3)) == {("test", "d3")}


def test_many_workers_share_the_writers_commits(writer: tuple[InboxWriter, str], sqlite_url: str) -> None:
    w, path = writer
    results: list[set[tuple[str, str]]] = []

    def worker(k: int) -> None:
        sink = SocketSink(path, timeout=30)
        for j in range(50):
            results.append(sink.write(rows(k * 1000 + j)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count(sqlite_url) == 800 and all(len(r) == 1 for r in results)
    assert w.commits < 800


def test_a_failed_commit_reaches_the_worker_as_an_error(
    writer: tuple[InboxWriter, str], sqlite_url: str
) -> None:
    _, path = writer
    with get_engine(sqlite_url).begin() as conn:
        conn.execute(sa.text("DROP TABLE inbox"))
    with pytest.raises(WriterUnavailable, match="no such table"):
        SocketSink(path, timeout=10).write(rows(1))


def test_no_writer_is_an_error_not_a_hang(tmp_path: Path) -> None:
    with pytest.raises(WriterUnavailable):
        SocketSink(str(tmp_path / "nobody.sock"), timeout=2).write(rows(1))


def test_requests_reuse_the_workers_connections_to_the_writer(
    writer: tuple[InboxWriter, str], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, socket_path = writer
    monkeypatch.setenv("ONRECORD_INBOX_SOCKET", socket_path)
    committer = GroupCommitter(get_engine(sqlite_url))

    for n in range(30):  # each request on a thread of its own, as gevent gives each a greenlet
        thread = threading.Thread(target=committer.store, args=([event(n)], 10))
        thread.start()
        thread.join()

    assert count(sqlite_url) == 30
    assert w.connections == 1


GREENLETS = """
import json, sys
from gevent import monkey
monkey.patch_all()  # as gunicorn's gevent worker does, before the app is built
import gevent
from datetime import UTC, datetime
from plugin.events import Event
from plugin.inbox import GroupCommitter
from plugin.storage import get_engine

committer = GroupCommitter(get_engine(sys.argv[1]))
def store(n):
    event = Event(source="test", delivery_id=f"g{n}", kind="record.changed",
                  occurred_at=datetime.now(UTC), object="Opportunity", record_id=f"r{n}")
    return committer.store([event], timeout=10).stored
jobs = [gevent.spawn(store, n) for n in range(50)]
gevent.joinall(jobs)
print(json.dumps([job.value for job in jobs]))
"""


def test_a_gevent_worker_sends_what_its_greenlets_queued_as_one_frame(
    writer: tuple[InboxWriter, str], sqlite_url: str
) -> None:
    w, socket_path = writer
    env = {**os.environ, "ONRECORD_INBOX_SOCKET": socket_path, "PYTHONPATH": str(ROOT)}

    out = subprocess.run(
        [sys.executable, "-c", GREENLETS, sqlite_url], env=env, capture_output=True, text=True, timeout=60
    )

    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [1] * 50  # each acknowledged after its commit
    assert count(sqlite_url) == 50
    assert w.connections == 1 and w.frames < 10  # not one frame per request


def _fake_writer(path: str, replies: list[bytes]) -> threading.Thread:
    """A writer that sends `replies` (raw byte chunks, a pause between them) to one request."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.recv(1 << 20)
            for chunk in replies:
                conn.sendall(chunk)
                time.sleep(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_reply_split_across_reads_is_put_back_together(tmp_path: Path) -> None:
    frame = encode({"new": [["test", "d1"]]})
    path = str(tmp_path / "w.sock")
    thread = _fake_writer(path, [frame[:2], frame[2:7], frame[7:]])

    assert SocketSink(path, timeout=5).write(rows(1)) == {("test", "d1")}
    thread.join(5)


def test_more_than_one_reply_to_one_request_is_an_error_not_a_misread(tmp_path: Path) -> None:
    path = str(tmp_path / "w.sock")
    thread = _fake_writer(path, [encode({"new": []}) + encode({"new": [["test", "d1"]]})])

    with pytest.raises(WriterUnavailable, match="more than one reply"):
        SocketSink(path, timeout=5).write(rows(1))
    thread.join(5)


@pytest.mark.slow
def test_serve_answers_503_while_the_writer_is_down_and_recovers_when_restarted(
    sqlite_url: str, tmp_path: Path
) -> None:
    server = Server(onrecord_env(sqlite_url, tmp_path / "var", TEST_SECRET), tmp_path / "serve.log")
    try:
        url = server.url + "/hooks/salesforce/events"
        body, headers = signed(TEST_SECRET, change_event(1))
        assert requests.post(url, data=body, headers=headers, timeout=10).status_code == 200
        writer_pids = [
            int(p)
            for p in os.listdir("/proc")
            if p.isdigit()
            and _cmdline(int(p)).find("inbox-writer") >= 0
            and str(server.popen.pid) in _cmdline(int(p))
        ]
        assert len(writer_pids) == 1
        os.kill(writer_pids[0], signal.SIGKILL)
        statuses = []
        for n in range(2, 40):
            body, headers = signed(TEST_SECRET, change_event(n))
            statuses.append(requests.post(url, data=body, headers=headers, timeout=30).status_code)
            if statuses[-1] == 200 and 503 in statuses:
                break
            threading.Event().wait(0.2)
        assert 503 in statuses and statuses[-1] == 200, statuses  # refused while down, then back
        assert "inbox writer exited" in server.output()
    finally:
        server.stop()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_the_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    import stat

    from plugin.storage import make_engine

    db = tmp_path / "var" / "onrecord.db"
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("CREATE TABLE t (x)")
    engine.dispose()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    db.chmod(0o644)  # a database made by an older version is tightened too
    make_engine(f"sqlite:///{db}").dispose()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
