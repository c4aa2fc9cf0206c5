"""`POST /api/data/v9.x/$batch`: multipart/mixed batches with change sets, as Dataverse runs them.

From "Execute batch operations using the Web API"
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api):
- at most 1000 requests in a batch; no batch inside a batch;
- requests run in order, responses come back in the same order, each part
  `Content-Type: application/http` + `Content-Transfer-Encoding: binary`, inside
  `--batchresponse_<id>` boundaries;
- a change set (`Content-Type: multipart/mixed; boundary=changeset_...`) is atomic: when one of
  its requests fails, the ones before it are rolled back; GET is not allowed inside one;
  `Content-ID` headers are echoed on the responses;
- without `Prefer: odata.continue-on-error` the batch stops at the first failure and answers with
  that failure's status; with it, every request runs and the batch answers 200 OK.
  When a change set fails, the emulator answers one response for the whole change set (the
  failing request's), as OData 4.0 part 1, 11.7.4 prescribes.

Requests inside the batch are routed through the same Flask app (so extension modules' routes
work in batches too), carrying the batch's Authorization header.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from werkzeug.wrappers import Request, Response

from tests.dvemu import odata
from tests.dvemu.state import DataverseState

if TYPE_CHECKING:
    from flask import Flask

MAX_REQUESTS = 1000
CRLF = "\r\n"


@dataclass
class Part:
    """One request of a batch (or a change set holding several)."""

    method: str = ""
    target: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_id: str | None = None
    changeset: list[Part] | None = None


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    content_id: str | None = None


class BatchSyntaxError(ValueError):
    pass


def _boundary(content_type: str) -> str | None:
    for piece in content_type.split(";")[1:]:
        name, _, value = piece.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"')
    return None


def _split_parts(body: bytes, boundary: str) -> list[bytes]:
    delimiter = b"--" + boundary.encode()
    chunks = body.split(delimiter)
    if len(chunks) < 2:
        raise BatchSyntaxError(f"no part delimited by --{boundary}")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        parts.append(chunk.removeprefix(b"\r\n").removeprefix(b"\n"))
    else:
        raise BatchSyntaxError(f"the batch does not end with --{boundary}--")
    return parts


def _headers_and_rest(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    text_end = data.find(b"\r\n\r\n")
    sep = 4
    if text_end < 0:
        text_end, sep = data.find(b"\n\n"), 2
    if text_end < 0:
        head, rest = data, b""
    else:
        head, rest = data[:text_end], data[text_end + sep :]
    headers = []
    for line in head.decode("utf-8").splitlines():
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise BatchSyntaxError(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return headers, rest


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name.lower()), None)


def _http_request(part: bytes) -> Part:
    mime_headers, rest = _headers_and_rest(part)
    content_type = (_get(mime_headers, "Content-Type") or "").lower()
    if not content_type.startswith("application/http"):
        raise BatchSyntaxError(f"a batch part must be application/http, not {content_type!r}")
    request_line, _, after = rest.partition(b"\n")
    pieces = request_line.decode("utf-8").strip().split(" ")
    if len(pieces) != 3 or not pieces[2].startswith("HTTP/"):
        raise BatchSyntaxError(f"bad request line {request_line!r}")
    if after.startswith((b"\r\n", b"\n")):  # no headers: the blank line follows the request line
        headers, body = [], after.split(b"\n", 1)[1]
    else:
        headers, body = _headers_and_rest(after)
    # A part's body runs to the next delimiter, which is preceded by CRLF (RFC 2046).
    body = body.removesuffix(b"\r\n").removesuffix(b"\n")
    return Part(pieces[0].upper(), pieces[1], headers, body, _get(mime_headers, "Content-ID"))


def parse(body: bytes, boundary: str) -> list[Part]:
    items = []
    for raw in _split_parts(body, boundary):
        mime_headers, rest = _headers_and_rest(raw)
        content_type = _get(mime_headers, "Content-Type") or ""
        if content_type.lower().startswith("multipart/mixed"):
            inner = _boundary(content_type)
            if not inner:
                raise BatchSyntaxError("a change set needs a boundary")
            requests = [_http_request(p) for p in _split_parts(rest, inner)]
            if any(r.method == "GET" for r in requests):
                raise BatchSyntaxError("GET requests are not allowed within change sets")
            items.append(Part(changeset=requests))
        else:
            items.append(_http_request(raw))
    return items


def _render(answer: Answer) -> str:
    phrase = HTTPStatus(answer.status).phrase if answer.status in HTTPStatus._value2member_map_ else ""
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if answer.content_id is not None:
        lines.append(f"Content-ID: {answer.content_id}")
    lines += ["", f"HTTP/1.1 {answer.status} {phrase}".rstrip()]
    lines += [f"{k}: {v}" for k, v in answer.headers if k.lower() not in ("content-length",)]
    lines += ["", answer.body.decode("utf-8")]
    return CRLF.join(lines) + CRLF


class Batch:
    """Runs one $batch request."""

    def __init__(self, app: Flask, state: DataverseState, request: Request) -> None:
        self.app = app
        self.state = state
        self.request = request
        self.boundary = _boundary(request.headers.get("Content-Type", "")) or ""

    def run(self) -> Response:
        if not request_is_multipart(self.request):
            return odata.error_response(
                400, odata.BAD_URI, "The batch request must be multipart/mixed with a boundary."
            )
        try:
            items = parse(self.request.get_data(), self.boundary)
        except (BatchSyntaxError, UnicodeDecodeError) as exc:
            return odata.error_response(400, odata.BAD_URI, f"The batch request is not valid: {exc}")
        count = sum(len(i.changeset) if i.changeset is not None else 1 for i in items)
        if count > MAX_REQUESTS:
            return odata.error_response(
                400,
                "0x8006088b",
                f"The batch contains {count} requests; a batch can contain up to {MAX_REQUESTS} requests.",
            )
        continue_on_error = "odata.continue-on-error" in self.request.headers.get("Prefer", "") and (
            "odata.continue-on-error=false" not in self.request.headers.get("Prefer", "")
        )
        out_boundary = f"batchresponse_{uuid.uuid4()}"
        rendered: list[str] = []
        status = 200
        for item in items:
            if item.changeset is not None:
                text, failed = self._changeset(item.changeset)
            else:
                answer = self._one(item)
                text, failed = _render(answer), (answer.status if answer.status >= 400 else None)
            rendered.append(text)
            if failed is not None and not continue_on_error:
                status = failed
                break
        body = "".join(f"--{out_boundary}{CRLF}{text}" for text in rendered) + f"--{out_boundary}--{CRLF}"
        response = Response(body, status=status, content_type=f"multipart/mixed; boundary={out_boundary}")
        response.headers["OData-Version"] = "4.0"
        if continue_on_error:
            response.headers["Preference-Applied"] = "odata.continue-on-error"
        return response

    def _changeset(self, requests: list[Part]) -> tuple[str, int | None]:
        with self.state.lock:
            saved = copy.deepcopy(self.state.tables), dict(self.state.etags)
            answers = []
            for part in requests:
                answer = self._one(part)
                if answer.status >= 400:
                    # Atomic: undo what the change set's earlier requests did.
                    self.state.tables, self.state.etags = saved
                    return _render(answer), answer.status
                answers.append(answer)
        inner = f"changesetresponse_{uuid.uuid4()}"
        text = f"Content-Type: multipart/mixed; boundary={inner}{CRLF}{CRLF}"
        text += "".join(f"--{inner}{CRLF}{_render(a)}" for a in answers) + f"--{inner}--{CRLF}"
        return text, None

    def _one(self, part: Part) -> Answer:
        split = urlsplit(part.target)
        path = split.path
        if not path.startswith("/"):
            # Relative to the service root (https://host/api/data/v9.2/).
            path = self.request.path.rsplit("/", 1)[0] + "/" + path
        headers = [(k, v) for k, v in part.headers if k.lower() != "authorization"]
        auth = self.request.headers.get("Authorization")
        if auth:
            headers.append(("Authorization", auth))
        client = self.app.test_client()
        response = client.open(
            path,
            method=part.method,
            query_string=split.query,
            headers=headers,
            data=part.body,
            base_url=self.request.host_url.rstrip("/"),
            environ_overrides={"dvemu.batch": self.boundary, "wsgi.url_scheme": "https"},
        )
        return Answer(
            response.status_code, list(response.headers.items()), response.get_data(), part.content_id
        )


def request_is_multipart(request: Request) -> bool:
    return request.headers.get("Content-Type", "").lower().startswith("multipart/mixed") and bool(
        _boundary(request.headers.get("Content-Type", ""))
    )
