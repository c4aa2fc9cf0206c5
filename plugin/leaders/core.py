"""Leader buy-in signals, pure: who the leaders are, what their facts count, score, trend, champions.

Everything here is a function of its arguments (facts or their counts, the directory, the
configuration), recomputed from the facts every time: no counter is ever incremented, so a fact
delivered twice, replayed or received late can never count twice. A fact is identified by
(kind, key); of several versions of one fact the last updated wins (a retraction included).

- Leaders: the `[leaders] users`, and every active person the directory has in one of the
  `[leaders] roles`; the integration user and the approval policies' status writers never.
  People the directory knows as one person are one leader.
- A fact counts for a leader when its person is one of the leader's identifiers, or one the
  directory says is the same person (`Directory.same_person`); retracted facts never count.
- score = sum(weight x count) over the kinds, rounded to 0.1; trend = score - the previous
  period's score (same leaders, same weights).
- Champion candidates: of the leaders scoring over `champion_threshold` who gave no off-system
  approval in the last `champion_clean_periods` periods (this one included), the first
  `champions_top` by score, ties broken by name, then e-mail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from plugin.config import SIGNAL_KINDS, Config, LeadersConfig
from plugin.directory import Directory, Person, identifier_key
from plugin.leaders.periods import Period, PeriodKind, last_periods, period_of, previous_period
from plugin.registry import canonical_id, own_users

OFF_SYSTEM = "off_system_approval"
_SLOT = {kind: i for i, kind in enumerate(SIGNAL_KINDS)}

# period name -> person identifier (as the facts name them) -> facts per kind, in SIGNAL_KINDS order
Counts = Mapping[str, Mapping[str, Sequence[int]]]


@dataclass(frozen=True)
class Leader:
    """A leader, with every identifier their facts may name them by."""

    key: str  # the Salesforce user id (18) when known, else the e-mail: stable across periods
    name: str
    email: str = ""
    salesforce_id: str = ""
    identifiers: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How lists name the leader: the e-mail, else the user id."""
        return self.email or self.salesforce_id or self.key


@dataclass(frozen=True)
class FactRow:
    """One stored fact, as aggregation sees it."""

    kind: str
    key: str
    person: str
    occurred_at: datetime
    retracted: bool = False
    updated_at: datetime | None = None


@dataclass(frozen=True)
class LeaderSignals:
    """One leader in one period."""

    leader: Leader
    counts: Mapping[str, int]  # every kind of SIGNAL_KINDS, 0 when none
    score: float
    trend: float
    champion_candidate: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "email": self.leader.email,
            "name": self.leader.name,
            "salesforce_id": self.leader.salesforce_id,
            "counts": {kind: int(self.counts[kind]) for kind in SIGNAL_KINDS},
            "score": self.score,
            "trend": self.trend,
            "champion_candidate": self.champion_candidate,
        }


@dataclass(frozen=True)
class PeriodSignals:
    """Every leader in one period, best score first, and the champion candidates."""

    period: Period
    weights_version: str
    leaders: tuple[LeaderSignals, ...]
    champions: tuple[Leader, ...]
    # The version of the CRM's configuration records the leaders and weights came from
    # ([crm_config]; "" when they came from the file alone, and then not in the JSON)
    config_version: str = ""

    def to_json(self) -> dict[str, Any]:
        """The body of GET /api/leaders."""
        body: dict[str, Any] = {
            "period": self.period.name,
            "weights_version": self.weights_version,
            "leaders": [signals.to_json() for signals in self.leaders],
            "champions": [leader.label for leader in self.champions],
        }
        if self.config_version:
            body["config_version"] = self.config_version
        return body


# --- who the leaders are -------------------------------------------------------------------------


def _crm_id(value: str) -> str:
    value = value.strip()
    return canonical_id(value) or value


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for value in values:
        if value.strip():
            seen.setdefault(identifier_key(value), value.strip())
    return tuple(seen.values())


def never_leaders(config: Config) -> list[str]:
    """Who never counts as a leader: the integration user and every policy's status writers."""
    entries = list(own_users(config))
    entries += [writer for governed in config.governed for writer in governed.status_writers]
    return [e.strip() for e in entries if e.strip()]


def resolve_leaders(config: Config, directory: Directory) -> list[Leader]:
    """The leaders `[leaders]` names, through the directory, in key order."""
    settings = config.leaders
    drafts: dict[tuple[str, object], dict[str, Any]] = {}

    def add(person: Person | None, email: str, sf_id: str, name: str) -> None:
        mark: tuple[str, object] = ("p", id(person)) if person else ("i", identifier_key(sf_id or email))
        draft = drafts.setdefault(mark, {"person": person, "emails": [], "ids": [], "names": []})
        for field, value in (("emails", email), ("ids", sf_id), ("names", name)):
            if value:
                draft[field].append(value)

    for entry in settings.users:
        email, sf_id = entry.email.strip().lower(), _crm_id(entry.salesforce_id)
        person = directory.find(sf_id) if sf_id else None
        if person is None and email:
            person = directory.find(email)
        add(person, email, sf_id, entry.name.strip())
    roles = {role.strip().casefold() for role in settings.roles if role.strip()}
    if roles:
        for person in directory.people:
            if person.active and any(role.casefold() in roles for role in person.roles):
                add(person, "", "", "")

    excluded_people, loose = directory.resolve_approvers(never_leaders(config))
    excluded = {identifier_key(e) for e in loose}
    excluded |= {identifier_key(i) for p in excluded_people for i in p.identifiers()}
    leaders: dict[str, Leader] = {}
    for draft in drafts.values():
        person = draft["person"]
        known = person.identifiers() if person is not None else ()
        identifiers = _unique((*draft["emails"], *draft["ids"], *known))
        if any(identifier_key(i) in excluded for i in identifiers):
            continue
        sf_id = next(iter(draft["ids"]), "") or (person.crm_ids[0] if person and person.crm_ids else "")
        email = next(iter(draft["emails"]), "") or (person.emails[0] if person and person.emails else "")
        name = next(iter(draft["names"]), "") or (person.name if person else "") or email or sf_id
        key = sf_id or email
        leaders.setdefault(key, Leader(key, name, email, sf_id, identifiers))
    return [leaders[k] for k in sorted(leaders)]


class LeaderIndex:
    """Which leader a fact's person is, answered once per distinct identifier.

    An identifier names a leader when it is one of theirs, or names the same person in the
    directory (`Directory.same_person`): the directory finds a person by the key of any of their
    identifiers, so the keys of every identifier of every person a leader's identifiers find are
    the leader's keys, and one dictionary lookup answers."""

    def __init__(self, leaders: Sequence[Leader], directory: Directory) -> None:
        self.leaders = list(leaders)
        self._by_key: dict[str, str] = {}
        for leader in self.leaders:
            for ident in leader.identifiers:
                self._by_key.setdefault(identifier_key(ident), leader.key)
        for leader in self.leaders:
            for ident in leader.identifiers:
                person = directory.find(ident)
                for other in person.identifiers() if person is not None else ():
                    self._by_key.setdefault(identifier_key(other), leader.key)
        # The leaders' Salesforce ids, lower-cased: an 18-character id none of them matches in
        # any case cannot be a leader's, which spares checking its suffix (most facts are staff's).
        self._ids_lower = {k[3:].lower() for k in self._by_key if k.startswith("sf:")}
        self._cache: dict[str, str | None] = {}

    def leader_of(self, identifier: str) -> str | None:
        """The key of the leader an identifier names, or None."""
        try:
            return self._cache[identifier]
        except KeyError:
            found = self._by_key.get(self._key(identifier.strip()))
            self._cache[identifier] = found
            return found

    def _key(self, text: str) -> str:
        """identifier_key(text), cheaply where it can only miss."""
        if not (text.isascii() and text.isalnum()):
            return text.lower()  # e-mails, UPNs: what identifier_key does with them
        if len(text) == 18 and text[:15].lower() not in self._ids_lower and text.lower() not in self._by_key:
            return ""  # whatever case it is restored to, none of the leaders' ids
        return identifier_key(text)

    def per_leader(self, counts: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
        """One period's counts per identifier -> per leader key (kinds in SIGNAL_KINDS order)."""
        out: dict[str, list[int]] = {}
        for person, kinds in counts.items():
            leader = self.leader_of(person)
            if leader is not None:
                mine = out.get(leader)
                if mine is None:
                    out[leader] = list(kinds)
                else:
                    for i, n in enumerate(kinds):
                        mine[i] += n
        return out


# --- counting and scoring ------------------------------------------------------------------------


def count_facts(facts: Iterable[FactRow], kind: PeriodKind) -> dict[str, dict[str, list[int]]]:
    """Facts -> per period and person, the number of (non-retracted) facts of each kind. Each
    (kind, key) counts once: of its versions, the last updated (then retracted) one stands."""
    latest: dict[tuple[str, str], FactRow] = {}
    for fact in facts:
        seen = latest.get((fact.kind, fact.key))
        if seen is None or _version(fact) > _version(seen):
            latest[(fact.kind, fact.key)] = fact
    counts: dict[str, dict[str, list[int]]] = {}
    for fact in latest.values():
        if fact.retracted or fact.kind not in _SLOT:
            continue
        bucket = counts.setdefault(period_of(fact.occurred_at, kind).name, {})
        vector = bucket.get(fact.person)
        if vector is None:
            vector = bucket[fact.person] = [0] * len(SIGNAL_KINDS)
        vector[_SLOT[fact.kind]] += 1
    return counts


def _version(fact: FactRow) -> tuple[float, bool, str, float]:
    stamp = fact.updated_at.timestamp() if fact.updated_at is not None else float("-inf")
    return (stamp, fact.retracted, fact.person, fact.occurred_at.timestamp())


def score_of(counts: Sequence[int], weights: Mapping[str, float]) -> float:
    """sum(weight x count) over the kinds (counts in SIGNAL_KINDS order), rounded to 0.1."""
    total = math.fsum(weights.get(kind, 0.0) * n for kind, n in zip(SIGNAL_KINDS, counts, strict=True))
    return round(total, 1) + 0.0  # + 0.0: never -0.0


def rank_key(signals: LeaderSignals) -> tuple[float, str, str, str, str]:
    """Best score first; then by name, then e-mail (then key): the same order every time."""
    leader = signals.leader
    return (-signals.score, leader.name.casefold(), leader.name, leader.email, leader.key)


def score_period(
    period: Period,
    counts: Counts,
    leaders: Sequence[Leader],
    directory: Directory,
    settings: LeadersConfig,
    *,
    index: LeaderIndex | None = None,
) -> PeriodSignals:
    """One period's signals from the counts of it, of the period before (trend) and of the
    `champion_clean_periods` periods ending with it (off-system approvals only)."""
    index = index or LeaderIndex(leaders, directory)
    weights = settings.weights
    current = index.per_leader(counts.get(period.name, {}))
    before = index.per_leader(counts.get(previous_period(period).name, {}))
    tainted: set[str] = set()
    for past in last_periods(period, settings.champion_clean_periods):
        for leader_key, kinds in index.per_leader(counts.get(past.name, {})).items():
            if kinds[_SLOT[OFF_SYSTEM]] > 0:
                tainted.add(leader_key)

    none = [0] * len(SIGNAL_KINDS)
    rows = []
    for leader in leaders:
        mine = current.get(leader.key, none)
        score = score_of(mine, weights)
        trend = round(score - score_of(before.get(leader.key, none), weights), 1) + 0.0
        rows.append(LeaderSignals(leader, dict(zip(SIGNAL_KINDS, mine, strict=True)), score, trend, False))
    rows.sort(key=rank_key)
    eligible = [r for r in rows if r.score > settings.champion_threshold and r.leader.key not in tainted]
    chosen = {r.leader.key for r in eligible[: settings.champions_top]}
    ranked = tuple(LeaderSignals(r.leader, r.counts, r.score, r.trend, r.leader.key in chosen) for r in rows)
    return PeriodSignals(
        period=period,
        weights_version=settings.weights_version,
        leaders=ranked,
        champions=tuple(r.leader for r in ranked if r.champion_candidate),
    )


def aggregate(
    period: Period,
    facts: Iterable[FactRow],
    leaders: Sequence[Leader],
    directory: Directory,
    settings: LeadersConfig,
) -> PeriodSignals:
    """One period's signals from facts (those of other periods are used for the trend and the
    champion rule, or ignored)."""
    return score_period(period, count_facts(facts, settings.period), leaders, directory, settings)
