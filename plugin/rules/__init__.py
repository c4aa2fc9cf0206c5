"""Rules: pure functions from (event, current state) to an Outcome.

A rule never touches the database or the network: it reads state through a StateReader and
returns what should change. The worker stores the outcome atomically with the event's status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from plugin.config import Config, import_setting
from plugin.directory import Directory
from plugin.events import Event, Outcome


class StateReader(Protocol):
    """Read access to rule state (keys are namespaced by convention: "rule:...")."""

    def get(self, key: str) -> Any | None:
        """The stored value, or None."""
        ...


@dataclass(frozen=True)
class Rule:
    """A named pure function applied to events of the given kinds."""

    name: str
    kinds: frozenset[str]
    apply: Callable[[Event, StateReader, datetime], Outcome]  # (event, state, now)
    # The state keys `apply` will read for an event, when the rule can say: the worker then reads
    # them for a whole batch in one query instead of one query per key.
    state_keys: Callable[[Event], Iterable[str]] | None = None


class DictState:
    """A StateReader over a dict: for tests of rules, and as the worker's overlay."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})

    def get(self, key: str) -> Any | None:
        """The value, or None."""
        return self.values.get(key)


def builtin_rules(config: Config) -> list[Rule]:
    """The rules OnRecord ships; connectors and later features add theirs here.

    The approvals rule comes first: when it sets an approved value, the provenance rule (next)
    sees its marker in the same event and signs the change into the record's chain."""
    rules: list[Rule] = []
    people = directory_for(config)
    if any(g.approval_field and g.stages for g in config.governed):
        from plugin.rules.approvals import Settings, approvals_rule

        rules.append(approvals_rule(Settings.from_config(config), people))
    if config.governed:
        from plugin.provenance.rule import provenance_rule_for

        rules.append(provenance_rule_for(config, people))
    from plugin.rules.signals import signals_rule

    rules.append(signals_rule(config))
    return rules


def directory_for(config: Config) -> Callable[[], Directory]:
    """The people directory of a configuration's database, as a snapshot provider for rules."""
    from plugin.directory_store import DirectoryCache
    from plugin.storage import get_engine

    cache: list[DirectoryCache] = []

    def current() -> Directory:
        if not cache:  # built on first use: loading rules must not need the database
            cache.append(DirectoryCache(get_engine(config.storage.url), config))
        return cache[0].current()

    return current


def load_rules(config: Config) -> list[Rule]:
    """Resolve `worker.rules`: each entry names a Rule, a list of Rules, or a factory(config)."""
    rules: list[Rule] = []
    for path in config.worker.rules:
        target = import_setting("worker.rules", path)
        if callable(target) and not isinstance(target, Rule):
            target = target(config)
        if isinstance(target, Rule):
            rules.append(target)
        elif isinstance(target, Sequence) and all(isinstance(r, Rule) for r in target):
            rules.extend(target)
        else:
            raise ValueError(f"worker.rules: {path!r} is not a Rule, a list of Rules or a factory of them")
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"worker.rules: rule names must be unique, got {names}")
    return rules
