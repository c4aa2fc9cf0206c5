"""The SOQL subset the emulator answers.

    SELECT f1, f2 FROM Obj
      [WHERE cond [AND cond ...]]
      [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST] [, ...]]
      [LIMIT n] [OFFSET n]

cond: field (= | != | <> | < | <= | > | >= | LIKE) literal, field [NOT] IN (literal, ...).
Literals: 'strings' (with \\ escapes), numbers, true/false, null, date (2024-01-31) and
datetime (2024-01-31T10:00:00Z, ...T10:00:00.000+0000, ...T10:00:00+01:00) literals.
Anything else raises SoqlError, which the server answers as MALFORMED_QUERY, as Salesforce does.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class SoqlError(Exception):
    """The query is not SOQL the emulator understands (MALFORMED_QUERY)."""


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # = != < <= > >= LIKE IN NOTIN
    value: Any


@dataclass(frozen=True)
class Query:
    fields: list[str]
    sobject: str
    where: list[Condition] = field(default_factory=list)
    order_by: list[tuple[str, bool, bool]] = field(default_factory=list)  # field, descending, nulls_last
    limit: int | None = None
    offset: int = 0


_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.)*')
      | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
      | (?P<date>\d{4}-\d{2}-\d{2})
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "LIMIT", "OFFSET"}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    value: Any = None


def _tokenize(soql: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    text = soql.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise SoqlError(f"unexpected token: '{text[pos:].split()[0]}'")
        pos = m.end()
        kind = m.lastgroup or ""
        raw = m.group(kind)
        if kind == "string":
            tokens.append(
                _Tok("literal", raw, re.sub(r"\\(.)", lambda e: _ESCAPES.get(e[1], e[1]), raw[1:-1]))
            )
        elif kind == "datetime":
            tokens.append(_Tok("literal", raw, parse_datetime(raw)))
        elif kind == "date":
            tokens.append(_Tok("literal", raw, dt.date.fromisoformat(raw)))
        elif kind == "number":
            tokens.append(_Tok("literal", raw, float(raw) if "." in raw else int(raw)))
        elif kind == "word" and raw.lower() in ("true", "false", "null"):
            tokens.append(_Tok("literal", raw, {"true": True, "false": False, "null": None}[raw.lower()]))
        elif kind == "word" and raw.upper() in _KEYWORDS:
            tokens.append(_Tok("kw", raw.upper()))
        else:
            tokens.append(_Tok(kind, raw))
    return tokens


def parse_datetime(text: str) -> dt.datetime:
    """Salesforce datetime text (2024-01-31T10:00:00.000+0000, ...Z, ...+01:00) as aware UTC."""
    fixed = text.replace("Z", "+00:00")
    fixed = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", fixed)
    value = dt.datetime.fromisoformat(fixed)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


class _Parser:
    def __init__(self, soql: str) -> None:
        self.toks = _tokenize(soql)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise SoqlError("unexpected end of query")
        self.i += 1
        return tok

    def expect_kw(self, kw: str) -> None:
        tok = self.take()
        if tok.kind != "kw" or tok.text != kw:
            raise SoqlError(f"unexpected token: '{tok.text}'")

    def at_kw(self, kw: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "kw" and tok.text == kw

    def name(self) -> str:
        tok = self.take()
        if tok.kind != "word":
            raise SoqlError(f"unexpected token: '{tok.text}'")
        if "." in tok.text:
            raise SoqlError(f"relationship fields are not supported by the emulator: '{tok.text}'")
        return tok.text

    def literal(self) -> Any:
        tok = self.take()
        if tok.kind != "literal":
            raise SoqlError(f"unexpected token: '{tok.text}'")
        return tok.value

    def parse(self) -> Query:
        self.expect_kw("SELECT")
        fields = [self.name()]
        while (tok := self.peek()) is not None and tok.text == ",":
            self.take()
            fields.append(self.name())
        self.expect_kw("FROM")
        sobject = self.name()
        where: list[Condition] = []
        if self.at_kw("WHERE"):
            self.take()
            where.append(self.condition())
            while self.at_kw("AND"):
                self.take()
                where.append(self.condition())
            if self.at_kw("OR"):
                raise SoqlError("unexpected token: 'OR' (the emulator supports AND only)")
        order_by: list[tuple[str, bool, bool]] = []
        if self.at_kw("ORDER"):
            self.take()
            self.expect_kw("BY")
            order_by.append(self.order_item())
            while (tok := self.peek()) is not None and tok.text == ",":
                self.take()
                order_by.append(self.order_item())
        limit = None
        offset = 0
        if self.at_kw("LIMIT"):
            self.take()
            limit = self.count()
        if self.at_kw("OFFSET"):
            self.take()
            offset = self.count()
        if (tok := self.peek()) is not None:
            raise SoqlError(f"unexpected token: '{tok.text}'")
        return Query(fields, sobject, where, order_by, limit, offset)

    def count(self) -> int:
        value = self.literal()
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SoqlError(f"expected a non-negative integer, got {value!r}")
        return value

    def order_item(self) -> tuple[str, bool, bool]:
        name = self.name()
        descending = False
        tok = self.peek()
        if tok is not None and tok.kind == "word" and tok.text.upper() in ("ASC", "DESC"):
            descending = self.take().text.upper() == "DESC"
        nulls_last = descending  # Salesforce: NULLS FIRST with ASC, NULLS LAST with DESC
        tok = self.peek()
        if tok is not None and tok.kind == "word" and tok.text.upper() == "NULLS":
            self.take()
            which = self.take().text.upper()
            if which not in ("FIRST", "LAST"):
                raise SoqlError(f"unexpected token: '{which}'")
            nulls_last = which == "LAST"
        return name, descending, nulls_last

    def condition(self) -> Condition:
        if (tok := self.peek()) is not None and tok.text == "(":
            raise SoqlError("unexpected token: '(' (the emulator supports no grouping)")
        name = self.name()
        tok = self.take()
        if tok.kind == "op":
            return Condition(name, "!=" if tok.text == "<>" else tok.text, self.literal())
        if tok.kind == "kw" and tok.text == "LIKE":
            return Condition(name, "LIKE", self.literal())
        negate = False
        if tok.kind == "kw" and tok.text == "NOT":
            negate = True
            tok = self.take()
        if tok.kind == "kw" and tok.text == "IN":
            if self.take().text != "(":
                raise SoqlError("expected '(' after IN")
            values = [self.literal()]
            while (nxt := self.take()).text == ",":
                values.append(self.literal())
            if nxt.text != ")":
                raise SoqlError(f"unexpected token: '{nxt.text}'")
            return Condition(name, "NOTIN" if negate else "IN", values)
        raise SoqlError(f"unexpected token: '{tok.text}'")


def parse(soql: str) -> Query:
    return _Parser(soql).parse()


def _coerce(stored: Any, literal: Any) -> tuple[Any, Any]:
    """Bring a stored JSON value and a literal to comparable types."""
    if stored is None or literal is None:
        return stored, literal
    if isinstance(literal, dt.datetime):
        return (parse_datetime(stored) if isinstance(stored, str) else stored), literal
    if isinstance(literal, dt.date):
        if isinstance(stored, str):
            return (
                parse_datetime(stored).date() if "T" in stored else dt.date.fromisoformat(stored)
            ), literal
        return stored, literal
    if isinstance(literal, str) and isinstance(stored, str):
        return stored.lower(), literal.lower()  # SOQL string comparison is case-insensitive
    return stored, literal


def _like(value: Any, pattern: str) -> bool:
    if value is None:
        return False
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, str(value), re.IGNORECASE | re.DOTALL) is not None


_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a is not None and b is not None and a < b,
    "<=": lambda a, b: a is not None and b is not None and a <= b,
    ">": lambda a, b: a is not None and b is not None and a > b,
    ">=": lambda a, b: a is not None and b is not None and a >= b,
}


def matches(cond: Condition, value: Any) -> bool:
    try:
        if cond.op == "LIKE":
            return _like(value, str(cond.value))
        if cond.op in ("IN", "NOTIN"):
            hit = any(_CMP["="](*_coerce(value, v)) for v in cond.value)
            return hit if cond.op == "IN" else not hit
        return _CMP[cond.op](*_coerce(value, cond.value))
    except (TypeError, ValueError) as exc:
        raise SoqlError(f"value of {cond.field} cannot be compared with {cond.value!r}") from exc


def _sort_key(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_datetime(value).timestamp()
        except ValueError:
            return value.lower()
    return value


def run(
    query: Query, rows: Sequence[Mapping[str, Any]], get: Callable[[Mapping[str, Any], str], Any]
) -> list[Mapping[str, Any]]:
    """Filter, sort, offset and limit `rows`; `get(row, field)` reads a field case-insensitively."""
    out = [r for r in rows if all(matches(c, get(r, c.field)) for c in query.where)]
    for name, descending, nulls_last in reversed(query.order_by):
        present = [r for r in out if get(r, name) is not None]
        absent = [r for r in out if get(r, name) is None]
        present.sort(key=lambda r, n=name: _sort_key(get(r, n)), reverse=descending)  # type: ignore[misc]
        out = present + absent if nulls_last else absent + present
    out = out[query.offset :]
    if query.limit is not None:
        out = out[: query.limit]
    return out
