"""OnRecord's HTTP API, rendered as OpenAPI 3.0 and as Swagger 2.0.

GET /openapi.json is OpenAPI 3.0, for Salesforce External Services (Flow actions).
GET /openapi-v2.json is Swagger 2.0, imported as a Power Automate custom connector: no oneOf or
anyOf, the subscription operation marked ``x-ms-trigger`` with ``x-ms-notification-url`` on its
callback and ``x-ms-notification-content`` describing what OnRecord posts, its DELETE internal.

No payload is described here. Each request body is a pydantic model that also validates it (the
core's in plugin/api_models.py), and each response body a pydantic model the tests hold the real
answers to (the core's in plugin/api_responses.py); a connector's, of either kind, are in the
``OPENAPI_MODELS`` of its ``models`` module. :func:`model_schemas` turns their JSON Schema
(``model_json_schema``) into a definition per model, in the dialect both documents share: ``$defs``
become the documents' definitions / components, except the parts marked to be described inline
where they are used (plugin.api_responses.InlinePart); ``anyOf [X, null]`` becomes X
(``x-nullable`` in 2.0, ``nullable`` in 3.0); a model's docstring is its description,
``Field(title=...)`` a property's ``x-ms-summary``, ``Field(json_schema_extra=...)`` its ``x-ms-*``;
every schema has a ``type``. The operations are the tables below. ``x-ms-*`` extensions only make
sense to Power Automate, so the 3.0 rendering drops them.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import CoreSchema

from plugin import registry
from plugin.api_models import CitationRequest, VerifyRequest
from plugin.api_responses import INLINE, RESPONSE_MODELS
from plugin.runtime import runtime

TITLE: Final = "OnRecord"
VERSION: Final = "1.0.0"
DESCRIPTION: Final = (
    "If it is not on record, it does not exist: OnRecord receives flow and CRM events, verifies "
    "form-only approvals and leader buy-in, and writes provenance into the CRM."
)
# The connector's publisher details (Swagger 2.0 only): info.contact and x-ms-connector-metadata,
# whose Website is the deployment's own URL; its e-mail and privacy policy are the deployment
# owner's (api.contact_email, api.privacy_url), present only when configured. Categories are from
# Microsoft's list, ';'-separated.
CONTACT_NAME: Final = "OnRecord"
CONNECTOR_CATEGORIES: Final = "Sales and CRM;Business Management"

Auth = Literal["api", "hook"]

# -- schemas ------------------------------------------------------------------------------------


def ref(name: str) -> dict[str, Any]:
    """A reference to another schema of :func:`schemas` (resolved per rendering)."""
    return {"$ref": name}


# -- request and response bodies, from their models ---------------------------------------------

# The core's request bodies (its answers are plugin/api_responses.py's RESPONSE_MODELS).
CORE_MODELS: Final[tuple[type[BaseModel], ...]] = (VerifyRequest, CitationRequest)


class _Generator(GenerateJsonSchema):
    """pydantic's JSON Schema without the titles it makes up from names (x-ms-summary does that)."""

    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


def connector_models() -> tuple[type[BaseModel], ...]:
    """The models the connectors document, request bodies and answers (each connector's
    `openapi_models`, plugin/registry.py), in the registry's order."""
    return tuple(model for connector in registry.connectors() for model in connector.openapi_models())


_SUBSCHEMA: Final = frozenset({"items", "additionalProperties"})  # keys whose value is one schema
_SUBSCHEMAS: Final = frozenset({"properties", "$defs"})  # keys whose value maps names to schemas


def _neutral(schema: dict[str, Any], *, nullable: bool = False) -> dict[str, Any]:
    """pydantic's JSON Schema in the dialect both documents share (see the module docstring)."""
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"a schema Swagger 2.0 cannot say: {schema}")
        if "$ref" in options[0]:
            return dict(options[0])  # a $ref takes no siblings
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return _neutral({**rest, **options[0]}, nullable=len(options) < len(schema["anyOf"]))
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "default" and value is None:
            continue
        if key in _SUBSCHEMAS:
            out[key] = {name: _neutral(item) for name, item in value.items()}
        elif key in _SUBSCHEMA and isinstance(value, dict):
            out[key] = _neutral(value)
        else:
            out[key] = copy.deepcopy(value)
    if nullable:
        out["x-nullable"] = True
    if "$ref" not in out and "type" not in out and out != {}:
        raise ValueError(f"a schema without a type: {schema}")
    return out


@functools.cache
def model_schemas(models: tuple[type[BaseModel], ...]) -> dict[str, dict[str, Any]]:
    """One definition per model and per model they use, named by class, with bare-name ``$ref``s;
    a model whose schema is marked ``INLINE`` (plugin.api_responses.InlinePart) is no definition but
    written out where it is used."""
    _, top = models_json_schema(
        [(model, "validation") for model in models], ref_template="{model}", schema_generator=_Generator
    )
    definitions: dict[str, dict[str, Any]] = {}
    parts: dict[str, dict[str, Any]] = {}  # described inline where used (plugin.api_responses.INLINE)
    for name, schema in top.get("$defs", {}).items():
        definition = _neutral(schema)
        if definition.get("title") == name:
            del definition["title"]
        if definition.pop(INLINE, False):
            parts[name] = definition
        else:
            definitions[name] = definition
    return {name: _inlined(definition, parts) for name, definition in definitions.items()}


def _inlined(value: Any, parts: Mapping[str, dict[str, Any]]) -> Any:
    """A copy with each ``$ref`` to one of ``parts`` replaced by that part (its siblings kept)."""
    if isinstance(value, dict):
        target = value.get("$ref")
        if isinstance(target, str) and target in parts:
            siblings = {k: v for k, v in value.items() if k != "$ref"}
            return {**_inlined(parts[target], parts), **_inlined(siblings, parts)}
        return {key: _inlined(item, parts) for key, item in value.items()}
    if isinstance(value, list):
        return [_inlined(item, parts) for item in value]
    return value


def schemas() -> dict[str, dict[str, Any]]:
    """Every schema the documents define, from the models: the core's request bodies and answers,
    then each connector's."""
    found = model_schemas((*CORE_MODELS, *RESPONSE_MODELS, *connector_models()))
    # Two models of one class name (a connector's Error beside the core's, say) are not an error to
    # pydantic: it names both after their modules (plugin__api_responses__Error). A document names
    # each schema once, and flows know them by their names, so that is refused here.
    clash = [name for name in found if "__" in name]
    if clash:
        raise ValueError(f"schemas defined twice: {sorted(clash)}")
    return copy.deepcopy(found)


def _missing_refs(value: Any, names: Iterable[str]) -> set[str]:
    known, missing = set(names), set()

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            target = item.get("$ref")
            if isinstance(target, str) and target not in known:
                missing.add(target)
            for sub in item.values():
                walk(sub)
        elif isinstance(item, list | tuple):
            for sub in item:
                walk(sub)

    walk(value)
    return missing


# -- operations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter (always a string)."""

    name: str
    location: Literal["path", "query", "header"]
    description: str
    required: bool = True
    extensions: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""  # x-ms-summary, the label a flow author sees (default: from the name)


@dataclass(frozen=True)
class Reply:
    """One response: status, description, body schema (a schemas() name) and headers."""

    status: str
    description: str
    schema: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> description


@dataclass(frozen=True)
class Operation:
    """One operation of the API."""

    method: Literal["get", "post", "delete"]
    path: str
    operation_id: str
    summary: str
    description: str
    auth: Auth
    replies: tuple[Reply, ...]
    body: str | None = None  # a schemas() name: a request-body model's class name
    params: tuple[Param, ...] = ()
    extensions: Mapping[str, Any] = field(default_factory=dict)  # x-ms-*, Swagger 2.0 only


API_ERRORS: Final = (
    Reply("401", "Missing or invalid bearer token.", "Error"),
    Reply("503", "Not configured, or cannot answer now; retry.", "Error"),
)

OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "get",
        "/api/provenance/{object}/{record_id}",
        "GetProvenance",
        "Get a record's provenance",
        "The record's chain of signed statements, newest first, each verified, with its inclusion proof.",
        "api",
        (
            Reply("200", "The chain.", "Provenance"),
            Reply("404", "No statement for this record.", "Error"),
            *API_ERRORS,
        ),
        params=(
            Param("object", "path", "CRM object, e.g. Opportunity."),
            Param("record_id", "path", "Record id."),
        ),
    ),
    Operation(
        "get",
        "/api/provenance/checkpoint",
        "GetLogCheckpoint",
        "Get the log's checkpoint",
        "The provenance log's newest signed checkpoint, as text/plain (a C2SP signed note); with "
        "'from', JSON with the consistency proof from that older tree size, for auditors who kept "
        "an earlier checkpoint.",
        "api",
        (
            Reply("200", "The checkpoint (text/plain), or with 'from' the proof (JSON).", "LogCheckpoint"),
            Reply("400", "'from' or 'to' is not a tree size of this log.", "Error"),
            Reply("404", "The log signed no checkpoint of size 'to'.", "Error"),
            *API_ERRORS,
        ),
        params=(
            Param("from", "query", "An older checkpoint's tree size: prove consistency from it.", False),
            Param("to", "query", "An earlier checkpoint's size to answer with (default: the newest).", False),
        ),
        extensions={"x-ms-visibility": "internal"},
    ),
    Operation(
        "get",
        "/api/approvals/{object}/{record_id}",
        "GetApproval",
        "Get a record's approval",
        "Whether the record's approval came through the official form and its stages: the verdict "
        "(Verified, Pending, Blocked), the reason in words, the chain and the status changes judged.",
        "api",
        (
            Reply("200", "The approval.", "Approval"),
            Reply("404", "Not approval-governed, or nothing seen of this record yet.", "Error"),
            *API_ERRORS,
        ),
        params=(
            Param("object", "path", "CRM object, e.g. Budget_Request__c."),
            Param("record_id", "path", "Record id (15 or 18 characters)."),
        ),
    ),
    Operation(
        "post",
        "/api/verify",
        "VerifyFigure",
        "Verify a figure",
        "Is this figure from the system? The verdict, with the sentence to say in the meeting.",
        "api",
        (Reply("200", "The verdict.", "VerifyResult"), Reply("400", "Bad request.", "Error"), *API_ERRORS),
        body="VerifyRequest",
    ),
    Operation(
        "post",
        "/api/citations",
        "CiteFigure",
        "Cite a CRM figure",
        "A leader cites CRM data: OnRecord signs the citation and counts it as a leader signal.",
        "api",
        (
            Reply("201", "The signed citation.", "Citation"),
            Reply("400", "Bad request.", "Error"),
            *API_ERRORS,
        ),
        body="CitationRequest",
    ),
    Operation(
        "get",
        "/api/leaders",
        "ListLeaders",
        "List leaders' signals",
        "Leaders' signals per kind, scores, trends and 'system champion' candidates for a period, "
        "recomputed from what OnRecord recorded.",
        "api",
        (
            Reply("200", "The leaders.", "Leaders"),
            Reply("400", "A malformed period (reason bad_period; the error says why).", "Error"),
            *API_ERRORS,
        ),
        params=(
            Param(
                "period",
                "query",
                "The period: an ISO week like 2026-W48, or a day like 2026-11-26 where periods are days "
                "(default: the current one).",
                required=False,
            ),
        ),
    ),
)


def operations() -> tuple[Operation, ...]:
    """Every operation: each connector's (plugin/registry.py, `openapi_operations`), then the core's."""
    found = [op for connector in registry.connectors() for op in connector.openapi_operations()]
    return (*found, *OPERATIONS)


def path_extensions() -> dict[str, dict[str, Any]]:
    """Path-level extensions (Swagger 2.0 only), from the connectors whose paths they are."""
    found: dict[str, dict[str, Any]] = {}
    for connector in registry.connectors():
        found.update({path: dict(ext) for path, ext in connector.openapi_path_extensions().items()})
    return found


# -- rendering ----------------------------------------------------------------------------------

_WORDS: Final = {"id": "ID", "url": "URL", "upn": "UPN", "crm": "CRM"}
# x-ms-summary of a definition: what a property referring to it is labelled (default: from the name).
SCHEMA_SUMMARIES: Final = {"RecordRef": "Record", "ApprovalOutput": "Approval", "NotificationData": "Data"}


def label(name: str) -> str:
    """A Title Case label from a field name: record_id -> Record ID, approverResponse -> Approver Response."""
    spaced = "".join(f" {c}" if c.isupper() else c for c in name).replace("_", " ").replace("-", " ")
    return " ".join(_WORDS.get(w.lower(), w[:1].upper() + w[1:]) for w in spaced.split())


def _summarized(schema: dict[str, Any], summary: str | None) -> dict[str, Any]:
    """A copy with x-ms-summary on it (unless a $ref) and on every property and item below it."""
    if "$ref" in schema:
        return schema
    out = dict(schema)
    if summary is not None:
        out.setdefault("x-ms-summary", schema.get("title") or summary)
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {n: _summarized(p, label(n)) for n, p in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        out["items"] = _summarized(schema["items"], None)
    return out


def _v2_param(p: Param) -> dict[str, Any]:
    param: dict[str, Any] = {
        "name": p.name,
        "in": p.location,
        "description": p.description,
        "required": p.required,
        "type": "string",
        "x-ms-summary": p.summary or label(p.name),
    }
    if p.location == "path":
        param["x-ms-url-encoding"] = "single"
    return param | dict(p.extensions)


def _connector_extensions(
    document: dict[str, Any], base_url: str, contact_email: str, privacy_url: str
) -> None:
    """What Power Automate's validator and designer want beyond Swagger 2.0 (x-ms-*, contact)."""
    contact = {"name": CONTACT_NAME, "url": base_url}
    metadata = [{"propertyName": "Website", "propertyValue": base_url}]
    # Left out rather than made up when unset: an empty string is no e-mail to the schema's
    # "format": "email", and a made-up policy page would be a promise nobody made.
    if contact_email:
        contact["email"] = contact_email
    if privacy_url:
        metadata.append({"propertyName": "Privacy policy", "propertyValue": privacy_url})
    metadata.append({"propertyName": "Categories", "propertyValue": CONNECTOR_CATEGORIES})
    document["info"]["contact"] = contact
    document["x-ms-connector-metadata"] = metadata
    document["x-ms-capabilities"] = {"testConnection": {"operationId": "TestConnection", "parameters": {}}}
    document["definitions"] = {
        name: _summarized(schema, SCHEMA_SUMMARIES.get(name, label(name)))
        for name, schema in document["definitions"].items()
    }


def _resolve(value: Any, prefix: str, *, keep_ms: bool) -> Any:
    """Copy, with `$ref` names made JSON pointers and (unless keep_ms) x-ms-* keys dropped."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key.startswith("x-ms-") and not keep_ms:
                continue
            if key == "$ref" and isinstance(item, str) and not item.startswith("#"):
                out[key] = prefix + item
            else:
                out[key] = _resolve(item, prefix, keep_ms=keep_ms)
        return out
    if isinstance(value, list | tuple):
        return [_resolve(item, prefix, keep_ms=keep_ms) for item in value]
    return value


def _checked_schemas() -> dict[str, dict[str, Any]]:
    """:func:`schemas`, once every name an operation or schema refers to is known."""
    found = schemas()
    missing = _missing_refs([found, _operation_refs(), path_extensions()], found)
    if missing:
        raise ValueError(f"schemas referred to but not defined: {sorted(missing)}")
    return found


def _operation_refs() -> list[dict[str, str]]:
    return [ref(name) for op in operations() for name in (op.body, *(r.schema for r in op.replies)) if name]


def _v3_nullable(value: Any) -> Any:
    """Swagger 2.0's ``x-nullable`` as OpenAPI 3.0's ``nullable``."""
    if isinstance(value, dict):
        return {("nullable" if k == "x-nullable" else k): _v3_nullable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_v3_nullable(v) for v in value]
    return value


def swagger2(base_url: str, *, contact_email: str = "", privacy_url: str = "") -> dict[str, Any]:
    """The Swagger 2.0 document for a Power Automate custom connector; the publisher's e-mail and
    privacy policy page (api.contact_email, api.privacy_url) where the deployment configured them."""
    parts = urlsplit(base_url)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations():
        params: list[dict[str, Any]] = [_v2_param(p) for p in op.params]
        if op.body:
            params.append(
                {
                    "name": "body",
                    "in": "body",
                    "required": True,
                    "schema": ref(op.body),
                    "x-ms-summary": SCHEMA_SUMMARIES.get(op.body, label(op.body)),
                }
            )
        responses: dict[str, Any] = {}
        for reply in op.replies:
            response: dict[str, Any] = {"description": reply.description}
            if reply.schema:
                response["schema"] = ref(reply.schema)
            if reply.headers:
                response["headers"] = {
                    n: {"type": "string", "description": d, "x-ms-summary": label(n)}
                    for n, d in reply.headers.items()
                }
            responses[reply.status] = response
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "description": op.description,
            "parameters": params,
            "responses": responses,
            **op.extensions,
        }
        if op.auth == "hook":
            operation["security"] = []  # Entra ID from the HTTP action, or the X-OnRecord-Key parameter
        paths.setdefault(op.path, dict(path_extensions().get(op.path, {})))[op.method] = operation
    document = {
        "swagger": "2.0",
        "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
        "host": parts.netloc,
        "basePath": parts.path.rstrip("/") or "/",  # a gateway's prefix: "/onrecord"
        "schemes": [parts.scheme or "https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {
            "api_token": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "'Bearer ' followed by one of OnRecord's API tokens (ONRECORD_API__TOKENS).",
            }
        },
        "security": [{"api_token": []}],
        "paths": paths,
        "definitions": _checked_schemas(),
    }
    _connector_extensions(document, base_url, contact_email, privacy_url)
    resolved: dict[str, Any] = _resolve(document, "#/definitions/", keep_ms=True)
    return resolved


def openapi3(base_url: str, tenant_id: str = "") -> dict[str, Any]:
    """The OpenAPI 3.0 document, for Salesforce External Services."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations():
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "description": op.description,
            "responses": {},
            "security": (
                [{"entra": []}, {"onrecord_key": []}]
                if op.auth == "hook"
                else [{"api_token": []}, {"entra": []}]
            ),
        }
        if op.params:
            operation["parameters"] = [
                {"name": p.name, "in": p.location, "description": p.description, "required": p.required}
                | {"schema": {"type": "string"}}
                for p in op.params
            ]
        if op.body:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(op.body)}},
            }
        for reply in op.replies:
            response: dict[str, Any] = {"description": reply.description}
            if reply.schema:
                response["content"] = {"application/json": {"schema": ref(reply.schema)}}
            if reply.headers:
                response["headers"] = {
                    n: {"description": d, "schema": {"type": "string"}} for n, d in reply.headers.items()
                }
            operation["responses"][reply.status] = response
        paths.setdefault(op.path, {})[op.method] = operation
    tenant = tenant_id or "{tenant}"
    document = {
        "openapi": "3.0.3",
        "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
        "servers": [{"url": base_url}],
        "paths": paths,
        "components": {
            "schemas": _v3_nullable(_checked_schemas()),
            "securitySchemes": {
                "api_token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of ONRECORD_API__TOKENS.",
                },
                "onrecord_key": {"type": "apiKey", "in": "header", "name": "X-OnRecord-Key"},
                "entra": {
                    "type": "oauth2",
                    "description": "Entra ID app-only token with OnRecord's app role.",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
                            "scopes": {},
                        }
                    },
                },
            },
        },
    }
    resolved: dict[str, Any] = _resolve(document, "#/components/schemas/", keep_ms=False)
    return resolved


# -- routes -------------------------------------------------------------------------------------

blueprint = Blueprint("openapi", __name__)


def _base_url() -> str:
    # api.public_url as configured (its path included), else the request's scheme, host and
    # SCRIPT_NAME prefix, which are the proxy's when server.trusted_proxy_hops lets ProxyFix set them.
    return runtime().config.api.public_url or request.root_url.rstrip("/")


@blueprint.get("/openapi-v2.json")
def openapi_v2() -> Response:
    """Swagger 2.0, to import as a Power Automate custom connector."""
    api = runtime().config.api
    return jsonify(swagger2(_base_url(), contact_email=api.contact_email, privacy_url=api.privacy_url))


@blueprint.get("/openapi.json")
def openapi_v3() -> Response:
    """OpenAPI 3.0, for Salesforce External Services."""
    return jsonify(openapi3(_base_url(), registry.entra_tenant(runtime().config)))
