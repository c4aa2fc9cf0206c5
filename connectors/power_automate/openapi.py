"""What the Power Automate connector adds to both OpenAPI documents (plugin/openapi.py renders
them): the flows' hook actions, the webhook trigger (subscribe / unsubscribe) and the
connector's testConnection. The bodies come from connectors/power_automate/models.py."""

from __future__ import annotations

from typing import Any, Final

from plugin.openapi import API_ERRORS, Operation, Param, Reply, ref

_HOOK_DESCRIPTION = (
    " Called by the flow's HTTP action with an Entra ID app-only token ('Active Directory OAuth') "
    "or the shared key in X-OnRecord-Key; a retried delivery is stored once."
)
_KEY_PARAM = Param(
    "X-OnRecord-Key",
    "header",
    "The shared key (ONRECORD_POWER_AUTOMATE__API_KEY), when not using an Entra ID token.",
    required=False,
    extensions={"x-ms-visibility": "advanced"},
    summary="Shared Key",
)


def _hook_replies() -> tuple[Reply, ...]:
    return (
        Reply("200", "Stored (or a known event OnRecord ignores).", "ReceiveResult"),
        Reply("400", "Not what Power Automate sends.", "Error"),
        Reply("401", "Authentication failed; nothing stored.", "Error"),
        Reply("413", "Body too large.", "Error"),
        Reply("503", "Cannot store now, or authentication is not configured; retry.", "Error"),
    )


OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "post",
        "/hooks/power-automate/forms",
        "SubmitForm",
        "Record a form submission",
        "A Microsoft Forms response and the CRM record the flow wrote from it." + _HOOK_DESCRIPTION,
        "hook",
        _hook_replies(),
        body="FormSubmission",
        params=(_KEY_PARAM,),
        extensions={"x-ms-visibility": "internal"},
    ),
    Operation(
        "post",
        "/hooks/power-automate/approvals",
        "RecordApprovalDecision",
        "Record an approval stage's decision",
        "One stage of the two-stage approval: the output of 'Start and wait for an approval'."
        + _HOOK_DESCRIPTION,
        "hook",
        _hook_replies(),
        body="ApprovalDecision",
        params=(_KEY_PARAM,),
        extensions={"x-ms-visibility": "internal"},
    ),
    Operation(
        "post",
        "/hooks/power-automate/signals",
        "RecordSignal",
        "Record a leader signal",
        "Training attendance and other leader signals born outside the CRM." + _HOOK_DESCRIPTION,
        "hook",
        _hook_replies(),
        body="Signal",
        params=(_KEY_PARAM,),
        extensions={"x-ms-visibility": "internal"},
    ),
    Operation(
        "post",
        "/api/subscriptions",
        "CreateSubscription",
        "When OnRecord blocks or verifies an approval, or names a champion",
        "Subscribes the flow to OnRecord's notifications; Power Automate calls this when the flow is "
        "saved and DELETEs the returned Location when the trigger is removed.",
        "api",
        (
            Reply(
                "201",
                "Subscribed.",
                "Subscription",
                {"Location": "The subscription; DELETE it to unsubscribe."},
            ),
            Reply("400", "Bad callback URL (not https, host not allowed, not public) or events.", "Error"),
            *API_ERRORS,
        ),
        body="SubscriptionRequest",
        extensions={
            "x-ms-trigger": "single",
            "x-ms-trigger-hint": (
                "To see it work, complete an approval, or change an approval status in the CRM."
            ),
            "x-ms-visibility": "important",
        },
    ),
    Operation(
        "delete",
        "/api/subscriptions/{id}",
        "DeleteSubscription",
        "Delete a subscription",
        "Unsubscribes; answers 204 also when the subscription is already gone. Authorized by a "
        "bearer token, or without one by the secret in the subscription's handle.",
        "api",
        (Reply("204", "Unsubscribed (or already gone)."), *API_ERRORS),
        params=(
            Param(
                "id",
                "path",
                "The subscription's handle, the last segment of its Location: <id>.<secret>, or the "
                "bare id (then only with a bearer token).",
                summary="Subscription ID",
            ),
        ),
        extensions={"x-ms-visibility": "internal"},
    ),
    Operation(
        "get",
        "/api/connection",
        "TestConnection",
        "Test the connection",
        "Answers 200 when the token is accepted and does nothing else: the connector's "
        "testConnection, so a wrong token shows when the connection is made.",
        "api",
        (Reply("200", "The token was accepted.", "Connection"), *API_ERRORS),
        extensions={"x-ms-visibility": "internal"},
    ),
)

# Path-level extensions (Swagger 2.0 only).
PATH_EXTENSIONS: Final[dict[str, dict[str, Any]]] = {
    "/api/subscriptions": {
        "x-ms-notification-content": {"description": "What OnRecord posts", "schema": ref("Notification")}
    }
}
