"""The webhook trigger end to end, as Power Automate drives it: real gunicorn, a real worker, and an
HTTPS callback receiver on loopback (allowed only through api.callback_allow_private_addresses)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from plugin.storage import get_engine, outbox
from tests.conftest import TEST_SECRET
from tests.connectors.power_automate.support import API_KEY, API_TOKEN, CALLBACK_KEY, CallbackReceiver
from tests.support.processes import Server, onrecord_env, wait_for

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[2] / "connectors" / "power_automate" / "fixtures"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[CallbackReceiver]:
    with CallbackReceiver(tmp_path / "tls") as r:
        yield r


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path, receiver: CallbackReceiver) -> Iterator[Server]:
    env = onrecord_env(
        sqlite_url,
        tmp_path / "var",
        TEST_SECRET,
        ONRECORD_POWER_AUTOMATE__API_KEY=API_KEY,
        ONRECORD_API__TOKENS=json.dumps([API_TOKEN]),
        ONRECORD_API__CALLBACK_KEY=CALLBACK_KEY,
        ONRECORD_API__CALLBACK_HOSTS=json.dumps([f"localhost:{receiver.port}"]),
        ONRECORD_API__CALLBACK_ALLOW_PRIVATE_ADDRESSES="true",
        ONRECORD_API__CALLBACK_CA_BUNDLE=str(receiver.ca_file),
        ONRECORD_WORKER__RULES=json.dumps(["tests.connectors.power_automate.support:champion_rules"]),
    )
    srv = Server(env, tmp_path / "serve.log", worker=True)
    yield srv
    srv.stop()


def signal(server: Server, signal_id: str) -> requests.Response:
    body = json.loads((FIXTURES / "signals__training_attended.json").read_text())
    body["id"] = signal_id
    return requests.post(
        server.url + "/hooks/power-automate/signals",
        json=body,
        headers={"X-OnRecord-Key": API_KEY},
        timeout=10,
    )


def test_subscribed_flow_is_called_back_until_it_unsubscribes(
    server: Server, receiver: CallbackReceiver, sqlite_url: str
) -> None:
    callback = receiver.url()
    refused = requests.post(
        server.url + "/api/subscriptions",
        json={"callback_url": callback, "events": ["leader.champion"]},
        timeout=10,
    )
    assert refused.status_code == 401 and refused.json()["reason"] == "missing_token"

    created = requests.post(
        server.url + "/api/subscriptions",
        json={"callback_url": callback, "events": ["leader.champion"]},
        headers=AUTH,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    assert location == f"{server.url}/api/subscriptions/{created.json()['id']}"

    assert signal(server, "training-1").json()["stored"] == 1
    (got,) = receiver.wait_for(1, timeout=30)
    notification = got.json()
    assert notification["topic"] == "leader.champion"
    assert notification["data"]["leader"] == "jane.doe@contoso.com"
    assert "sig=SECRETSIG" in got.path

    assert requests.delete(location, headers=AUTH, timeout=10).status_code == 204
    assert requests.delete(location, headers=AUTH, timeout=10).status_code == 204  # again: still 2xx

    assert signal(server, "training-2").json()["stored"] == 1
    engine = get_engine(sqlite_url)

    def both_notifications_done() -> bool:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(outbox.c.status).where(outbox.c.target == "notification")).all()
        return len(rows) == 2 and all(r.status == "sent" for r in rows)

    wait_for(both_notifications_done, timeout=30)
    assert len(receiver.requests()) == 1  # nobody is subscribed any more
    assert "SECRETSIG" not in server.output()
