"""`demo [--url URL]`: play a whole scenario against a running OnRecord and say what it did.

With `make run` serving (default http://127.0.0.1:8000), in a second terminal:

    .venv/bin/python -m plugin demo

It sends what the senders would, over HTTP, with the secrets `init` wrote under var/secrets/
(the Power Automate key, the Salesforce outbound-message token, an API token), about records
of its own (new ids every run), as the people and leaders of the configuration (`init`'s starter
configuration names made-up ones):

1. a budget request approved through the form and its stages (the flow's POSTs to
   /hooks/power-automate/forms and /approvals): OnRecord sets the status, Verified;
2. a "hallway" approval: a person sets the status to Approved in Salesforce (the outbound message
   Salesforce sends for it); the change is older than the policy's grace window, so it is judged
   at once: Blocked, reverted, a violation recorded;
3. leaders using the system: a leader's change to a governed record (an outbound message), report
   and dashboard views and a training (the Power Automate signals hook), a citation of a figure
   (POST /api/citations); and, so the chart has a history, views and trainings dated in the
   periods before. Logins are counted from Salesforce's LoginHistory, which the worker polls once
   Salesforce is connected: no one can send a login over HTTP, so the demo sends none.

Then it waits for the worker, and prints what OnRecord wrote to the dry-run CRM (read from the
database the server uses, when the demo runs beside it; else only what the APIs say), each
leader's score (GET /api/leaders), and writes the Leader Buy-In report (var/leader-report.html).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connectors.power_automate.connector import settings as pa_settings
from connectors.salesforce.connector import settings as sf_settings
from connectors.salesforce.ids import is_salesforce_id, to_18
from plugin.config import SIGNAL_KINDS, Config, GovernedObject
from plugin.directory import Directory, Person, identifier_key
from plugin.directory_store import configured_person
from plugin.storage import dryrun_records, get_engine, outbox, rule_state

T = TypeVar("T")

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
SOBJECT_NS = "urn:sobject.enterprise.soap.sforce.com"
ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
AMOUNT = "125000"
HISTORY = 5  # periods before this one that get leader signals, so the chart has a history
WAIT_SECONDS = 60.0
REPORT_FILE = "leader-report.html"


class DemoError(Exception):
    """The demo cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Actor:
    """Someone the demo plays: a name, an e-mail, a Salesforce user id (either may be empty)."""

    name: str
    email: str = ""
    salesforce_id: str = ""


@dataclass(frozen=True)
class Cast:
    requester: Actor
    approvers: tuple[Actor, ...]  # one per stage, in order
    hallway: Actor  # sets the status in the CRM, outside the form
    toucher: Actor | None  # a leader who changes a governed record
    leaders: tuple[Actor, ...]  # leaders with an e-mail (the signals hook names them by it)


@dataclass
class Played:
    """What the demo did, to wait for and to tell."""

    verified_id: str = ""
    blocked_id: str = ""
    touched: tuple[str, str] | None = None  # (object, id)
    signals: list[tuple[str, str]] = field(default_factory=list)  # (leader e-mail, kind)


def run(args: argparse.Namespace, config: Config) -> int:
    """Play the scenario; 0 when everything ended as it should."""
    try:
        return Demo(config, args.url.rstrip("/"), print).play()
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


def random_id(prefix: str) -> str:
    """A fresh, well-formed 18-character Salesforce id with this key prefix."""
    return to_18(prefix + "".join(secrets.choice(ALNUM) for _ in range(15 - len(prefix))))


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clock(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%H:%M")


def approval_policy(config: Config) -> GovernedObject:
    """The approval-governed object the demo plays with: one OnRecord sets the status of."""
    policies = [g for g in config.governed if g.approval_field and g.stages and g.set_status]
    if not policies:
        raise DemoError(
            "the configuration governs no object with an approval policy that OnRecord sets the status "
            "of (set_status = true); `python -m plugin init`'s starter configuration has one "
            "(Budget_Request__c): see docs/approvals.md"
        )
    return next((g for g in policies if g.object == "Budget_Request__c"), policies[0])


def choose_cast(config: Config, policy: GovernedObject) -> Cast:
    """Who plays whom, from [directory] people and [leaders] users."""
    directory = Directory(tuple(configured_person(p) for p in config.directory.people))

    def actor(person: Person) -> Actor:
        return Actor(person.name, person.emails[0] if person.emails else "", next(iter(person.crm_ids), ""))

    approvers: list[Actor] = []
    approver_keys: set[str] = set()
    for stage in policy.stages:
        people, loose = directory.resolve_approvers(stage.approvers)
        with_email = [p for p in people if p.emails]
        if with_email:
            approvers.append(actor(with_email[0]))
            approver_keys |= {p.key for p in people}
        elif any("@" in entry for entry in loose):
            email = next(entry for entry in loose if "@" in entry)
            approvers.append(Actor(email, email.lower()))
        else:
            raise DemoError(
                f"stage '{stage.name}' of {policy.object}: none of its approvers {stage.approvers} is a "
                "person with an e-mail in [directory] people; add one (see config/onrecord.example.toml)"
            )
    others = [p for p in directory.people if p.key not in approver_keys]
    requester = next((p for p in others if p.emails), None)
    if requester is None:
        raise DemoError(
            "[directory] people needs someone with an e-mail who approves no stage (the requester)"
        )
    leader_ids = {identifier_key(e) for u in config.leaders.users for e in (u.email, u.salesforce_id) if e}

    def is_leader(person: Person) -> bool:
        return any(identifier_key(i) in leader_ids for i in person.identifiers())

    in_crm = [p for p in others if p.crm_ids and p.key != requester.key]
    hallway = next((p for p in in_crm if is_leader(p)), in_crm[0] if in_crm else None)
    if hallway is None:
        raise DemoError(
            "[directory] people needs someone with a salesforce_id who approves no stage (the person "
            "who sets the status in Salesforce)"
        )
    leaders = []
    for user in config.leaders.users:
        person = directory.find(user.email) or directory.find(user.salesforce_id)
        name = user.name or (person.name if person else "") or user.email or user.salesforce_id
        email = user.email or (person.emails[0] if person and person.emails else "")
        sf_id = user.salesforce_id or (next(iter(person.crm_ids), "") if person else "")
        leaders.append(Actor(name, email.lower(), to_18_or(sf_id)))
    touchers = [a for a in leaders if a.salesforce_id and a.salesforce_id not in hallway.crm_ids]
    return Cast(
        requester=actor(requester),
        approvers=tuple(approvers),
        hallway=actor(hallway),
        toucher=touchers[0] if touchers else None,
        leaders=tuple(a for a in leaders if a.email),
    )


def to_18_or(value: str) -> str:
    return to_18(value) if value and is_salesforce_id(value) else value


def wait_for(what: str, check: Callable[[], T | None], timeout: float = WAIT_SECONDS) -> T:
    """Poll `check` until it gives something; DemoError naming `what` when time is up."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise DemoError(
                f"waited {timeout:.0f} s for {what}; is the worker running (`make run` starts one)?"
            )
        time.sleep(0.3)


class Demo:
    """One run of the demo against one OnRecord."""

    def __init__(self, config: Config, url: str, say: Callable[[str], None]) -> None:
        self.config = config
        self.url = url
        self.say = say
        self.http = requests.Session()
        self.now = datetime.now(UTC)
        self.org_id = sf_settings(config).org_id
        pa_keys, tokens = pa_settings(config).api_key, config.api.tokens
        missing = [
            name
            for name, value in (
                ("power_automate.api_key", pa_keys),
                ("salesforce.outbound_token", sf_settings(config).outbound_token),
                ("api.tokens", tokens),
                ("salesforce.org_id", self.org_id),
            )
            if not value
        ]
        if missing:
            raise DemoError(
                f"{', '.join(missing)} not set: run `python -m plugin init` (it writes the development "
                f"secrets under {config.secrets_dir}/ and a starter config/onrecord.toml) in the "
                "directory `make run` serves from"
            )
        self.pa_key, self.api_token = pa_keys[0], tokens[0]
        self.policy = approval_policy(config)
        self.cast = choose_cast(config, self.policy)
        self.played = Played()
        self.engine: Engine | None = None

    # -- sending ---------------------------------------------------------------------------------

    def _post(self, path: str, body: Mapping[str, Any], what: str) -> requests.Response:
        return self._check(
            self.http.post(
                self.url + path,
                data=json.dumps(body),
                headers={"X-OnRecord-Key": self.pa_key, "Content-Type": "application/json"},
                timeout=30,
            ),
            what,
        )

    def _check(self, resp: requests.Response, what: str) -> requests.Response:
        if resp.status_code >= 300:
            raise DemoError(f"{what}: OnRecord answered {resp.status_code}: {resp.text[:300]}")
        return resp

    def _api(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> requests.Response:
        return self.http.request(
            method,
            self.url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.api_token}"},
            timeout=30,
        )

    def outbound(self, obj: str, record_id: str, fields: Mapping[str, str], actor: str, at: datetime) -> None:
        """A Salesforce outbound message: the record's fields as of a change by `actor` at `at`."""
        values = {"Id": record_id, **fields, "LastModifiedById": actor, "LastModifiedDate": iso(at)}
        values["SystemModstamp"] = iso(at)
        sobject = "".join(f"<sf:{k}>{escape(v)}</sf:{k}>" for k, v in values.items())
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<soapenv:Envelope xmlns:soapenv="{SOAP11}" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
            f'<notifications xmlns="{OUTBOUND_NS}"><OrganizationId>{escape(self.org_id)}</OrganizationId>'
            f'<ActionId>{random_id("04k")}</ActionId><SessionId xsi:nil="true"/>'
            f"<Notification><Id>{random_id('04l')}</Id>"
            f'<sObject xsi:type="sf:{obj}" xmlns:sf="{SOBJECT_NS}">{sobject}</sObject></Notification>'
            "</notifications></soapenv:Body></soapenv:Envelope>"
        )
        resp = self.http.post(
            f"{self.url}/hooks/salesforce/outbound",
            params={"token": sf_settings(self.config).outbound_token},
            data=body.encode("utf-8"),
            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
            timeout=30,
        )
        self._check(resp, f"the outbound message about {obj} {record_id}")
        if b"<Ack>true</Ack>" not in resp.content:
            raise DemoError(
                f"the outbound message about {obj} {record_id} was not acknowledged: {resp.text[:300]}"
            )

    def form(self, record_id: str, requester: Actor, at: datetime) -> None:
        body = {
            "form_id": self.policy.form_id,
            "form_name": "Budget Request",
            "response_id": secrets.randbelow(10**9) + 1,
            "responder": requester.email,
            "submitted_at": iso(at),
            "record": {"object": self.policy.object, "id": record_id},
            "answers": {"Amount (EUR)": AMOUNT, "Justification": "Demo: renewal of the CRM licences"},
        }
        self._post("/hooks/power-automate/forms", body, "the form response")

    def decision(self, record_id: str, stage: str, who: Actor, at: datetime) -> None:
        """One stage's 'Start and wait for an approval' output, as the flow passes it through."""
        requested = at - timedelta(minutes=2)
        body = {
            "stage": stage,
            "record": {"object": self.policy.object, "id": record_id},
            "approval": {
                "name": str(uuid.uuid4()),
                "title": f"{self.policy.object} {record_id} - {stage}",
                "outcome": "Approve",
                "requestDate": iso(requested),
                "completionDate": iso(at),
                "responses": [
                    {
                        "responder": {
                            "id": str(uuid.uuid4()),
                            "displayName": who.name,
                            "email": who.email,
                            "tenantId": DEMO_TENANT,
                            "userPrincipalName": who.email,
                        },
                        "requestDate": iso(requested),
                        "responseDate": iso(at),
                        "approverResponse": "Approve",
                        "comments": None,
                    }
                ],
            },
        }
        self._post("/hooks/power-automate/approvals", body, f"stage '{stage}'s decision")

    def signal(self, kind: str, leader: Actor, at: datetime, details: Mapping[str, Any]) -> None:
        body = {"kind": kind, "leader": leader.email, "occurred_at": iso(at), "id": f"demo-{uuid.uuid4()}"}
        self._post("/hooks/power-automate/signals", {**body, "details": dict(details)}, f"a {kind} signal")

    # -- the scenario ------------------------------------------------------------------------------

    def play(self) -> int:
        try:
            self._check(self.http.get(self.url + "/healthz", timeout=10), "GET /healthz")
        except requests.RequestException as exc:
            raise DemoError(
                f"OnRecord is not answering at {self.url} ({type(exc).__name__}): start it with `make run`"
            ) from None
        self.say(
            f"OnRecord demo against {self.url}: what the form, the approval flow, Salesforce and the "
            "leaders would send."
        )
        self.say("")
        baseline = self._leaders()
        self._verified_approval()
        self._hallway_approval()
        self._leaders_use_the_system()
        snapshot = self._wait_for_signals(baseline)
        self.engine = self._same_database()
        self.say("")
        if self.engine is not None:
            self._tell_dry_run(self.engine, snapshot)
        else:
            self.say(
                "What OnRecord wrote to its CRM is in the server's own database (this demo does not run "
                "beside it): `python -m plugin outbox` there shows it."
            )
        self.say("")
        self._tell_scores(snapshot)
        path = self._write_report()
        self.say("")
        self.say(f"Report: {path} (open it in a browser; print it, or paste it into a slide).")
        return 0

    def _verified_approval(self) -> None:
        policy, cast = self.policy, self.cast
        rid = self.played.verified_id = random_id("a0B")
        t0 = self.now - timedelta(minutes=50)
        self.outbound(
            policy.object, rid, self._fields(policy.revert_to), cast.requester.salesforce_id or DEMO_USER, t0
        )
        submitted = t0 + timedelta(minutes=1)
        self.form(rid, cast.requester, submitted)
        steps = [f"{cast.requester.name} submitted the form '{policy.form_id}' ({clock(submitted)})"]
        for n, (stage, who) in enumerate(zip(policy.stages, cast.approvers, strict=True)):
            at = t0 + timedelta(minutes=5 + 15 * n)
            self.decision(rid, stage.name, who, at)
            steps.append(f"{who.name} approved '{stage.name}' ({clock(at)})")
        self.say(f"1. A budget request through the form: {policy.object} {rid}.")
        self.say(_wrap("; ".join(steps) + "."))
        verified = self._verdict(rid, "Verified")
        self.say(
            _wrap(
                f"-> Verified: OnRecord set {policy.approval_field} = {verified.get('status_value')} itself. "
                f'"{verified.get("note")}"'
            )
        )

    def _hallway_approval(self) -> None:
        policy, cast = self.policy, self.cast
        rid = self.played.blocked_id = random_id("a0B")
        changed = self.now - timedelta(seconds=policy.grace_seconds + 60)
        actor = cast.hallway.salesforce_id
        self.outbound(
            policy.object,
            rid,
            self._fields(policy.revert_to),
            cast.requester.salesforce_id or DEMO_USER,
            changed - timedelta(hours=1),
        )
        self.outbound(policy.object, rid, self._fields(policy.approved_values[0]), actor, changed)
        minutes = round((self.now - changed).total_seconds() / 60)
        self.say(f"2. A hallway approval: {policy.object} {rid}.")
        self.say(
            _wrap(
                f"{cast.hallway.name} set {policy.approval_field} to {policy.approved_values[0]} in "
                f"Salesforce {minutes} minutes ago, without the form; Salesforce's outbound message "
                f"tells OnRecord now, after the {policy.grace_seconds} s the flow's events had to arrive "
                "(grace_seconds)."
            )
        )
        blocked = self._verdict(rid, "Blocked")
        self.say(
            _wrap(
                f"-> Blocked: reverted to {policy.revert_to}, a violation recorded against "
                f'{cast.hallway.name}. "{blocked.get("note")}"'
            )
        )

    def _fields(self, status: str) -> dict[str, str]:
        fields = {self.policy.approval_field: status}
        for name in self.policy.fields:
            if name != self.policy.approval_field and "amount" in name.lower():
                fields[name] = AMOUNT
        return fields

    def _leaders_use_the_system(self) -> None:
        cast, played = self.cast, self.played
        self.say("3. Leaders using the system:")
        plain = next((g for g in self.config.governed if not g.approval_field), None)
        if cast.toucher is not None and plain is not None:
            prefix = "006" if plain.object == "Opportunity" else "a0C"
            rid = random_id(prefix)
            values = {f: _sample(f) for f in plain.fields}
            self.outbound(
                plain.object, rid, values, cast.toucher.salesforce_id, self.now - timedelta(minutes=3)
            )
            played.touched = (plain.object, rid)
            self.say(
                _wrap(f"{cast.toucher.name} changed {plain.object} {rid} in Salesforce (a record touched).")
            )
        for n, leader in enumerate(cast.leaders):
            for k in range(max(4 - n, 1)):
                at = self.now - timedelta(minutes=30 - k)
                self.signal("report.viewed", leader, at, {"report": "Pipeline"})
                played.signals.append((leader.email, "report_view"))
            for k in range(2 if n < 2 else 0):
                at = self.now - timedelta(minutes=20 - k)
                self.signal("dashboard.viewed", leader, at, {"dashboard": "Leader Buy-In"})
                played.signals.append((leader.email, "dashboard_view"))
        if cast.leaders:
            views = _names(a.name for a in cast.leaders)
            self.say(_wrap(f"{views} opened CRM reports and dashboards (the Power Automate signals hook)."))
        trainees = cast.leaders[:2]
        for leader in trainees:
            at = self.now - timedelta(minutes=40)
            self.signal("training", leader, at, {"course": "Working in the CRM"})
            played.signals.append((leader.email, "training"))
        if trainees:
            who = _names(a.name for a in trainees)
            self.say(_wrap(f"{who} attended the training 'Working in the CRM' (the signals hook)."))
        if cast.leaders:
            leader = cast.leaders[0]
            obj, rid = self.policy.object, played.verified_id
            amount = next(
                (f for f in self.policy.fields if "amount" in f.lower()), self.policy.approval_field
            )
            body = {"leader": leader.email, "object": obj, "id": rid, "field": amount}
            body |= {"value": AMOUNT if amount != self.policy.approval_field else "Approved"}
            body["occasion"] = "Quarterly business review"
            cited = self._check(self._api("POST", "/api/citations", body), "POST /api/citations").json()
            played.signals.append((leader.email, "citation"))
            self.say(
                _wrap(
                    f"{leader.name} cited {obj} {rid} {amount} = {body['value']} at the quarterly review "
                    f'(POST /api/citations): "{cited.get("statement", "")}"'
                )
            )
        self._history()
        self.say(
            _wrap(
                "Logins are counted from Salesforce's LoginHistory, which the worker polls once "
                "Salesforce is connected; no one can send a login over HTTP, so the demo sends none."
            )
        )

    def _history(self) -> None:
        """Report and dashboard views dated in the periods before this one (more each period), so
        the chart has a history."""
        from plugin.leaders.periods import last_periods, period_of

        kind = self.config.leaders.period
        earlier = last_periods(period_of(self.now, kind), HISTORY + 1)[:-1]
        for age, period in zip(range(HISTORY, 0, -1), earlier, strict=True):
            for n, leader in enumerate(self.cast.leaders):
                views = (HISTORY - age + 1) * (len(self.cast.leaders) - n + 1) // 2
                for k in range(views):
                    at = period.start + (period.end - period.start) * (k + 1) / (views + 2)
                    self.signal("report.viewed", leader, at, {"report": "Pipeline"})
                for k in range((HISTORY - age) // 2 if n < 2 else 0):
                    at = period.start + (period.end - period.start) * (k + 1) / 5
                    self.signal("dashboard.viewed", leader, at, {"dashboard": "Leader Buy-In"})
        if self.cast.leaders and earlier:
            self.say(
                _wrap(
                    f"And, so the chart has a history: report and dashboard views dated in the {HISTORY} "
                    f"periods before ({earlier[0].name} to {earlier[-1].name})."
                )
            )

    # -- waiting and telling -------------------------------------------------------------------

    def _verdict(self, record_id: str, verdict: str) -> dict[str, Any]:
        path = f"/api/approvals/{self.policy.object}/{record_id}"

        def judged() -> dict[str, Any] | None:
            resp = self._api("GET", path)
            if resp.status_code == 404:
                return None
            body: dict[str, Any] = self._check(resp, f"GET {path}").json()
            return body if body.get("verdict") == verdict else None

        return wait_for(f"{self.policy.object} {record_id} to be {verdict}", judged)

    def _leaders(self, period: str | None = None) -> dict[str, Any]:
        resp = self._api("GET", "/api/leaders" + (f"?period={period}" if period else ""))
        if resp.status_code == 404:
            raise DemoError(f"{self.url} does not serve GET /api/leaders: is it an older OnRecord?")
        body: dict[str, Any] = self._check(resp, "GET /api/leaders").json()
        return body

    def _wait_for_signals(self, baseline: Mapping[str, Any]) -> dict[str, Any]:
        """GET /api/leaders once it counts every signal the demo sent in this period."""
        expected: dict[tuple[str, str], int] = {}
        for email, kind in self.played.signals:
            expected[(email, kind)] = expected.get((email, kind), 0) + 1
        before = _counts(baseline)

        def counted() -> dict[str, Any] | None:
            now = self._leaders(str(baseline.get("period")))
            after = _counts(now)
            ok = all(after.get(k, 0) >= before.get(k, 0) + n for k, n in expected.items())
            return now if ok else None

        return wait_for("the leader signals to be counted", counted)

    def _same_database(self) -> Engine | None:
        """The server's database, when the demo runs beside it (same configuration): None else."""
        if urlsplit(self.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            return None
        try:
            engine = get_engine(self.config.storage.url)
            key = f"approvals:{self.policy.object}/{self.played.blocked_id}"
            with engine.connect() as conn:
                found = conn.execute(sa.select(rule_state.c.key).where(rule_state.c.key == key)).first()
        except sa.exc.SQLAlchemyError:
            return None
        return engine if found is not None else None

    def _tell_dry_run(self, engine: Engine, snapshot: Mapping[str, Any]) -> None:
        policy, played = self.policy, self.played

        def written() -> list[tuple[str, str, dict[str, Any]]] | None:
            rows = _dry_run(engine)
            mine = {(o, k): f for o, k, f in rows}
            a = mine.get((policy.object, played.verified_id), {})
            b = mine.get((policy.object, played.blocked_id), {})
            done = a.get("OnRecord_Approval__c") == "Verified" and b.get("OnRecord_Approval__c") == "Blocked"
            return rows if done and not _pending(engine) else None

        rows = wait_for("the dispatcher to write to the dry-run CRM", written)
        self.say("What OnRecord wrote to the dry-run CRM (recorded locally, nothing sent to Salesforce):")
        ours = {played.verified_id, played.blocked_id}
        if played.touched:
            ours.add(played.touched[1])
        for obj, key, fields in rows:
            if key in ours:
                self.say(_wrap(f"{obj} {key}: {_describe(fields)}", first="  - ", rest="    "))
                note = fields.get("OnRecord_Approval_Note__c")
                if note:
                    self.say(_wrap(f'note: "{note}"', first="      ", rest="      "))
        for obj, key, fields in rows:
            if obj == "OnRecord_Violation__c" and fields.get("OnRecord_Record_Id__c") == played.blocked_id:
                self.say(
                    _wrap(
                        f"OnRecord_Violation__c {key}: {fields.get('OnRecord_Actor_Name__c')}, "
                        f"{fields.get('OnRecord_Rule__c')}, {fields.get('OnRecord_Action__c')}",
                        first="  - ",
                        rest="    ",
                    )
                )
        self._tell_leader_records(engine, snapshot)

    def _tell_leader_records(self, engine: Engine, snapshot: Mapping[str, Any]) -> None:
        """The OnRecord_Leader_Signal__c records of this period, once the aggregation wrote them."""
        period = str(snapshot.get("period"))
        scores = sorted(round(float(lead.get("score") or 0), 1) for lead in snapshot.get("leaders", []))
        every = self.config.leaders.aggregate_seconds
        wait = min(every + 10.0, 90.0)
        self.say(f"  (waiting up to {wait:.0f} s for the leader aggregation, which runs every {every:g} s)")

        def aggregated() -> list[tuple[str, dict[str, Any]]] | None:
            found = [(k, f) for o, k, f in _dry_run(engine) if o == "OnRecord_Leader_Signal__c"]
            found = [(k, f) for k, f in found if f.get("OnRecord_Period__c") == period]
            written = sorted(round(float(f.get("OnRecord_Score__c") or 0), 1) for _, f in found)
            return found if written == scores and not _pending(engine) else None  # as GET /api/leaders

        try:
            records = wait_for("the leader aggregation", aggregated, timeout=wait)
        except DemoError:
            self.say(
                "  - OnRecord_Leader_Signal__c: not written yet; the worker writes one per leader and "
                f"period every {every:g} s (`python -m plugin outbox` shows them)."
            )
            return
        directory = Directory(tuple(configured_person(p) for p in self.config.directory.people))
        for key, fields in sorted(records, key=lambda r: -float(r[1].get("OnRecord_Score__c") or 0)):
            leader = key.rpartition(":")[0]  # the external id: "<leader key>:<period>"
            counts = _said(
                (int(fields[name]), kind) for name, kind in LEADER_COUNT_FIELDS if fields.get(name)
            )
            champion = ", champion candidate" if fields.get("OnRecord_Champion_Candidate__c") else ""
            user = fields.get("OnRecord_Leader__c")
            self.say(
                _wrap(
                    f"OnRecord_Leader_Signal__c {key}: {directory.name_of(leader)}"
                    f"{f' (user {user})' if user else ''}, score {fields.get('OnRecord_Score__c')}"
                    f"{champion}; {counts or 'no signals'}",
                    first="  - ",
                    rest="    ",
                )
            )

    def _tell_scores(self, snapshot: Mapping[str, Any]) -> None:
        self.say(
            f"Leader scores, {snapshot.get('period')} (weights {snapshot.get('weights_version')}), "
            "from GET /api/leaders:"
        )
        champions = set(snapshot.get("champions", []))
        width = max((len(str(lead.get("name"))) for lead in snapshot.get("leaders", [])), default=10)
        for lead in snapshot.get("leaders", []):
            counts = lead.get("counts") or {}
            said = _said((int(counts[k]), k) for k in SIGNAL_KINDS if counts.get(k))
            champion = lead.get("champion_candidate") or lead.get("email") in champions
            score = float(lead.get("score") or 0)
            line = f"{lead.get('name')!s:<{width}} {score:6.1f}{'  champion candidate' if champion else ''}"
            self.say(_wrap(f"{line}: {said or 'no signals'}", first="  ", rest=" " * (width + 10)))

    def _write_report(self) -> Path:
        from plugin.report import (
            OffSystemApproval,
            ReportData,
            gather,
            period_label,
            write_report,
        )

        path = Path(self.config.var_dir) / REPORT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.engine is not None:
            write_report(str(path), gather(self.engine, self.config))
            return path
        from plugin.leaders.periods import last_periods, parse_period

        current = parse_period(str(self._leaders()["period"]), self.config.leaders.period)
        history = [self._leaders(p.name) for p in last_periods(current, 12)]
        blocked = self._verdict(self.played.blocked_id, "Blocked")
        change = blocked["changes"][-1] if blocked.get("changes") else {}
        off = [
            OffSystemApproval(
                who=str(change.get("actor") or ""),
                who_name=str(change.get("actor_name") or self.cast.hallway.name),
                object=self.policy.object,
                record_id=self.played.blocked_id,
                occurred_at=datetime.fromisoformat(str(change.get("changed_at") or iso(self.now))),
                why=str(blocked.get("note") or blocked.get("reason") or ""),
            )
        ]
        data = ReportData(
            history=history,
            off_system=[o for o in off if current.start <= o.occurred_at < current.end],
            weights=dict(self.config.leaders.weights),
            period_label=period_label(current.start, current.end, self.config.leaders.period),
        )
        write_report(str(path), data)
        return path


DEMO_TENANT = "00000000-0000-4000-8000-00000000d3e0"  # the made-up Entra tenant of the approvers
DEMO_USER = "005DEMO00000009YDA"  # stands for the requester in the CRM when they have no user id
LEADER_COUNT_FIELDS = (
    ("OnRecord_Logins__c", "login"),
    ("OnRecord_Records_Touched__c", "record_touched"),
    ("OnRecord_Form_Approvals__c", "form_approval"),
    ("OnRecord_Off_System_Approvals__c", "off_system_approval"),
    ("OnRecord_Trainings__c", "training"),
    ("OnRecord_Citations__c", "citation"),
    ("OnRecord_Report_Views__c", "report_view"),
    ("OnRecord_Dashboard_Views__c", "dashboard_view"),
)
# Each signal kind in words: (one, several).
KIND_WORDS = {
    "login": ("login", "logins"),
    "record_touched": ("record touched", "records touched"),
    "form_approval": ("form approval", "form approvals"),
    "off_system_approval": ("off-system approval", "off-system approvals"),
    "training": ("training", "trainings"),
    "citation": ("citation", "citations"),
    "report_view": ("report view", "report views"),
    "dashboard_view": ("dashboard view", "dashboard views"),
}
# Fields told by what they are rather than by their (long) value.
_SIGNED = {"OnRecord_Signature__c": "signed", "OnRecord_Digest__c": None, "OnRecord_Approval_Note__c": None}


def _sample(field_name: str) -> str:
    lowered = field_name.lower()
    if "amount" in lowered:
        return "480000"
    if "date" in lowered:
        return (datetime.now(UTC) + timedelta(days=45)).date().isoformat()
    if "stage" in lowered:
        return "Negotiation/Review"
    return "Demo"


def _counts(snapshot: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for lead in snapshot.get("leaders", []):
        for kind, n in (lead.get("counts") or {}).items():
            found[(str(lead.get("email") or ""), kind)] = int(n)
    return found


def _dry_run(engine: Engine) -> list[tuple[str, str, dict[str, Any]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(dryrun_records.c.object, dryrun_records.c.record_key, dryrun_records.c.fields).order_by(
                dryrun_records.c.updated_at
            )
        ).all()
    return [(o, k, dict(f) if isinstance(f, Mapping) else {}) for o, k, f in rows]


def _pending(engine: Engine) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                sa.select(outbox.c.id).where(outbox.c.target == "crm", outbox.c.status == "pending").limit(1)
            ).first()
            is not None
        )


def _said(counts: Iterable[tuple[int, str]]) -> str:
    """ "1 citation, 3 report views" """
    words = []
    for n, kind in counts:
        one, several = KIND_WORDS.get(kind, (kind, kind))
        words.append(f"{n} {one if n == 1 else several}")
    return ", ".join(words)


def _names(names: Iterable[str]) -> str:
    """ "A", "A and B", "A, B and C" """
    listed = list(names)
    return ", ".join(listed[:-1]) + " and " + listed[-1] if len(listed) > 1 else "".join(listed)


def _describe(fields: Mapping[str, Any]) -> str:
    said = []
    for name, value in fields.items():
        if name in _SIGNED:
            if _SIGNED[name]:
                said.append(f"{_SIGNED[name]} ({name})")
            continue
        text = str(value)
        said.append(f"{name} = {text if len(text) <= 60 else text[:57] + '...'}")
    return ", ".join(said)


def _wrap(text: str, first: str = "   ", rest: str = "   ") -> str:
    return textwrap.fill(
        text, width=100, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False
    )
