"""POST /hooks/salesforce/events validated by its models: members of the wrong JSON type are 400
naming the member, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from plugin.app import create_app
from plugin.config import Config
from tests.conftest import TEST_SECRET
from tests.support.events import change_event, signed

URL = "/hooks/salesforce/events"


@pytest.fixture
def client(config: Config) -> FlaskClient:
    return create_app(config).test_client()


@pytest.mark.parametrize(
    ("change", "reason", "named"),
    [
        ({"type": ["report.viewed"]}, "bad_field", "event.type must be a non-empty string"),
        ({"type": {"report.viewed": 1}}, "bad_field", "event.type must be a non-empty string"),
        ({"record": None}, "missing_field", "event.record must be an object"),
        ({"record": [1]}, "missing_field", "event.record must be an object"),
        ({"occurred_at": 1764151200}, "bad_field", "event.occurred_at must be a non-empty string"),
    ],
)
def test_a_member_of_the_wrong_json_type_is_400_naming_it(
    client: FlaskClient, change: dict[str, Any], reason: str, named: str
) -> None:
    body, headers = signed(TEST_SECRET, {**change_event(1), **change})
    resp = client.post(URL, data=body, headers=headers)
    answer: dict[str, Any] = resp.json  # type: ignore[assignment]
    assert resp.status_code == 400, answer
    assert answer["reason"] == reason and named in answer["error"]


def test_in_a_batch_the_event_is_named_by_its_position(client: FlaskClient) -> None:
    bad = {**change_event(2), "type": ["x"]}
    body, headers = signed(TEST_SECRET, {"events": [change_event(1), bad]})
    resp = client.post(URL, data=body, headers=headers)
    answer: dict[str, Any] = resp.json  # type: ignore[assignment]
    assert resp.status_code == 400 and answer["error"].startswith("events[1].type ")
