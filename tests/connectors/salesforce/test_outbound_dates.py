"""Outbound messages dated where OnRecord cannot process them: LastModifiedDate / SystemModstamp
becomes the event's occurred_at, and a year outside 2000-2200 (plugin.api_models.MIN_YEAR and
MAX_YEAR) is refused at the door, as on every other hook: acknowledged, it would overflow the
rules' date arithmetic (an approval's deadline at occurred_at + grace) and park the event."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.connectors.salesforce.outbound_messages import envelope, notification, opportunity_fields
from tests.connectors.salesforce.test_outbound_view import URL, build_app, stored


def post(sqlite_url: str, tmp_path: Path, modified: str) -> tuple[int, int]:
    app = build_app(sqlite_url, tmp_path)
    fields = {**opportunity_fields(1), "LastModifiedDate": modified}
    resp = app.test_client().post(URL, data=envelope([notification(1, fields)]), content_type="text/xml")
    return resp.status_code, len(stored(app))


def test_an_ordinary_date_is_stored(sqlite_url: str, tmp_path: Path) -> None:
    assert post(sqlite_url, tmp_path, "2026-11-26T10:00:00.000Z") == (200, 1)


@pytest.mark.parametrize("year", ["0001", "9999"])
def test_a_date_onrecord_cannot_process_is_refused_at_the_door(
    sqlite_url: str, tmp_path: Path, year: str
) -> None:
    assert post(sqlite_url, tmp_path, f"{year}-12-31T23:59:59.000Z") == (400, 0)
