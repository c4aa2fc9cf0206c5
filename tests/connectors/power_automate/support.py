"""Test helpers for the Power Automate connector: an HTTPS callback receiver on loopback with its own
CA (made with cryptography at test start), and a rule that emits notifications.

with CallbackReceiver(tmp_path) as receiver:      # https://localhost:<port>/..., CA in receiver.ca_file
    receiver.respond("/gone", 410)
    ...
    receiver.wait_for(1)
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plugin.config import Config
from plugin.events import Event, Notification, Outcome
from plugin.rules import Rule, StateReader

TENANT = "4f8d2c1a-6b3e-4a5d-9c7f-0e1d2c3b4a59"
API_CLIENT_ID = "6e4f2a1b-3c5d-4e7f-8a9b-0c1d2e3f4a5b"
FLOW_CLIENT_ID = "11112222-3333-4444-8555-666677778888"
ROLE = "OnRecord.Events.Write"
API_KEY = "pa-key-0123456789abcdefghij"
API_TOKEN = "api-token-0123456789abcdefghij"
CALLBACK_KEY = "oGvlgHElCnnzgjRZFofBGHAVP5ws8sbgFBgi8Q2Kjno="  # a Fernet key (made for these tests)
OLD_CALLBACK_KEY = "f-o-XCgqDvSljQoJ5ntKjP2cnh8c64EyVoFvTbSTuwY="


def make_tls(
    directory: Path, names: tuple[str, ...] = ("localhost", "callback.test")
) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for `names` (and 127.0.0.1): (ca, cert, key) PEM files."""
    now = datetime.datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OnRecord test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_file, cert_file, key_file


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class CallbackReceiver:
    """An HTTPS server on 127.0.0.1 (certificate for localhost and callback.test) recording requests.

    Every path answers 200 unless told otherwise with `respond`.
    """

    def __init__(self, directory: Path) -> None:
        self.ca_file, cert_file, key_file = make_tls(directory)
        self.received: list[Received] = []
        self._responses: dict[str, tuple[int, dict[str, str]]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path = self.path
                with receiver._lock:
                    receiver.received.append(Received("POST", path, dict(self.headers.items()), body))
                    status, headers = receiver._responses.get(path.split("?", 1)[0], (200, {}))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str = "/workflows/abc/triggers/manual/run", host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}?api-version=2016-06-01&sp=%2Ftriggers&sv=1.0&sig=SECRETSIG"

    def respond(self, path: str, status: int, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._responses[path] = (status, headers or {})

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if path is None or r.path.split("?", 1)[0] == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} callbacks on {path}, got {len(self.requests(path))}")
            time.sleep(0.02)
        return self.requests(path)

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def announce_champion(event: Event, state: StateReader, now: datetime.datetime) -> Outcome:
    """Every training attended makes its leader a champion candidate (for pipeline tests)."""
    return Outcome(
        notifications=[
            Notification("leader.champion", {"leader": event.actor, "period": "2025-11", "score": 1.0})
        ]
    )


def champion_rules(config: Config) -> list[Rule]:
    """The rule set the end-to-end subscription tests run in the worker."""
    return [Rule(name="champion", kinds=frozenset({"training.attended"}), apply=announce_champion)]
