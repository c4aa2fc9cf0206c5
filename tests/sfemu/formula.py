"""A validation rule's error condition formula, for exactly the subset OnRecord's provisioner
generates: AND, OR, NOT, ISNEW, ISCHANGED, ISPICKVAL, CASESAFEID, $User.Id, $User.Username,
field references, string literals (double or single quotes, backslash escapes), `=` and `<>`,
TRUE and FALSE, and checkbox fields as booleans.

As in Salesforce: function names, TRUE/FALSE and field names are case-insensitive; a blank text
field equals "" ("treat blank fields as blanks"); ISCHANGED() is false when a record is created;
ISPICKVAL's first argument must be a field. Anything outside the subset is a FormulaError at
parse time, so an emulator deploy fails loudly instead of ignoring a rule it cannot evaluate.

    rule = ValidationRule("No_Approval", 'AND(ISNEW(), ISPICKVAL(Status__c, "Approved"))', "No.")
    rule.fails(Context({"Status__c": "Approved"}, None, user_id, username))  # True: refuse the save
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.sfemu.ids import is_valid_id, to18


class FormulaError(ValueError):
    """A formula outside the supported subset, or a value it cannot work with."""


@dataclass(frozen=True)
class Literal:
    value: str | bool


@dataclass(frozen=True)
class FieldRef:
    name: str


@dataclass(frozen=True)
class UserRef:
    attribute: str  # "Id" or "Username"


@dataclass(frozen=True)
class Call:
    name: str  # upper case
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Compare:
    op: str  # "=" or "<>"
    left: Node
    right: Node


Node = Literal | FieldRef | UserRef | Call | Compare

_USER = {"id": "Id", "username": "Username"}
_ARITY: dict[str, tuple[int, int | None]] = {
    "AND": (1, None),
    "OR": (1, None),
    "NOT": (1, 1),
    "ISNEW": (0, 0),
    "ISCHANGED": (1, 1),
    "ISPICKVAL": (2, 2),
    "CASESAFEID": (1, 1),
}
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<global>\$[A-Za-z]+\.[A-Za-z_][A-Za-z0-9_]*)
      | (?P<name>[A-Za-z][A-Za-z0-9_]*)
      | (?P<op><>|=|\(|\)|,)
    )""",
    re.VERBOSE | re.DOTALL,
)


def _unescape(quoted: str) -> str:
    out: list[str] = []
    chars = iter(quoted[1:-1])
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        escaped = next(chars)  # the token pattern guarantees one follows
        if escaped not in _ESCAPES:
            raise FormulaError(f"Syntax error. Invalid escape sequence \\{escaped}")
        out.append(_ESCAPES[escaped])
    return "".join(out)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FormulaError(f"Syntax error. Found '{text[pos:].strip()[:20]}'")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise FormulaError(f"Syntax error. Missing '{value or 'an expression'}'")
        if value is not None and token[1] != value:
            raise FormulaError(f"Syntax error. Expected '{value}', found '{token[1]}'")
        self.pos += 1
        return token

    def formula(self) -> Node:
        node = self.expression()
        if self.peek() is not None:
            raise FormulaError(f"Syntax error. Extra '{self.take()[1]}'")
        return node

    def expression(self) -> Node:
        left = self.term()
        token = self.peek()
        if token is not None and token[1] in ("=", "<>"):
            self.take()
            return Compare(token[1], left, self.term())
        return left

    def term(self) -> Node:
        kind, value = self.take()
        if kind == "string":
            return Literal(_unescape(value))
        if kind == "global":
            scope, _, attribute = value[1:].partition(".")
            if scope.lower() != "user" or attribute.lower() not in _USER:
                raise FormulaError(
                    f"Field {value} does not exist (the emulator knows $User.Id, $User.Username)"
                )
            return UserRef(_USER[attribute.lower()])
        if kind == "name":
            upper = value.upper()
            following = self.peek()
            if following is not None and following[1] == "(":
                return self.call(upper)
            if upper in ("TRUE", "FALSE"):
                return Literal(upper == "TRUE")
            return FieldRef(value)
        if value == "(":
            node = self.expression()
            self.take(")")
            return node
        raise FormulaError(f"Syntax error. Found '{value}'")

    def call(self, name: str) -> Node:
        if name not in _ARITY:
            raise FormulaError(f"Unknown function {name}. Check spelling.")
        self.take("(")
        args: list[Node] = []
        following = self.peek()
        if following is not None and following[1] != ")":
            args.append(self.expression())
            while (following := self.peek()) is not None and following[1] == ",":
                self.take()
                args.append(self.expression())
        self.take(")")
        low, high = _ARITY[name]
        if len(args) < low or (high is not None and len(args) > high):
            raise FormulaError(f"Incorrect number of parameters for function '{name}()'. Got {len(args)}")
        if name in ("ISCHANGED", "ISPICKVAL") and not isinstance(args[0], FieldRef):
            raise FormulaError(f"Incorrect parameter type for function '{name}()'. Expected a field")
        return Call(name, tuple(args))


def parse(text: str) -> Node:
    """The formula's syntax tree; FormulaError if it is outside the supported subset."""
    return _Parser(text).formula()


class Context:
    """What a formula sees: the record as it would be saved, the record before (None when it is
    being created), and the user saving it."""

    def __init__(
        self,
        record: Mapping[str, Any],
        previous: Mapping[str, Any] | None,
        user_id: str,
        username: str,
    ) -> None:
        self.record = {k.lower(): v for k, v in record.items()}
        self.previous = {k.lower(): v for k, v in previous.items()} if previous is not None else None
        self.user_id, self.username = user_id, username

    def get(self, name: str) -> Any:
        return self.record.get(name.lower())


def _blank(value: Any) -> Any:
    return "" if value is None else value


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:  # an unset checkbox
        return False
    raise FormulaError(
        f"Incorrect parameter type: {what} is {value!r}, not a boolean (a checkbox or a condition)"
    )


def _text(value: Any) -> str:
    value = _blank(value)
    if isinstance(value, bool):
        raise FormulaError(f"expected text, got {value!r}")
    return str(value)


def evaluate(node: Node, ctx: Context) -> str | bool | None:
    """The value of an expression: text, a boolean, or None for a blank field (blank text, or an
    unchecked checkbox: the emulator does not know which until it is used)."""
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, FieldRef):
        value = ctx.get(node.name)
        return value if value is None or isinstance(value, bool) else _text(value)
    if isinstance(node, UserRef):
        return ctx.user_id if node.attribute == "Id" else ctx.username
    if isinstance(node, Compare):
        left, right = evaluate(node.left, ctx), evaluate(node.right, ctx)
        if isinstance(left, bool) or isinstance(right, bool):
            left, right = _bool(left, "a comparison's side"), _bool(right, "a comparison's side")
        else:
            left, right = _text(left), _text(right)
        return (left == right) if node.op == "=" else (left != right)
    name, args = node.name, node.args
    if name == "AND":
        return all(_bool(evaluate(a, ctx), "an AND() argument") for a in args)
    if name == "OR":
        return any(_bool(evaluate(a, ctx), "an OR() argument") for a in args)
    if name == "NOT":
        return not _bool(evaluate(args[0], ctx), "NOT()'s argument")
    if name == "ISNEW":
        return ctx.previous is None
    if name == "ISCHANGED":
        assert isinstance(args[0], FieldRef)
        if ctx.previous is None:
            return False
        key = args[0].name.lower()
        return bool(_blank(ctx.previous.get(key)) != _blank(ctx.record.get(key)))
    if name == "ISPICKVAL":
        assert isinstance(args[0], FieldRef)
        return _text(ctx.get(args[0].name)) == _text(evaluate(args[1], ctx))
    if name == "CASESAFEID":
        value = _text(evaluate(args[0], ctx))
        return to18(value) if is_valid_id(value) else value
    raise FormulaError(f"Unknown function {name}")  # parse() lets none through


@dataclass
class ValidationRule:
    """A deployed validation rule (ValidationRule metadata) on one object."""

    name: str
    formula: str
    message: str
    display_field: str = ""
    active: bool = True
    tree: Node = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.tree = parse(self.formula)

    def fails(self, ctx: Context) -> bool:
        """Whether the rule refuses this save (its formula is true)."""
        return self.active and _bool(evaluate(self.tree, ctx), f"rule {self.name}'s formula")


__all__ = ["Context", "FormulaError", "ValidationRule", "evaluate", "parse"]
