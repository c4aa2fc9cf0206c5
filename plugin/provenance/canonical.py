"""Canonical JSON (RFC 8785, JCS) and the type-aware normal form of CRM field values.

The same figure reaches OnRecord in several spellings: a JSON number from a Flow callout
(120000), a decimal string from an outbound message ("120000.00"), a float from the REST API
(120000.0), a date-time with or without milliseconds or with "+0000". `normalise` maps each to
one form, so that equal figures compare equal and digest the same:

- numbers, and strings that are plain decimal numbers ("-12.50"; not "007", "+1", "1e3"), become
  the number: an int when integral (within JSON's safe range), else a float when that is exact,
  else the decimal's exact text;
- ISO 8601 date-times with an offset become UTC with milliseconds ("2026-11-26T10:00:00.000Z");
  dates stay "YYYY-MM-DD";
- mappings and lists are normalised item by item; other strings, booleans and null are kept.

The digest of a record is sha256 over the JCS serialisation of {field: normalised value}.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import rfc8785

_DECIMAL = re.compile(r"^-?(0|[1-9]\d*)(\.\d+)?$")
_GROUPED = re.compile(r"^-?[1-9]\d{0,2}(,\d{3})+(\.\d+)?$")  # "120,000" as a speaker quotes it
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}:?\d{2})$")
_SAFE_INT = 2**53 - 1


def canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value (keys sorted, numbers in ECMAScript form, UTF-8).

    The reference implementation (rfc8785) is pure Python and was a third of the worker's CPU per
    event; for values where orjson writes exactly JCS, it is used instead
    (tests/plugin/provenance/test_canonical.py checks the two agree on generated values)."""
    if _plain(value):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return rfc8785.dumps(value)


# JCS and orjson (OPT_SORT_KEYS, compact, UTF-8) agree on: null, booleans, integers within
# +-(2**53 - 1), strings without surrogates (both escape the same control characters, in
# lower-case hex, and nothing else), and objects whose keys sort the same by code point as by
# UTF-16 code unit (true unless a key holds characters from U+E000 up). Floats are written
# differently (120000.0 vs 120000, 1e-07 vs 1e-7): those, and anything else, go to rfc8785.
_SURROGATES = re.compile("[\ud800-\udfff]")
_HIGH_KEY = re.compile("[\ue000-\U0010ffff]")


def _plain(value: Any) -> bool:
    # A loop over a stack, not recursion: this runs twice per signed statement (a tenth of a
    # millisecond per event recursively), and most values are ASCII strings, checked in place.
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        v = pop()
        kind = type(v)
        if kind is str:
            if not v.isascii() and _SURROGATES.search(v) is not None:
                return False
        elif kind is dict:
            for k, x in v.items():
                if type(k) is not str:
                    return False
                if not k.isascii() and (_HIGH_KEY.search(k) is not None or _SURROGATES.search(k) is not None):
                    return False
                if type(x) is not str or not x.isascii():
                    push(x)
        elif kind is list:
            stack.extend(v)
        elif kind is int:
            if not -_SAFE_INT <= v <= _SAFE_INT:
                return False
        elif v is not None and v is not True and v is not False:
            return False
    return True


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def normalise(value: Any) -> Any:
    """The value's normal form (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return _number(Decimal(str(value)) if isinstance(value, float) else Decimal(value))
    if isinstance(value, datetime):
        return _utc_millis(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    return str(value)


def normalise_quoted(value: Any) -> Any:
    """A value as a person quotes it: like `normalise`, also reading "120,000" as a number."""
    if isinstance(value, str) and _GROUPED.match(value.strip()):
        return _number(Decimal(value.strip().replace(",", "")))
    return normalise(value.strip() if isinstance(value, str) else value)


def values_equal(a: Any, b: Any) -> bool:
    """Type-aware equality: 120000 == 120000.0 == "120000.00"; same instant == same instant."""
    return bool(normalise(a) == normalise(b))


def tracked_values(fields: Mapping[str, Any], tracked: list[str]) -> dict[str, Any]:
    """The normalised values of the tracked fields present in `fields`."""
    return {name: normalise(fields[name]) for name in tracked if name in fields}


def values_digest(values: Mapping[str, Any]) -> str:
    """sha256 hex of the JCS form of already-normalised tracked values."""
    return sha256_hex(canonical_json(dict(values)))


def _number(d: Decimal) -> Any:
    if not d.is_finite():
        return str(d)
    if d == d.to_integral_value():
        as_int = int(d)
        return as_int if abs(as_int) <= _SAFE_INT else str(as_int)
    as_float = float(d)
    try:
        exact = Decimal(repr(as_float)) == d
    except InvalidOperation:  # pragma: no cover - repr of a finite float is always a decimal
        exact = False
    return as_float if exact else format(d.normalize(), "f")


def _string(text: str) -> Any:
    if _DECIMAL.match(text):
        return _number(Decimal(text))
    if _DATETIME.match(text):
        try:
            parsed = datetime.fromisoformat(_iso_offset(text))
        except ValueError:
            return text
        return _utc_millis(parsed)
    return text


def _iso_offset(text: str) -> str:
    # Salesforce's REST API writes "+0000"; fromisoformat wants "+00:00" before Python 3.11 forms.
    text = text.replace("z", "Z")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    return text


def _utc_millis(value: datetime) -> str:
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
