"""The inbox writer: one process that makes every gunicorn worker's events durable on SQLite.

Why a process of its own: SQLite takes one writer at a time. When each gunicorn worker commits
for itself, its committer thread must win the GIL back from busy request threads after every
SQLite call (a convoy of up to a switch interval each), and the workers queue behind each
other's slowed transactions. One single-threaded writer has no GIL to share, merges the groups of
every worker into one transaction, and turns N small fsyncs into one.

`serve` starts it for a SQLite database and tells the workers its socket in ONRECORD_INBOX_SOCKET.
Protocol, over a Unix socket: frames of a 4-byte big-endian length and a JSON document.
    request  {"rows": [[column values in inbox._COLUMNS order], ...]}
    reply    {"new": [[source, delivery_id], ...]}   or   {"error": "..."}
A reply comes only after COMMIT returned, so a worker acknowledges nothing that is not durable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from plugin.inbox import Row, SqliteSink, row_key

log = logging.getLogger(__name__)

SOCKET_ENV = "ONRECORD_INBOX_SOCKET"
_HEADER = struct.Struct(">I")
_MAX_FRAME = 64 * 1024 * 1024  # far above max_body_bytes x group size; a guard, not a limit


class WriterUnavailable(Exception):
    """The writer could not be reached or answered with an error."""


@dataclass
class _Client:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)


class InboxWriter:
    """Serves commits on a Unix socket until `stop` is set (or the parent process is gone)."""

    def __init__(self, database: str, socket_path: str, *, parent_pid: int | None = None) -> None:
        self.database = database
        self.socket_path = socket_path
        self.parent_pid = parent_pid
        self.commits = 0
        self.connections = 0  # accepted from workers, ever: they should be reused, not one per request
        self.frames = 0  # requests received: one per group from a gevent worker
        self._sink = SqliteSink(database)

    def serve(self, stop: threading.Event) -> None:
        """The loop: wait for requests, commit all that arrived together, answer each."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is for this user only
        try:
            listener.bind(self.socket_path)
        finally:
            os.umask(old_umask)
        listener.listen(512)
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, None)
        try:
            while not stop.is_set():
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("parent process is gone; inbox writer stopping")
                    return
                requests: list[tuple[_Client, list[Row]]] = []
                for key, _ in selector.select(timeout=0.5):
                    if key.data is None:
                        self._accept(listener, selector)
                    else:
                        requests += self._read(key.data, selector)
                if requests:
                    self._commit(requests, selector)
        finally:
            selector.close()
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    def _accept(self, listener: socket.socket, selector: selectors.BaseSelector) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            self.connections += 1
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, _Client(sock))

    def _read(self, client: _Client, selector: selectors.BaseSelector) -> list[tuple[_Client, list[Row]]]:
        try:
            chunk = client.sock.recv(1 << 20)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        if not chunk:  # the worker went away
            selector.unregister(client.sock)
            client.sock.close()
            return []
        client.buffer += chunk
        found: list[tuple[_Client, list[Row]]] = []
        while len(client.buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(client.buffer)
            if size > _MAX_FRAME:
                log.error("oversized frame from a worker; closing it", extra={"reason": "bad_frame"})
                selector.unregister(client.sock)
                client.sock.close()
                return found
            if len(client.buffer) < _HEADER.size + size:
                break
            frame = bytes(client.buffer[_HEADER.size : _HEADER.size + size])
            del client.buffer[: _HEADER.size + size]
            found.append((client, [tuple(r) for r in json.loads(frame)["rows"]]))
            self.frames += 1
        return found

    def _commit(self, requests: list[tuple[_Client, list[Row]]], selector: selectors.BaseSelector) -> None:
        rows: list[Row] = []
        seen: set[tuple[str, str]] = set()
        for _, request_rows in requests:
            for row in request_rows:
                key = row_key(row)
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
        try:
            new = self.write(rows)
            replies: list[dict[str, Any]] = []
            for _, request_rows in requests:  # each new key goes to the first request that carried it
                mine = [list(k) for k in map(row_key, request_rows) if k in new]
                new.difference_update(tuple(k) for k in mine)
                replies.append({"new": mine})
        except Exception as exc:  # every waiting worker hears about it, and answers 503
            log.error("inbox commit failed", extra={"reason": "store_failed", "error": repr(exc)})
            replies = [{"error": f"{type(exc).__name__}: {exc}"} for _ in requests]
        for (client, _), reply in zip(requests, replies, strict=True):
            try:
                _send_reply(client.sock, encode(reply))
            except OSError:  # that worker is gone (or stopped reading); its sender will retry
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(client.sock)
                client.sock.close()

    def write(self, rows: Sequence[Row]) -> set[tuple[str, str]]:
        """One transaction under the cross-process write lock (the rules worker writes too)."""
        new = self._sink.write(rows)
        self.commits += 1
        return new


def _send_reply(sock: socket.socket, frame: bytes) -> None:
    """Send on the non-blocking socket; a reply that does not fit at once gets 5 s to go out."""
    try:
        sent = sock.send(frame)  # the asker waits for it, so its receive buffer is empty
    except BlockingIOError:
        sent = 0
    if sent < len(frame):
        sock.settimeout(5.0)
        try:
            sock.sendall(frame[sent:])
        finally:
            sock.setblocking(False)


def encode(document: Any) -> bytes:
    """One frame."""
    payload = json.dumps(document, separators=(",", ":")).encode()
    return _HEADER.pack(len(payload)) + payload


class SocketSink:
    """A GroupCommitter sink that hands its rows to the inbox writer (one connection, one thread)."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        self._path = socket_path
        self._timeout = timeout
        self._sock: socket.socket | None = None

    def write(self, rows: Sequence[Row]) -> set[tuple[str, str]]:
        """Send rows, wait for the commit, return the new keys."""
        frame = encode({"rows": [list(r) for r in rows]})
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(self._timeout)
                self._sock.connect(self._path)
            sent = self._sock.send(frame)  # a frame usually goes in one call (sendall asks more)
            if sent < len(frame):
                self._sock.sendall(frame[sent:])
            reply = json.loads(self._recv_frame())
        except (OSError, ValueError) as exc:
            self.close()  # a half-read reply must not be mistaken for the next one
            raise WriterUnavailable(f"inbox writer unavailable: {exc}") from exc
        if "error" in reply:
            raise WriterUnavailable(f"inbox writer could not commit: {reply['error']}")
        return {(source, delivery_id) for source, delivery_id in reply["new"]}

    def _recv_frame(self) -> bytes:
        # A reply is small and arrives whole, so one recv call reads it: every socket call gives
        # up the GIL, which the other request threads are queuing for.
        assert self._sock is not None
        data = b""
        while True:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("inbox writer closed the connection")
            data += chunk
            if len(data) >= _HEADER.size:
                end = _HEADER.size + _HEADER.unpack_from(data)[0]
                if len(data) == end:
                    return data[_HEADER.size :]
                if len(data) > end:  # one request, one reply: anything more is out of step
                    raise ConnectionError("inbox writer sent more than one reply")

    def close(self) -> None:
        """Drop the connection (the next write reconnects)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
