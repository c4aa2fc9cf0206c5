"""An organisation with form-only approvals, for end-to-end tests and the benchmark: its people,
its policies, and the three senders — Microsoft Forms (through the flow), the Approvals
connector's outputs (through the flow), and Salesforce outbound messages — in their exact shapes.
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from tests.connectors.power_automate.support import API_KEY
from tests.connectors.salesforce.outbound_messages import envelope, notification

TENANT = "4f8d2c1a-6b3e-4a5d-9c7f-0e1d2c3b4a59"
OUTBOUND_TOKEN = "e2e-approvals-outbound-token-0123456789"
API_TOKEN = "e2e-approvals-api-token-0123456789abcdef"
FORM_ID = "budget-request"
_counter = itertools.count(1)
_lock = threading.Lock()


def next_number() -> int:
    with _lock:
        return next(_counter)


@dataclass(frozen=True)
class Person:
    name: str
    email: str
    aad_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    salesforce_id: str = ""
    groups: tuple[str, ...] = ()

    def directory_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "emails": [self.email], "groups": list(self.groups)}
        if self.salesforce_id:
            entry["salesforce_id"] = self.salesforce_id
        return entry


def policies(flow_user: str) -> list[dict[str, Any]]:
    """Three approval-governed objects: OnRecord sets the status; the flow sets it (with an
    'Everyone must approve' stage and a custom-response stage); and a long grace window."""
    two_stages = [
        {"name": "business strategy", "approvers": ["Strategy Board"]},
        {"name": "finance", "approvers": ["Finance Approvers"]},
    ]
    common = {
        "fields": ["Amount__c", "Status__c"],
        "approval_field": "Status__c",
        "approved_values": ["Approved"],
        "form_id": FORM_ID,
        "revert_to": "Submitted",
        "status_writers": [flow_user],
    }
    return [
        {"object": "Budget_Request__c", **common, "stages": two_stages, "grace_seconds": 4},
        {
            "object": "Purchase_Request__c",
            **common,
            "set_status": False,
            "grace_seconds": 4,
            "stages": [
                {"name": "business strategy", "approvers": ["Strategy Board"], "require": "everyone"},
                {
                    "name": "finance",
                    "approvers": ["Finance Approvers"],
                    "approve_responses": ["Approve", "Approve with conditions"],
                },
            ],
        },
        {"object": "Travel_Request__c", **common, "stages": two_stages, "grace_seconds": 300},
    ]


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def forms_date(value: datetime) -> str:
    """The Microsoft Forms connector's submitDate: '8/27/2024 12:34:21 PM' (UTC)."""
    v = value.astimezone(UTC)
    hour = v.hour % 12 or 12
    return f"{v.month}/{v.day}/{v.year} {hour}:{v:%M:%S} {'AM' if v.hour < 12 else 'PM'}"


class Senders:
    """Posts to a running OnRecord as the flows and Salesforce do."""

    def __init__(self, url: str, session: requests.Session | None = None) -> None:
        self.url = url
        self.http = session or requests.Session()

    def form(
        self,
        obj: str,
        record_id: str,
        requester: Person,
        at: datetime,
        *,
        response_id: int | None = None,
        connector_date: bool = False,
    ) -> requests.Response:
        body: dict[str, Any] = {
            "form_id": FORM_ID,
            "form_name": "Budget Request",
            "response_id": response_id or next_number(),
            "responder": requester.email,
            "record": {"object": obj, "id": record_id},
            "answers": {"Amount (EUR)": "125000", "Justification": "Renewal"},
            "flow_run_id": f"0858473289472612948{next_number():04d}CU31",
        }
        if connector_date:
            body["submitDate"] = forms_date(at)
        else:
            body["submitted_at"] = iso(at)
        return self._post("/hooks/power-automate/forms", body)

    def decision(
        self,
        obj: str,
        record_id: str,
        stage: str,
        responses: list[tuple[Person, str, datetime]],
        *,
        outcome: str | None = None,
        approval: str | None = None,
    ) -> requests.Response:
        """One stage's 'Start and wait for an approval' output, passed straight through."""
        requested = min(at for _, _, at in responses) - timedelta(minutes=1)
        body = {
            "stage": stage,
            "record": {"object": obj, "id": record_id},
            "flow_run_id": f"0858473289472612948{next_number():04d}CU31",
            "approval": {
                "name": approval or str(uuid.uuid4()),
                "title": f"{obj} {record_id} - {stage}",
                "outcome": outcome or ", ".join(r for _, r, _ in responses),
                "requestDate": iso(requested),
                "completionDate": iso(max(at for _, _, at in responses)),
                "responses": [
                    {
                        "responder": {
                            "id": who.aad_id,
                            "displayName": who.name,
                            "email": who.email,
                            "tenantId": TENANT,
                            "userPrincipalName": who.email,
                        },
                        "requestDate": iso(requested),
                        "responseDate": iso(at),
                        "approverResponse": response,
                        "comments": None,
                    }
                    for who, response, at in responses
                ],
            },
        }
        return self._post("/hooks/power-automate/approvals", body)

    def change(
        self, obj: str, record_id: str, fields: Mapping[str, str], actor: str, at: datetime
    ) -> requests.Response:
        """A Salesforce outbound message: the record's selected fields as of the change."""
        values = {
            **fields,
            "LastModifiedById": actor,
            "LastModifiedDate": iso(at),
            "SystemModstamp": iso(at),
        }
        message = envelope([notification(next_number(), values, object_type=obj, record_id=record_id)])
        return self.http.post(
            f"{self.url}/hooks/salesforce/outbound?token={OUTBOUND_TOKEN}",
            data=message,
            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
            timeout=30,
        )

    def approval_status(self, obj: str, record_id: str) -> dict[str, Any] | None:
        resp = self.http.get(
            f"{self.url}/api/approvals/{obj}/{record_id}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=30,
        )
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def _post(self, path: str, body: Mapping[str, Any]) -> requests.Response:
        return self.http.post(
            self.url + path,
            data=json.dumps(body),
            headers={"X-OnRecord-Key": API_KEY, "Content-Type": "application/json"},
            timeout=30,
        )
