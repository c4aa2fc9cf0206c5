"""The webhook trigger of the Power Automate custom connector: subscribe, unsubscribe, deliver.

Power Automate subscribes when a flow with the trigger is saved (``POST /api/subscriptions``
with the flow's callback URL; we answer 201 with ``Location``) and unsubscribes when the trigger
is removed (``DELETE`` on that Location; 204, also when already gone). Rules emit
``Notification(topic, data)``; the dispatcher hands those outbox rows to :class:`CallbackNotifier`,
which POSTs each to every subscriber of its topic through the SSRF guard of
:mod:`connectors.power_automate.callbacks`, and leaves retries to the dispatcher's backoff.

A callback URL carries the flow's signature (``sig=``): it is stored only encrypted (Fernet, key
``api.callback_key``; several keys during rotation, the first encrypts) and never logged.

Power Automate has been seen to send the trigger's DELETE without the connection's API key
(microsoft/PowerPlatformConnectors#3678). So the subscription's handle, the last segment of its
Location and the ``id`` answered, is ``<id>.<secret>``: a random secret of that subscription, kept
only as its sha256. A DELETE of the handle unsubscribes without a token when the secret matches
(compared in constant time); any other DELETE needs a bearer token, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import Blueprint, Response, g, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client import Counter
from sqlalchemy.engine import Engine

from connectors.power_automate.callbacks import (
    CallbackPolicy,
    CallbackRefused,
    CallbackUnreachable,
    Resolver,
    check_url,
    post_json,
    system_resolver,
)
from connectors.power_automate.models import (
    SUBSCRIPTION_REASONS,
    Connection,
    Subscription,
    SubscriptionRequest,
)
from connectors.power_automate.models import TOPICS as TOPICS  # what can be subscribed to, re-exported
from plugin import strict_json
from plugin.api_auth import api_error, require_api_auth
from plugin.api_models import BodyRefused, validate
from plugin.config import Config
from plugin.crm import RecordResult
from plugin.runtime import runtime
from plugin.storage import begin_write, subscription_deliveries, subscriptions

log = logging.getLogger(__name__)

# What a subscriber can be told about (Notification.topic).
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})  # and every 5xx
GONE_STATUSES: Final = frozenset({404, 410})  # the flow or its trigger no longer exists

DELIVERIES = Counter(
    "onrecord_callback_deliveries_total", "Notifications POSTed to subscribers, by outcome", ["outcome"]
)

blueprint = Blueprint("power_automate_subscriptions", __name__)


def secret_hash(secret: str) -> str:
    """How a subscription's secret is stored: its sha256, hex."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def split_handle(handle: str) -> tuple[str, str]:
    """(subscription id, secret) of a Location's last segment; the secret is '' when absent."""
    subscription_id, _, secret = handle.partition(".")
    return subscription_id, secret


def cipher(keys: Sequence[str]) -> MultiFernet:
    """Encrypts with the first key, decrypts with any (key rotation)."""
    return MultiFernet([Fernet(k.encode("ascii")) for k in keys])


@blueprint.post("/api/subscriptions")
@require_api_auth
def subscribe() -> Response:
    """Register a callback for some topics; 201 with the Location to DELETE to unsubscribe."""
    config = runtime().config
    if not config.api.callback_key:
        return api_error(503, "not_configured", "no api.callback_key is configured to protect callback URLs")
    try:
        body = strict_json.loads(request.get_data(cache=False))
    except strict_json.JsonRefused as exc:
        return api_error(400, exc.reason, exc.message)
    if not isinstance(body, dict):
        return api_error(400, "not_json", "body must be a JSON object {callback_url, events}")
    try:  # the model the OpenAPI documents describe, so the check and the contract are one
        wanted = validate(SubscriptionRequest, body, reasons=SUBSCRIPTION_REASONS)
    except BodyRefused as exc:
        return api_error(400, exc.reason, exc.message)
    url, events = wanted.callback_url, wanted.events
    try:
        check_url(url, CallbackPolicy.from_config(config))
    except CallbackRefused as exc:
        return api_error(400, exc.reason, exc.message)
    subscription_id = uuid.uuid4().hex
    secret = secrets.token_urlsafe(32)  # no "." in it: the handle splits at the first one
    handle = f"{subscription_id}.{secret}"
    topics = list(dict.fromkeys(events))
    now = datetime.now(UTC)
    with begin_write(runtime().engine) as conn:
        conn.execute(
            subscriptions.insert().values(
                id=subscription_id,
                callback=cipher(config.api.callback_key).encrypt(url.strip().encode()).decode("ascii"),
                events=topics,
                created_by=str(g.api_caller)[:255],
                created_at=now,
                secret_hash=secret_hash(secret),
            )
        )
    log.info("subscription created", extra={"subscription": subscription_id, "topics": topics})
    created = now.isoformat().replace("+00:00", "Z")
    resp = jsonify(Subscription(id=handle, events=topics, created_at=created).model_dump(mode="json"))
    resp.status_code = 201
    base = config.api.public_url or request.root_url.rstrip("/")  # root_url: with a proxy's prefix
    resp.headers["Location"] = f"{base}/api/subscriptions/{handle}"
    return resp


@blueprint.get("/api/connection")
@require_api_auth
def connection() -> Response:
    """Does nothing but authenticate: the connector's testConnection, so a bad token shows at once."""
    return jsonify(Connection(ok=True, caller=str(g.api_caller)).model_dump(mode="json"))


@blueprint.delete("/api/subscriptions/<handle>")
def unsubscribe(handle: str) -> ResponseReturnValue:
    """Remove a subscription; 204 whether or not it still existed (Power Automate may repeat it).

    Without a bearer token only the handle's secret can authorize it (a subscription that is gone
    has no secret left to match: such a repeat answers 401 unless it carries a token).
    """
    subscription_id, secret = split_handle(handle)
    if secret and _secret_matches(subscription_id, secret):
        g.api_caller = "subscription_secret"
        return _remove_subscription(subscription_id)
    return _unsubscribe_with_token(subscription_id)


_NO_HASH: Final = "0" * 64  # compared against when there is no stored hash, to take the same time


def _secret_matches(subscription_id: str, secret: str) -> bool:
    with runtime().engine.connect() as conn:
        stored = conn.execute(
            sa.select(subscriptions.c.secret_hash).where(subscriptions.c.id == subscription_id)
        ).scalar()
    expected = stored if isinstance(stored, str) and stored else _NO_HASH
    return hmac.compare_digest(secret_hash(secret), expected) and expected != _NO_HASH


@require_api_auth
def _unsubscribe_with_token(subscription_id: str) -> ResponseReturnValue:
    return _remove_subscription(subscription_id)


def _remove_subscription(subscription_id: str) -> Response:
    with begin_write(runtime().engine) as conn:
        conn.execute(
            subscription_deliveries.delete().where(
                subscription_deliveries.c.subscription_id == subscription_id
            )
        )
        gone = conn.execute(subscriptions.delete().where(subscriptions.c.id == subscription_id)).rowcount
    if gone:
        log.info("subscription removed", extra={"subscription": subscription_id, "by": str(g.api_caller)})
    return Response(status=204)


def notification_body(row: Any) -> dict[str, Any]:
    """What a subscriber receives for one notification outbox row (x-ms-notification-content)."""
    return {
        "id": str(row.id),
        "topic": row.object,
        "occurred_at": row.occurred_at.isoformat().replace("+00:00", "Z"),
        "key": row.record_key,
        "data": row.payload,
    }


class CallbackNotifier:
    """The dispatcher's Notifier: one RecordResult per notification row, after trying every subscriber.

    A subscriber that got a notification (or refused it for good) is recorded, so a retry caused by
    another subscriber does not reach it twice. A row is retried while any subscriber failed in a
    way that may pass (408, 429, 5xx, network); dead-lettered when a subscriber refused it for good
    (other 4xx, a redirect, the SSRF guard); done otherwise. A 404 or 410 from a callback means the
    flow or its trigger is gone: that subscription is removed. A subscriber that failed in a way
    that may pass is not called again in the same pass (one timeout per pass, not one per row).
    """

    def __init__(self, engine: Engine, config: Config, *, resolver: Resolver = system_resolver) -> None:
        self.engine = engine
        self.keys = list(config.api.callback_key)
        self.policy = CallbackPolicy.from_config(config)
        self.resolver = resolver

    def __call__(self, rows: Sequence[Any]) -> list[RecordResult]:
        """Deliver each notification row to its topic's subscribers."""
        with self.engine.connect() as conn:
            subs = conn.execute(sa.select(subscriptions)).all()
        unreachable: dict[str, str] = {}  # subscription -> why: not tried again in this pass
        return [self._deliver_row(row, subs, unreachable) for row in rows]

    def _deliver_row(self, row: Any, subs: Sequence[Any], unreachable: dict[str, str]) -> RecordResult:
        targets = [s for s in subs if row.object in s.events and s.created_at <= row.created_at]
        if not targets:
            return RecordResult(ok=True)
        with self.engine.connect() as conn:
            done = set(
                conn.execute(
                    sa.select(subscription_deliveries.c.subscription_id).where(
                        subscription_deliveries.c.outbox_id == row.id
                    )
                ).scalars()
            )
        body = json.dumps(notification_body(row), separators=(",", ":")).encode()
        retry: list[str] = []
        failed: list[str] = []
        for sub in targets:
            if sub.id in done:
                continue
            if sub.id in unreachable:  # one timeout per dead callback per pass, not one per row
                retry.append(f"subscription {sub.id}: {unreachable[sub.id]}")
                continue
            outcome, error = self._deliver_one(sub, row, body)
            DELIVERIES.labels(outcome).inc()
            if outcome == "retry":
                unreachable[sub.id] = error
                retry.append(f"subscription {sub.id}: {error}")
            elif outcome == "gone":
                self._remove(sub.id)
            else:
                if outcome == "failed":
                    failed.append(f"subscription {sub.id}: {error}")
                self._record(row.id, sub.id, outcome)
        if retry:
            return RecordResult(ok=False, retryable=True, error="; ".join(retry + failed))
        self._forget(row.id)
        if failed:
            return RecordResult(ok=False, retryable=False, error="; ".join(failed))
        return RecordResult(ok=True)

    def _deliver_one(self, sub: Any, row: Any, body: bytes) -> tuple[str, str]:
        """("delivered" | "gone" | "retry" | "failed", why)."""
        extra = {"subscription": sub.id, "topic": row.object, "notification": row.id}
        if not self.keys:
            return "retry", "no api.callback_key configured"
        try:
            url = cipher(self.keys).decrypt(sub.callback.encode("ascii")).decode()
        except InvalidToken:
            log.error("callback URL cannot be decrypted", extra={**extra, "reason": "bad_callback_key"})
            return "failed", "callback URL cannot be decrypted with api.callback_key"
        headers = {"X-OnRecord-Topic": row.object, "X-OnRecord-Notification": str(row.id)}
        try:
            status = post_json(url, body, self.policy, headers=headers, resolver=self.resolver)
        except CallbackRefused as exc:
            log.warning("callback refused", extra={**extra, "reason": exc.reason})
            return "failed", f"refused ({exc.reason}): {exc.message}"
        except CallbackUnreachable as exc:
            log.warning("callback unreachable", extra={**extra, "reason": exc.reason})
            return "retry", exc.message
        if 200 <= status < 300:
            log.info("notification delivered", extra={**extra, "status": status})
            return "delivered", ""
        log.warning("callback answered an error", extra={**extra, "status": status})
        if status in GONE_STATUSES:
            return "gone", f"callback answered {status}"
        if status in RETRYABLE_STATUSES or status >= 500:
            return "retry", f"callback answered {status}"
        if 300 <= status < 400:
            return "failed", f"callback answered {status} (redirects are not followed)"
        return "failed", f"callback answered {status}"

    def _record(self, outbox_id: int, subscription_id: str, status: str) -> None:
        with begin_write(self.engine) as conn:
            already = conn.execute(
                sa.select(subscription_deliveries.c.status).where(
                    subscription_deliveries.c.outbox_id == outbox_id,
                    subscription_deliveries.c.subscription_id == subscription_id,
                )
            ).first()
            if already is None:
                conn.execute(
                    subscription_deliveries.insert().values(
                        outbox_id=outbox_id,
                        subscription_id=subscription_id,
                        status=status,
                        at=datetime.now(UTC),
                    )
                )

    def _remove(self, subscription_id: str) -> None:
        with begin_write(self.engine) as conn:
            conn.execute(
                subscription_deliveries.delete().where(
                    subscription_deliveries.c.subscription_id == subscription_id
                )
            )
            conn.execute(subscriptions.delete().where(subscriptions.c.id == subscription_id))
        log.info("subscription removed: its callback is gone", extra={"subscription": subscription_id})

    def _forget(self, outbox_id: int) -> None:
        with begin_write(self.engine) as conn:
            conn.execute(
                subscription_deliveries.delete().where(subscription_deliveries.c.outbox_id == outbox_id)
            )


def build_notifier(config: Config, engine: Engine) -> CallbackNotifier:
    """The dispatcher's notifier for this configuration."""
    return CallbackNotifier(engine, config)
