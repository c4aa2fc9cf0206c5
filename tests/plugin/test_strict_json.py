"""Strict JSON: every body a hostile sender used to get past, refused with its reason."""

from __future__ import annotations

import pytest

from plugin.strict_json import JsonRefused, loads


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b'{"Amount": 1, "Amount": 2}', "duplicate_key", id="duplicate key"),
        pytest.param(b'{"Amount": NaN}', "not_a_number", id="NaN"),
        pytest.param(b'{"Amount": Infinity}', "not_a_number", id="Infinity"),
        pytest.param(b'{"Amount": -Infinity}', "not_a_number", id="-Infinity"),
        pytest.param(b'{"Amount": 1e400}', "not_a_number", id="1e400"),
        pytest.param(b'{"Amount": ' + b"9" * 4301 + b"}", "not_a_number", id="4,301-digit integer"),
        pytest.param(b'{"Amount": ' + b"9" * 41 + b"}", "not_a_number", id="41-digit integer"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "too_deep", id="100,000-deep nesting"),
        pytest.param(b"[" * 40 + b"]" * 40, "too_deep", id="40-deep nesting"),
        pytest.param('{"a": "b"}'.encode("utf-16"), "not_utf8", id="UTF-16 with BOM"),
        pytest.param(b'{"a": "\xff"}', "not_utf8", id="invalid UTF-8"),
        pytest.param(b'{"a": "\\ud800"}', "bad_string", id="lone surrogate"),
        pytest.param(b'{"\\udc00": 1}', "bad_string", id="lone surrogate in a key"),
        pytest.param(b'{"a": 1', "not_json", id="truncated"),
        pytest.param(b"", "not_json", id="empty"),
    ],
)
def test_a_hostile_body_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(JsonRefused) as refused:
        loads(raw)
    assert refused.value.reason == reason


def test_an_ordinary_body_is_read_as_json_reads_it() -> None:
    raw = '\ufeff{"Amount": 120000.5, "Name": "Acme — renouvellement", "n": -12, "ok": true, "x": null}'
    assert loads(raw.encode()) == {
        "Amount": 120000.5,
        "Name": "Acme — renouvellement",
        "n": -12,
        "ok": True,
        "x": None,
    }
    assert loads(b'{"emoji": "\\ud83d\\ude00"}') == {"emoji": "\U0001f600"}  # a pair is fine
