"""Canonical JSON and type-aware values: one figure, many spellings, one digest."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.provenance.canonical import (
    _plain,
    canonical_json,
    normalise,
    normalise_quoted,
    tracked_values,
    values_digest,
    values_equal,
)


@pytest.mark.parametrize(
    "spelling", [120000, 120000.0, "120000", "120000.00", Decimal("120000.000"), "120000.0"]
)
def test_a_figure_equals_itself_however_it_is_spelled(spelling: object) -> None:
    assert values_equal(spelling, 120000)
    assert values_digest({"Amount": normalise(spelling)}) == values_digest({"Amount": 120000})


@pytest.mark.parametrize(
    ("a", "b"),
    [(120000, 120001), ("1234.56", 1234.5), ("007", 7), ("+5", 5), ("Closed Won", "Closed won"), (None, 0)],
)
def test_different_values_stay_different(a: object, b: object) -> None:
    assert not values_equal(a, b)


def test_decimals_beyond_float_precision_keep_every_digit() -> None:
    assert normalise("12345678901234567.89") == "12345678901234567.89"
    assert not values_equal("12345678901234567.89", "12345678901234567.88")


@pytest.mark.parametrize(
    "spelling",
    [
        "2026-11-26T10:00:00Z",
        "2026-11-26T10:00:00.000Z",
        "2026-11-26T10:00:00.000+0000",
        "2026-11-26T11:00:00+01:00",
        datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
    ],
)
def test_one_instant_in_any_notation_is_equal(spelling: object) -> None:
    assert normalise(spelling) == "2026-11-26T10:00:00.000Z"


def test_dates_stay_dates() -> None:
    assert normalise(date(2026, 3, 31)) == normalise("2026-03-31") == "2026-03-31"


def test_a_quoted_figure_may_have_thousands_separators() -> None:
    assert normalise_quoted("120,000") == 120000
    assert normalise_quoted(" 1,234.50 ") == 1234.5
    assert normalise("120,000") == "120,000"  # field values are never read that way


def test_canonical_json_is_rfc8785() -> None:
    # Keys sorted by code unit, no whitespace, integers without a fraction, UTF-8 as is.
    assert canonical_json({"b": 1.0, "a": ["é", None, True], "A": 1e21}) == (
        '{"A":1e+21,"a":["é",null,true],"b":1}'.encode()
    )


def test_the_values_digest_is_sha256_of_the_canonical_json() -> None:
    values = tracked_values(
        {"StageName": "Prospecting", "Amount": "10.50", "Other": 1}, ["Amount", "StageName"]
    )
    assert values == {"Amount": 10.5, "StageName": "Prospecting"}
    expected = hashlib.sha256(b'{"Amount":10.5,"StageName":"Prospecting"}').hexdigest()
    assert values_digest(values) == expected


# -- the fast path writes exactly what the reference implementation writes ---------------------


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=600, deadline=None)
@given(_json)
def test_canonical_json_is_rfc8785_whatever_the_value(value: object) -> None:
    try:
        expected = rfc8785.dumps(value)
    except Exception:  # rfc8785 refuses it (lone surrogates, ints beyond 2**53): so must we
        with pytest.raises(Exception):  # noqa: B017
            canonical_json(value)
        return
    assert canonical_json(value) == expected


def test_the_fast_path_is_taken_for_a_typical_statement() -> None:
    statement = {"predicate": {"entity": {"values": {"Amount": 120000, "Name": "Acme — renewal \n"}}}}
    assert _plain(statement)
    assert not _plain({"Amount": 120000.5}) and not _plain({"\ue000": 1}) and not _plain(2**53)


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, {"b": [None, True, 1.5]}]},  # a float deep inside
        {"a": {"b": "x\ud800"}},  # a lone surrogate in a nested value
        {"a": [{"\ud800": 1}]},  # ... and in a nested key
        {"a": [{1: "x"}]},  # a key that is not a string
        [[[-(2**53)]]],  # beyond JSON's safe integers
        {"a": ("tuple",)},  # not a JSON type
    ],
)
def test_anything_the_fast_path_cannot_write_exactly_is_found_however_deep(value: object) -> None:
    assert not _plain(value)


def test_plain_values_of_every_kind_take_the_fast_path() -> None:
    assert _plain({"a": [None, True, False, 0, -(2**53 - 1), "é", {"ü": ["x"]}], "b": {}})
