"""JSON bodies read strictly, the same way on every path that takes JSON from outside.

What is signed, stored and shown must be what was sent, in one meaning: so a body is refused —
with a reason that names the problem — when it is not UTF-8, repeats a key (the last `Amount`
would win in one parser and the first in another), holds NaN, Infinity or a number that is
infinite as a double (1e400), an integer too long to be a number anyone means, a lone surrogate,
or nesting deeper than any sender needs. Nothing here raises anything but `JsonRefused`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
MAX_INT_DIGITS = 40  # Salesforce numbers have at most 18 digits; Python's own limit is 4,300
_SURROGATE = re.compile("[\\ud800-\\udfff]")


class JsonRefused(ValueError):
    """The body is not JSON OnRecord takes; `reason` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def loads(raw: bytes) -> Any:
    """The JSON value of a UTF-8 body (a leading BOM is tolerated), or JsonRefused."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JsonRefused("not_utf8", f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite,
            parse_int=_int,
        )
    except JsonRefused:
        raise
    except RecursionError:
        raise JsonRefused("too_deep", f"body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise JsonRefused("not_json", f"body is not JSON: {exc}") from None
    _check(value, 0)
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonRefused("duplicate_key", f"key {key[:100]!r} appears twice in one object")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise JsonRefused("not_a_number", f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRefused("not_a_number", f"number {text[:40]} is too large")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonRefused("not_a_number", f"integer of {len(text)} digits is too long")
    return int(text)


def _check(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise JsonRefused("too_deep", f"body is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if not value.isascii() and _SURROGATE.search(value):
            raise JsonRefused("bad_string", "a string holds a lone surrogate (not Unicode text)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check(key, depth + 1)
            _check(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1)
