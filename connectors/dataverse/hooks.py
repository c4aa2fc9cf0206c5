"""POST /hooks/dataverse: Dataverse (Dynamics 365) webhooks, as Dataverse sends them.

A webhook registered in the Plug-in Registration Tool, with a step per table and message, posts
the step's RemoteExecutionContext as JSON (read by `context.read_context`). Each Create or Update
of a governed table becomes one `record.changed` event:

- object = PrimaryEntityName (the table's logical name), record_id = PrimaryEntityId;
- actor = UserId (the user the step runs as: the person who made the change when the step runs
  in the Calling User's context, the default; InitiatingUserId is kept in data);
- occurred_at = OperationCreatedOn;
- data.fields = the Target's attributes with every post image's on top (see `_fields`), with
  data.formatted (labels), data.lookups (the table each lookup column references), and the
  context's message, correlation_id, operation_id, organization_id, stage, depth and the aliases
  of the images used.

Delivery id: OperationId:PrimaryEntityId:MessageName. For an asynchronous step OperationId is the
system job's id (RemoteExecutionContext.OperationId: "the same ID as the AsyncOperationId property
of the related System Job", https://learn.microsoft.com/en-us/dotnet/api/microsoft.xrm.sdk.remoteexecutioncontext.operationid).
Dataverse serializes the context once, into that system job, when the event happens
(https://learn.microsoft.com/en-us/power-apps/developer/data-platform/asynchronous-service), so
the webhook's second attempt after a 502, 503 or 504 (use-webhooks, "Troubleshoot"), and any
other run of that same system job, carry the same id: stored once. A synchronous step has no
system job; the captures show the request's id there, which a retried request does not keep; but
a failed synchronous webhook fails and rolls back the change itself: nothing to store twice.

Acknowledged and ignored (200, counted by reason): messages other than Create and Update
(`unhandled_message`: Delete, Assign, SetState... no rule gives them a meaning yet, as the
Salesforce sources ignore deletions), tables not governed (`not_governed`; governed objects are
matched to logical names case-insensitively), and OnRecord's own changes (`own_change`: UserId or
InitiatingUserId is `dataverse.application_user_id`).

Authentication, as the webhook registration offers it
(https://learn.microsoft.com/en-us/power-apps/developer/data-platform/register-web-hook#authentication-options),
against `dataverse.webhook_key` (several during a rotation): WebhookKey sends `?code=<key>`,
HttpHeader the header named by `dataverse.webhook_param`, HttpQueryString the query parameter of
that name. The sender is "dataverse.webhook_key#<position of the key that matched>".

Refused: 503 `not_configured` with no key (fail closed), 401 without the right key, 400 for a
body that is no RemoteExecutionContext, naming the problem and its JSON path.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qs

from connectors.dataverse.connector import NAME, settings
from connectors.dataverse.context import (
    EMPTY_GUID,
    ContextRefused,
    Entity,
    ExecutionContext,
    read_context,
    to_json,
)
from plugin.config import Config
from plugin.events import Event
from plugin.receive import Incoming, Parsed, Rejected, Source, json_ack, json_refusal

SOURCE = "dataverse.webhook"
SENDER = "dataverse.webhook_key"
HANDLED_MESSAGES = frozenset({"Create", "Update"})
# The query parameter the WebhookKey option always uses.
WEBHOOK_KEY_PARAM = "code"
# Sent "only when the HTTP payload size exceeds the 256KB"; InputParameters and the images are
# then left out of the body (use-webhooks, "Header Data" and "Request Body").
SIZE_EXCEEDED_HEADER = "x-ms-dynamics-msg-size-exceeded"
# The post image Dataverse adds by itself to every asynchronous step: the primary name column
# and the id, whatever images the step registered (it is the only one in Microsoft's sample).
ASYNC_PRIMARY_NAME_IMAGE = "AsynchronousStepPrimaryName"
# An OperationCreatedOn outside these years would break the worker's date arithmetic later.
FIRST_YEAR, LAST_YEAR = 2000, 2200


def authenticate(incoming: Incoming) -> str:
    """The configured webhook key, where the registration's authentication option puts it."""
    cfg = settings(incoming.runtime.config)
    if not cfg.webhook_key:
        raise Rejected(
            503, "not_configured", "no webhook key configured for this source (dataverse.webhook_key)"
        )
    if cfg.webhook_auth == "http_header":
        where = f"header {cfg.webhook_param}"
        presented = incoming.headers.get(cfg.webhook_param, "")
    else:
        name = WEBHOOK_KEY_PARAM if cfg.webhook_auth == "webhook_key" else cfg.webhook_param
        where = f"query parameter {name}"
        values = parse_qs(incoming.environ.get("QUERY_STRING", ""), keep_blank_values=True).get(name, [])
        if len(values) > 1:
            raise Rejected(401, "bad_key", f"the {where} appears more than once")
        presented = values[0] if values else ""
    if not presented:
        raise Rejected(401, "missing_key", f"no webhook key in the {where}")
    # Digests first, so neither the comparison's time nor its length check tells anything about
    # a key; every key is compared, so the time does not tell which one matched either.
    given = hashlib.sha256(presented.encode()).digest()
    matched: int | None = None
    for position, key in enumerate(cfg.webhook_key):
        if hmac.compare_digest(given, hashlib.sha256(key.encode()).digest()) and matched is None:
            matched = position
    if matched is None:
        raise Rejected(401, "bad_key", f"the webhook key in the {where} is not one OnRecord has")
    return f"{SENDER}#{matched}"


def parse(incoming: Incoming, sender: str) -> Parsed:
    """One RemoteExecutionContext: a `record.changed` event, or a reason it is ignored."""
    try:
        ctx = read_context(incoming.body)
    except ContextRefused as exc:
        raise Rejected(400, exc.reason, exc.message) from exc
    if ctx.message_name not in HANDLED_MESSAGES:
        return Parsed(events=[], ignored={"unhandled_message": 1})
    _check_handled(ctx)
    config = incoming.runtime.config_in_force  # what is governed now ([crm_config] included)
    org = settings(config).organization_id
    if org and ctx.organization_id != org:
        # A copy of production (a sandbox) keeps the webhook, its key and the records' ids.
        raise Rejected(403, "wrong_org", "$.OrganizationId is not dataverse.organization_id")
    reason = why_ignored(ctx, config)
    if reason is not None:
        return Parsed(events=[], ignored={reason: 1})
    return Parsed(events=[_event(ctx, sender, incoming, governed_name(ctx, config))])


def governed_name(ctx: ExecutionContext, config: Config) -> str | None:
    """The table as `[[governed]]` spells it (crm = "dataverse"; matched case-insensitively, so
    the rules, which match names exactly, see the configured spelling), or None if not governed."""
    wanted = ctx.primary_entity_name.lower()
    return next((g.object for g in config.governed if g.crm == NAME and g.object.lower() == wanted), None)


def why_ignored(ctx: ExecutionContext, config: Config) -> str | None:
    """The reason a Create or Update is acknowledged and ignored, or None to take it in."""
    if governed_name(ctx, config) is None:
        return "not_governed"
    own_user = settings(config).application_user_id  # lower case: the configuration makes it so
    if own_user and own_user in (ctx.user_id, ctx.initiating_user_id):
        return "own_change"  # OnRecord's own write-back: never loop on it
    return None


def _check_handled(ctx: ExecutionContext) -> None:
    """What a Create or Update must carry beyond what every context does."""
    if ctx.primary_entity_id == EMPTY_GUID:
        raise Rejected(400, "bad_field", f"$.PrimaryEntityId is the empty GUID in a {ctx.message_name}")
    year = ctx.operation_created_on.year
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise Rejected(
            400, "bad_date", f"$.OperationCreatedOn is out of range (years {FIRST_YEAR} to {LAST_YEAR})"
        )
    for where, entity in _entities(ctx):
        if entity.logical_name != ctx.primary_entity_name:
            raise Rejected(
                400, "bad_shape", f"{where} is a row of {entity.logical_name}, not of $.PrimaryEntityName"
            )
        if entity.id not in (EMPTY_GUID, ctx.primary_entity_id):
            raise Rejected(400, "bad_shape", f"{where} is another row than $.PrimaryEntityId")


def _entities(ctx: ExecutionContext) -> list[tuple[str, Entity]]:
    """The Target and the images, with where each is in the body."""
    found: list[tuple[str, Entity]] = []
    if ctx.target is not None:
        found.append(('$.InputParameters["Target"]', ctx.target))
    found += [(f'$.PreEntityImages["{alias}"]', image) for alias, image in ctx.pre_entity_images.items()]
    found += [(f'$.PostEntityImages["{alias}"]', image) for alias, image in ctx.post_entity_images.items()]
    return found


def _fields(ctx: ExecutionContext) -> tuple[dict[str, Any], dict[str, str], dict[str, str], list[str]]:
    """The record's columns after the change: (fields, formatted labels, lookup tables, the post
    images used).

    The Target holds the columns the request set; a post image holds the stored values of the
    columns its step chose, whatever alias it has. Every asynchronous step also gets Dataverse's
    own AsynchronousStepPrimaryName image (primary name and id only), so "a post image is there"
    does not mean "the step registered one": the Target comes first and each post image is laid
    on top (Dataverse's own first, then the registered ones by alias), so a registered image wins
    where it has a column and the Target still gives the columns no image has."""
    layers: list[Entity] = [ctx.target] if ctx.target is not None else []
    aliases = sorted(ctx.post_entity_images, key=lambda alias: (alias != ASYNC_PRIMARY_NAME_IMAGE, alias))
    layers += [ctx.post_entity_images[alias] for alias in aliases]
    fields: dict[str, Any] = {}
    formatted: dict[str, str] = {}
    lookups: dict[str, str] = {}
    for entity in layers:
        for column, value in entity.attributes.items():
            fields[column] = to_json(value)
            # This layer's value replaces the earlier one, and with it what described that one.
            lookups.pop(column, None)
            formatted.pop(column, None)
        lookups.update(entity.lookups)
        formatted.update(entity.formatted)
    return fields, formatted, lookups, aliases


def _event(ctx: ExecutionContext, sender: str, incoming: Incoming, obj: str | None) -> Event:
    fields, formatted, lookups, images = _fields(ctx)
    data: dict[str, Any] = {
        "fields": fields,
        "formatted": formatted,
        "lookups": lookups,
        "message": ctx.message_name,
        "correlation_id": ctx.correlation_id,
        "operation_id": ctx.operation_id,
        "organization_id": ctx.organization_id,
        "initiating_user_id": ctx.initiating_user_id,
        "stage": ctx.stage,
        "depth": ctx.depth,
        "images": images,
    }
    if incoming.headers.get(SIZE_EXCEEDED_HEADER) is not None:
        data["truncated"] = True  # no Target, no images: the change is known, its values are not
    return Event(
        source=SOURCE,
        delivery_id=f"{ctx.operation_id}:{ctx.primary_entity_id}:{ctx.message_name}",
        kind="record.changed",
        occurred_at=ctx.operation_created_on,
        object=obj or ctx.primary_entity_name,
        record_id=ctx.primary_entity_id,
        actor=ctx.user_id,
        data=data,
        sender=sender,
        raw_digest=incoming.digest,
    )


DATAVERSE_WEBHOOK = Source(
    name=SOURCE, authenticate=authenticate, parse=parse, acknowledge=json_ack, refuse=json_refusal
)

HOOKS: dict[str, Source] = {"/hooks/dataverse": DATAVERSE_WEBHOOK}
