"""Which channel a governed record's change came through: a pure function over what is known.

Correlation (stated once, applied everywhere): a change of record R at time t is
- **Form** when a `form.submitted` for R was submitted in [t - window, t + skew]: the latest such
  response is the source (its flow run, if the flow sent one, is named too);
- **Flow** otherwise, when a Power Automate run touched R in that interval: a `form.submitted`
  or `approval.decided` event for R that carries a `flow_run_id`;
- **Import** when the actor is a configured import user (a bulk load is never a form's doing, so
  this is decided first);
- **API** when the actor is a configured API user (and no form or flow correlates);
- **UI** when the actor is any other user: a person in the CRM;
- **Unknown** when the change carries no actor.
`window` is `provenance.form_window_seconds` (default 10 minutes); `skew` 2 minutes covers a flow
that writes the record a moment before it reports the form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

Channel = Literal["Form", "Flow", "Import", "API", "UI", "Unknown"]
CHANNELS: tuple[Channel, ...] = ("Form", "Flow", "UI", "API", "Import", "Unknown")
SKEW = timedelta(minutes=2)


@dataclass(frozen=True)
class FormRef:
    """The form response a change came from."""

    form_id: str
    form_name: str
    response_id: str
    responder: str | None


@dataclass(frozen=True)
class Attribution:
    """The classification of one change."""

    channel: Channel
    actor: str | None
    on_behalf_of: str | None = None
    form: FormRef | None = None
    flow_run_id: str | None = None
    actor_name: str | None = None  # the directory's names for actor and on_behalf_of
    on_behalf_of_name: str | None = None

    def named(self, name_of: Callable[[str | None], str | None]) -> Attribution:
        """The same attribution with the people's display names filled in (where known)."""
        return dataclasses.replace(
            self,
            actor_name=name_of(self.actor) if self.actor else None,
            on_behalf_of_name=name_of(self.on_behalf_of) if self.on_behalf_of else None,
        )

    def source_text(self, limit: int = 255) -> str:
        """The one line written to the record, e.g. "Form 'Budget Request' response 123 · flow run 0858"."""
        parts: list[str] = []
        if self.form is not None:
            parts.append(f"Form '{self.form.form_name}' response {self.form.response_id}")
        if self.flow_run_id:
            parts.append(("flow run " if parts else "Flow run ") + self.flow_run_id)
        if not parts:
            who = self.actor_name or self.actor
            parts.append(
                {
                    "Import": f"Import by {who}",
                    "API": f"API user {who}",
                    "UI": f"Edited in the CRM by {who}",
                    "Unknown": "Unknown source",
                }.get(self.channel, self.channel)
            )
        text = " \u00b7 ".join(parts)
        return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def same_user(a: str, b: str) -> bool:
    """User ids equal; Salesforce's 15- and 18-character forms of one id are the same user."""
    if len(a) in (15, 18) and len(b) in (15, 18) and a.isalnum() and b.isalnum():
        return a[:15] == b[:15]
    return a.lower() == b.lower()


def is_one_of(actor: str | None, users: Iterable[str]) -> bool:
    """Whether the actor is one of the users."""
    return actor is not None and any(same_user(actor, u) for u in users)


def classify(
    changed_at: datetime,
    actor: str | None,
    forms: Sequence[Mapping[str, Any]],
    flows: Sequence[Mapping[str, Any]],
    *,
    api_users: Iterable[str] = (),
    import_users: Iterable[str] = (),
    window: timedelta = timedelta(minutes=10),
) -> Attribution:
    """The channel of a change at `changed_at` by `actor`, given the record's recent forms and flows.

    `forms`: {"form_id", "form_name", "response_id", "responder", "at", "flow_run_id"?};
    `flows`: {"flow_run_id", "at", "actor"?}; "at" are timezone-aware datetimes.
    """
    if is_one_of(actor, import_users):
        return Attribution("Import", actor)
    low, high = changed_at - window, changed_at + SKEW
    form = max((f for f in forms if low <= f["at"] <= high), key=lambda f: f["at"], default=None)
    if form is not None:
        ref = FormRef(
            str(form["form_id"]), str(form["form_name"]), str(form["response_id"]), form.get("responder")
        )
        return Attribution("Form", actor, ref.responder, ref, form.get("flow_run_id"))
    flow = max((f for f in flows if low <= f["at"] <= high), key=lambda f: f["at"], default=None)
    if flow is not None:
        return Attribution("Flow", actor, flow.get("actor"), None, str(flow["flow_run_id"]))
    if is_one_of(actor, api_users):
        return Attribution("API", actor)
    if actor:
        return Attribution("UI", actor)
    return Attribution("Unknown", None)
