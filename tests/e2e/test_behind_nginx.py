"""OnRecord behind a real TLS-terminating nginx, under a path prefix, as docs/deploy.md sets it up.

nginx listens on loopback with a certificate from a throw-away CA and proxies /onrecord/ to
`serve` (server.trusted_proxy_hops = 1). Through it: a signed hook is stored, the Swagger document
names the public scheme/host/basePath, and a subscription's Location is the public URL.
Skipped, saying so, when nginx is not installed (.ci/run installs Debian's).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import TEST_SECRET
from tests.connectors.power_automate.support import API_TOKEN, CALLBACK_KEY, CallbackReceiver, make_tls
from tests.support.events import change_event, signed
from tests.support.processes import Server, free_port, onrecord_env

pytestmark = pytest.mark.slow

NGINX = Path("/usr/sbin/nginx")
PREFIX = "/onrecord"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

CONF = """\
{user}
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 6m;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location {prefix}/ {{
            proxy_pass http://127.0.0.1:{upstream}/;
            proxy_set_header Host $host:$server_port;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host:$server_port;
            proxy_set_header X-Forwarded-Prefix {prefix};
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, directory: Path, upstream: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file, cert, key = make_tls(directory / "tls")
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}{PREFIX}"
        self.directory = directory
        conf = directory / "nginx.conf"
        conf.write_text(
            CONF.format(
                # As root, nginx's workers would run as nobody, who cannot read a pytest tmp dir.
                user="user root;" if os.geteuid() == 0 else "",
                tmp=directory,
                port=self.port,
                cert=cert,
                key=key,
                prefix=PREFIX,
                upstream=upstream,
            )
        )
        self._log = open(directory / "nginx.out", "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [str(NGINX), "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def output(self) -> str:
        return "".join(
            p.read_text(errors="replace")
            for p in (self.directory / "nginx.out", self.directory / "error.log")
            if p.exists()
        )

    def _wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.output()}")
            try:
                if (
                    requests.get(self.url + "/healthz", verify=str(self.ca_file), timeout=5).status_code
                    == 200
                ):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"nginx did not start:\n{self.output()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()  # SIGTERM: fast shutdown
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[CallbackReceiver]:
    with CallbackReceiver(tmp_path / "callback-tls") as r:
        yield r


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path, receiver: CallbackReceiver) -> Iterator[Server]:
    env = onrecord_env(
        sqlite_url,
        tmp_path / "var",
        TEST_SECRET,
        ONRECORD_SERVER__TRUSTED_PROXY_HOPS="1",
        ONRECORD_API__TOKENS=json.dumps([API_TOKEN]),
        ONRECORD_API__CALLBACK_KEY=CALLBACK_KEY,
        ONRECORD_API__CALLBACK_HOSTS=json.dumps([f"localhost:{receiver.port}"]),
        ONRECORD_API__CALLBACK_ALLOW_PRIVATE_ADDRESSES="true",
        ONRECORD_API__CALLBACK_CA_BUNDLE=str(receiver.ca_file),
    )
    srv = Server(env, tmp_path / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture
def nginx(server: Server, tmp_path: Path) -> Iterator[Nginx]:
    if not NGINX.exists():
        pytest.skip(f"{NGINX} is not installed (apt-get install nginx-light): the proxy test needs it")
    proxy = Nginx(tmp_path / "nginx", server.port)
    yield proxy
    proxy.stop()


def test_hooks_openapi_and_location_are_the_public_ones(
    nginx: Nginx, server: Server, receiver: CallbackReceiver
) -> None:
    verify = str(nginx.ca_file)
    public_host = f"127.0.0.1:{nginx.port}"

    body, headers = signed(TEST_SECRET, change_event(1))
    stored = requests.post(
        nginx.url + "/hooks/salesforce/events", data=body, headers=headers, verify=verify, timeout=10
    )
    assert stored.status_code == 200, stored.text
    assert stored.json()["stored"] == 1

    v2 = requests.get(nginx.url + "/openapi-v2.json", verify=verify, timeout=10).json()
    assert (v2["schemes"], v2["host"], v2["basePath"]) == (["https"], public_host, PREFIX)
    v3 = requests.get(nginx.url + "/openapi.json", verify=verify, timeout=10).json()
    assert v3["servers"] == [{"url": f"https://{public_host}{PREFIX}"}]

    created = requests.post(
        nginx.url + "/api/subscriptions",
        json={"callback_url": receiver.url(), "events": ["approval.blocked"]},
        headers=AUTH,
        verify=verify,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    assert location == f"https://{public_host}{PREFIX}/api/subscriptions/{created.json()['id']}"
    # The Location is where Power Automate sends its DELETE: it must reach OnRecord through nginx.
    assert requests.delete(location, headers=AUTH, verify=verify, timeout=10).status_code == 204

    # Straight to serve (no proxy), the same document is the direct address: nothing leaks across.
    direct = requests.get(server.url + "/openapi-v2.json", timeout=10).json()
    assert (direct["host"], direct["basePath"]) == (f"127.0.0.1:{server.port}", "/")
