"""Outbound messages dated where OnRecord cannot process them: the signed-events hook, the flows'
hooks and Dataverse refuse an occurred_at outside the years 2000-2200 at the door (the rules'
date arithmetic, an approval's deadline at occurred_at + grace for one, overflows on 9999 and
parks the event); an outbound message's
LastModifiedDate / SystemModstamp, which becomes its occurred_at, is not checked yet.

The fix belongs in connectors/salesforce/outbound.py (`_occurred_at`: refuse, as a SOAP fault
naming the field, a year outside plugin.api_models.MIN_YEAR..MAX_YEAR). Until then the case is
kept here as a strict xfail, so it turns into a failure — and this marker is removed — when fixed."""

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


@pytest.mark.xfail(strict=True, reason="outbound occurred_at is not range-checked yet (see module docstring)")
@pytest.mark.parametrize("year", ["0001", "9999"])
def test_a_date_onrecord_cannot_process_is_refused_at_the_door(
    sqlite_url: str, tmp_path: Path, year: str
) -> None:
    assert post(sqlite_url, tmp_path, f"{year}-12-31T23:59:59.000Z") == (400, 0)
