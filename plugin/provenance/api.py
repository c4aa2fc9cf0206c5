"""HTTP: the public key set, a record's provenance, "is this figure from the system?", citations.

    GET  /.well-known/onrecord-keys.json        public (JWK set, RFC 8037 OKP / Ed25519)
    GET  /api/provenance/<object>/<record_id>   the chain newest first, verified, with proofs
    GET  /api/provenance/checkpoint             the log's newest signed checkpoint (text/plain)
    GET  /api/provenance/checkpoint?from=SIZE   JSON: that checkpoint and the consistency proof
                                                from the tree of SIZE leaves to it
    POST /api/verify                            {object, id, field, value} -> verdict + sentence
    POST /api/citations                         {leader, object, id, field, value, occasion}

Before answering, the log's sequencer takes in what the worker signed since (`log.integrate`),
so the answer covers the latest statement.

The checkpoint is a C2SP tlog-checkpoint signed note (`plugin.provenance.checkpoint`). With
`?from=SIZE` (0 <= SIZE <= the current tree size; `&to=N` for an earlier checkpoint the log
signed, by its size) the answer is

    {"checkpoint": "<signed note>",
     "consistency_proof": {"from_size": SIZE, "tree_size": N, "hashes": ["<hex>", ...]}}

where `hashes` is PROOF(SIZE, D[N]) of RFC 6962 section 2.1.2 (RFC 9162 2.1.4), each 32-byte hash
in lowercase hex like the inclusion proofs' `hashes`: empty when SIZE is 0 or N. An auditor who
kept an older checkpoint checks it with `python -m plugin verify OLD --url URL`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from plugin import strict_json
from plugin.api_auth import api_error, require_api_auth
from plugin.api_models import BodyRefused, CitationRequest, VerifyRequest, validate
from plugin.api_responses import Citation, ConsistencyProof, Envelope, LogCheckpoint, VerifyResult
from plugin.crm import CrmError
from plugin.events import Event
from plugin.identity import canonical_record_id
from plugin.inbox import insert_events
from plugin.provenance.canonical import canonical_json, values_digest
from plugin.provenance.dsse import sign_envelope
from plugin.provenance.keys import KeyStore, KeyStoreError
from plugin.provenance.log import (
    LogCorrupted,
    checkpoint_at,
    consistency,
    envelope_text,
    integrate,
    latest_checkpoint,
    proofs,
    record_chain,
)
from plugin.provenance.rule import key_store
from plugin.provenance.statement import citation_statement, payload_of, statement_digest
from plugin.provenance.verify import ChainCheck, Verdict, verdict, verify_chain
from plugin.runtime import Runtime, runtime
from plugin.storage import begin_write, provenance_statements

blueprint = Blueprint("provenance", __name__)

CITATION_SOURCE = "onrecord.citations"
_TREE_SIZE = re.compile(r"^(0|[1-9][0-9]{0,17})$")


class BadRequest(Exception):
    """The body is not what the operation takes."""


@blueprint.get("/.well-known/onrecord-keys.json")
def public_keys() -> Response:
    """The public JWK set; kid = RFC 7638 thumbprint = the envelopes' keyid."""
    try:
        jwks = key_store(runtime().config).jwks()
    except KeyStoreError as exc:
        return api_error(503, "no_signing_key", str(exc))
    resp = jsonify(jwks)
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


@dataclass(frozen=True)
class LoadedChain:
    """A record's chain as served, and its verification."""

    entries: list[dict[str, Any]]
    check: ChainCheck
    checkpoint: str | None


def load_chain(rt: Runtime, store: KeyStore, obj: str, record_id: str) -> LoadedChain:
    """Sequence what is pending, then read and verify the record's chain against the latest checkpoint."""
    origin = rt.config.provenance.log_origin
    integrate(rt.engine, store.signing_key(), origin, datetime.now(UTC))
    with rt.engine.connect() as conn:
        rows = record_chain(conn, obj, record_id)
        latest = latest_checkpoint(conn)
        size, note = latest if latest is not None else (0, None)
        found = proofs(conn, [r["log_index"] for r in rows if r["log_index"] is not None], size)
    entries = [{"envelope": r["envelope"], "inclusion_proof": found.get(r["log_index"])} for r in rows]
    return LoadedChain(entries, verify_chain(entries, store.public_keys(), note, origin), note)


@blueprint.get("/api/provenance/<obj>/<record_id>")
@require_api_auth
def provenance(obj: str, record_id: str) -> Response:
    """The record's chain, newest first: envelope, verification, inclusion proof."""
    rt = runtime()
    record_id = canonical_record_id(record_id)
    try:
        loaded = load_chain(rt, key_store(rt.config), obj, record_id)
    except KeyStoreError as exc:
        return api_error(503, "no_signing_key", str(exc))
    if not loaded.entries:
        return api_error(404, "not_recorded", f"no statement for {obj}/{record_id}")
    chain = [
        {
            "envelope": entry["envelope"],
            "verified": check.verified,
            "reason": check.reason,
            "inclusion_proof": entry["inclusion_proof"],
        }
        for entry, check in zip(loaded.entries, loaded.check.entries, strict=True)
    ]
    return jsonify({"object": obj, "record_id": record_id, "chain": chain, "checkpoint": loaded.checkpoint})


@blueprint.get("/api/provenance/checkpoint")
@require_api_auth
def checkpoint() -> Response:
    """The log's newest signed checkpoint; with ?from=SIZE, JSON with the consistency proof from SIZE.

    `to=SIZE` asks for the checkpoint the log signed at that size instead of the newest.
    """
    rt = runtime()
    asked = {name: request.args.get(name) for name in ("from", "to")}
    if any(v is not None and not _TREE_SIZE.match(v) for v in asked.values()):
        return api_error(400, "bad_request", "from and to must be tree sizes (non-negative integers)")
    try:
        result = integrate(
            rt.engine, key_store(rt.config).signing_key(), rt.config.provenance.log_origin, datetime.now(UTC)
        )
    except KeyStoreError as exc:
        return api_error(503, "no_signing_key", str(exc))
    except LogCorrupted as exc:
        return api_error(500, "log_corrupted", f"the log refuses to sign: {exc}")
    size, note = result.tree_size, result.note
    try:
        with rt.engine.connect() as conn:
            if asked["to"] is not None and int(asked["to"]) != size:
                size = int(asked["to"])
                signed = checkpoint_at(conn, size) if size < result.tree_size else None
                if signed is None:
                    return api_error(404, "no_checkpoint", f"the log signed no checkpoint of {size} leaves")
                note = signed
            if asked["from"] is None:
                resp = Response(note, mimetype="text/plain")
                resp.headers["Cache-Control"] = "no-cache"
                return resp
            old = int(asked["from"])
            if old > size:
                return api_error(400, "bad_request", f"from={old} is beyond the checkpoint's {size} leaves")
            hashes = consistency(conn, old, size)
    except LogCorrupted as exc:
        return api_error(500, "log_corrupted", str(exc))
    proof = ConsistencyProof(from_size=old, tree_size=size, hashes=[h.hex() for h in hashes])
    return jsonify(LogCheckpoint(checkpoint=note, consistency_proof=proof).model_dump(mode="json"))


def _json_body() -> Any:
    """The request's JSON, read strictly (no NaN, duplicate keys, deep nesting ...)."""
    try:
        return strict_json.loads(request.get_data(cache=False))
    except strict_json.JsonRefused as exc:
        raise BadRequest(f"{exc.message} ({exc.reason})") from exc


def _figure_request(body: Any, *, citation: bool) -> dict[str, Any]:
    """The body, checked by its model (plugin/api_models.py), with the record id made canonical."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    model: type[VerifyRequest | CitationRequest] = CitationRequest if citation else VerifyRequest
    try:
        figure = validate(model, body)
    except BodyRefused as exc:
        raise BadRequest(f"{exc.message} ({exc.reason})") from exc
    body["id"] = canonical_record_id(figure.id)  # a flow's 15-character id is the record's 18
    return body


def _judge(rt: Runtime, loaded: LoadedChain, body: Mapping[str, Any]) -> Verdict:
    live: dict[str, Any] | None = None
    if loaded.check.verified:
        try:
            writer = rt.writer_for(rt.crm_of(body["object"]))
            live = writer.read_fields(body["object"], body["id"], [body["field"]])
        except CrmError:
            live = None  # the CRM cannot be asked now: judge by the signed record alone
    return verdict(loaded.check, body["object"], body["id"], body["field"], body["value"], live)


@blueprint.post("/api/verify")
@require_api_auth
def verify_figure() -> Response:
    """Is this figure from the system? The verdict, and the sentence to say."""
    try:
        body = _figure_request(_json_body(), citation=False)
    except BadRequest as exc:
        return api_error(400, "bad_request", str(exc))
    rt = runtime()
    try:
        loaded = load_chain(rt, key_store(rt.config), body["object"], body["id"])
    except KeyStoreError as exc:
        return api_error(503, "no_signing_key", str(exc))
    result = _judge(rt, loaded, body)
    answer = VerifyResult(verified=result.verified, reason=result.reason, statement=result.statement)
    return jsonify(answer.model_dump(mode="json"))


@blueprint.post("/api/citations")
@require_api_auth
def cite() -> Response:
    """Sign a leader's citation of a figure, log it, and count it as a leader signal."""
    try:
        body = _figure_request(_json_body(), citation=True)
    except BadRequest as exc:
        return api_error(400, "bad_request", str(exc))
    rt = runtime()
    store = key_store(rt.config)
    now = datetime.now(UTC)
    try:
        loaded = load_chain(rt, store, body["object"], body["id"])
        key = store.signing_key()
    except KeyStoreError as exc:
        return api_error(503, "no_signing_key", str(exc))
    result = _judge(rt, loaded, body)
    latest = loaded.check.entries[0].statement if loaded.check.entries else None
    statement = citation_statement(
        obj=body["object"],
        record_id=body["id"],
        values_digest=latest["subject"][0]["digest"]["sha256"] if latest else values_digest({}),
        leader=body["leader"].strip().lower(),
        field=body["field"],
        value=body["value"],
        occasion=body.get("occasion", ""),
        cited_at=now,
        verified=result.verified,
        reason=result.reason,
        record_statement_digest=statement_digest(payload_of(latest)) if latest else None,
    )
    payload = payload_of(statement)
    envelope = sign_envelope(payload, key)
    digest = statement_digest(payload)
    # The answer, through the model the OpenAPI documents describe: built before anything is stored,
    # so a citation is never stored without its answer.
    citation = Citation(
        id=digest,
        envelope=Envelope.model_validate(envelope),
        verified=result.verified,
        reason=result.reason,
        statement=result.statement,
    )
    event = Event(
        source=CITATION_SOURCE,
        delivery_id=digest,
        kind="citation.made",
        occurred_at=now,
        object=body["object"],
        record_id=body["id"],
        actor=statement["predicate"]["leader"],
        data={
            "leader": statement["predicate"]["leader"],
            "field": body["field"],
            "value": body["value"],
            "occasion": statement["predicate"]["occasion"],
            "verified": result.verified,
            "reason": result.reason,
            "citation": digest,
        },
        sender=str(g.get("api_caller", "")),
        raw_digest=hashlib.sha256(canonical_json(body)).hexdigest(),
    )
    with begin_write(rt.engine) as conn:
        conn.execute(
            provenance_statements.insert().values(
                kind="citation",
                object=body["object"],
                record_id=body["id"],
                digest=digest,
                envelope=envelope_text(envelope),
                recorded_at=now,
            )
        )
        insert_events(conn, [event], now)
    integrate(rt.engine, key, rt.config.provenance.log_origin, now)
    resp = jsonify(citation.model_dump(mode="json"))
    resp.status_code = 201
    return resp
