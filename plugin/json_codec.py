"""JSON text for what OnRecord stores: orjson where it writes exactly what the standard library
would mean, the standard library for everything else.

The worker writes four JSON columns per governed event (rule state, outbox payload, fact data,
the signature field's envelope); the standard library's encoder was a tenth of its CPU. orjson
is five to ten times faster and writes the same values, with three differences handled here:

- a float NaN or infinity becomes ``null`` in orjson (silently: a lost value). Any text with a
  ``null`` in it is therefore written again by the standard library with ``allow_nan=False``,
  which refuses NaN (a stored NaN is not JSON: PostgreSQL refuses it; OnRecord refuses it at
  every door), so a NaN is an error, never a ``null``;
- integers beyond 64 bits, keys that are not strings, lone surrogates and types the standard
  library does not know: orjson raises, and the standard library decides (big integers exact,
  int keys as strings, a lone surrogate escaped, anything else the same TypeError as before);
- datetimes and dataclasses, which orjson would write and the standard library refuses, are
  passed to the standard library (OPT_PASSTHROUGH_*), so they stay an error.

Reading stays with the standard library: orjson reads an integer beyond 64 bits as a float,
which would change a stored figure.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_STDLIB: Final = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def dumps(value: Any) -> str:
    """Compact JSON text; ValueError for NaN or infinity, TypeError for what JSON cannot hold."""
    try:
        text = orjson.dumps(value, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        return _STDLIB.encode(value)
    if b"null" in text:  # a NaN may hide behind a null: let the standard library say
        return _STDLIB.encode(value)
    return text.decode("utf-8")


def loads(text: str | bytes) -> Any:
    """The standard library's reading (integers of any size stay exact)."""
    return json.loads(text)
