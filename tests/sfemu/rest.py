"""REST API resources under /services/data/vNN.N/: sObject rows, sObject Collections, query, limits.

Shapes follow the REST API Developer Guide: errors are a JSON array of
{"message", "errorCode", "fields"}; sObject Collections answer 200 with one
{"id", "success", "errors": [{"statusCode", "message", "fields"}]} per record, in order
(upserts add "created"; failed records carry no id); at most 200 records per call.

Deployed, active validation rules (metadata.py) are enforced on every write: when a rule's
formula is true the record is left unchanged and the write answers as Salesforce does,
FIELD_CUSTOM_VALIDATION_EXCEPTION with the rule's errorMessage and errorDisplayField (a 400 for
single-record calls, a per-record error inside sObject Collections results).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.sfemu import soql
from tests.sfemu.formula import Context
from tests.sfemu.ids import checksum, to18
from tests.sfemu.state import ObjectDef, OrgState, Session

MAX_COLLECTION = 200
ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was using "
    "AllOrNone header",
    "fields": [],
}


class RestError(Exception):
    """A whole-call error: answered as [{"message", "errorCode", "fields"}] with `status`."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or []

    def response(self) -> Response:
        return json_response(
            [{"message": self.message, "errorCode": self.code, "fields": self.fields}], self.status
        )


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json;charset=UTF-8")


def not_found() -> RestError:
    return RestError(404, "NOT_FOUND", "The requested resource does not exist")


class Rest:
    """One REST request, already authenticated and counted."""

    def __init__(
        self, state: OrgState, request: Request, version: str, session: Session, batch_size: int
    ) -> None:
        self.state, self.request, self.version, self.session = state, request, version, session
        self.batch_size = batch_size
        self.records = 0  # for the call log

    # --- helpers -------------------------------------------------------------------------------

    def body(self) -> Any:
        try:
            return json.loads(self.request.get_data(as_text=True) or "null")
        except ValueError as exc:
            raise RestError(400, "JSON_PARSER_ERROR", f"Unexpected character in request body: {exc}") from exc

    def odef(self, name: str, *, create: bool) -> ObjectDef:
        odef = self.state.object_def(name, create=create)
        if odef is None:
            raise not_found()
        return odef

    def values(self, odef: ObjectDef, raw: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "attributes":
                continue
            canonical = self.state.field_name(odef, key)
            if canonical is None:
                raise RestError(
                    400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {odef.name}"
                )
            out[canonical] = value
        return out

    def url(self, odef: ObjectDef, record_id: str) -> str:
        return f"/services/data/v{self.version}/sobjects/{odef.name}/{record_id}"

    def shape(self, odef: ObjectDef, record: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"attributes": {"type": odef.name, "url": self.url(odef, record["Id"])}}
        names = fields if fields is not None else list(record)
        for name in names:
            canonical = odef.fields.get(name.lower())
            if canonical is None:
                if odef.strict:
                    raise RestError(
                        400,
                        "INVALID_FIELD",
                        f"No such column '{name}' on entity '{odef.name}'. If you are attempting to use a "
                        "custom field, be sure to append the '__c' after the custom field name.",
                    )
                canonical = name
            out[canonical] = record.get(canonical)
        return out

    # --- dispatch ------------------------------------------------------------------------------

    def dispatch(self, path: str) -> Response:
        parts = [p for p in path.split("/") if p]
        method = self.request.method
        if parts in (["limits"],) and method == "GET":
            return self.limits()
        if parts and parts[0] in ("query", "queryAll") and method == "GET":
            return self.query_more(parts[1]) if len(parts) == 2 else self.query()
        if parts[:2] == ["composite", "sobjects"]:
            if len(parts) == 2 and method in ("POST", "PATCH"):
                return self.collection("create" if method == "POST" else "update", None, None)
            if len(parts) == 2 and method == "DELETE":
                return self.collection_delete()
            if len(parts) == 4 and method == "PATCH":
                return self.collection("upsert", parts[2], parts[3])
        if parts and parts[0] == "sobjects" and len(parts) >= 2:
            return self.sobject(parts[1:], method)
        raise not_found()

    def limits(self) -> Response:
        with self.state.lock:
            used, limit = self.state.api_used, self.state.api_limit
        return json_response({"DailyApiRequests": {"Max": limit, "Remaining": max(limit - used, 0)}})

    # --- sObject rows --------------------------------------------------------------------------

    def sobject(self, parts: list[str], method: str) -> Response:
        if len(parts) == 1 and method == "POST":
            odef = self.odef(parts[0], create=True)
            self.records = 1
            values = self.values(odef, self.body() or {})
            self.check_rules(odef, None, values)
            record_id = self.state.insert(odef, values, self.session.user_id)
            return json_response({"id": record_id, "success": True, "errors": []}, 201)
        odef = self.odef(parts[0], create=method in ("POST", "PATCH"))
        if len(parts) == 2 and parts[1] == "describe" and method == "GET":
            return json_response(
                {
                    "name": odef.name,
                    "keyPrefix": self.state.ids.prefix_for(odef.name),
                    "fields": [
                        {
                            "name": f,
                            "externalId": odef.external_ids is not None and f.lower() in odef.external_ids,
                        }
                        for f in odef.fields.values()
                    ],
                }
            )
        if len(parts) == 2:
            record = self.state.find(odef, parts[1])
            if record is None:
                raise not_found()
            return self.row(odef, record, method, [record["Id"]])
        if len(parts) == 3:
            field = self.ext_field(odef, parts[1])
            matches = self.state.find_by(odef, field, parts[2])
            if len(matches) > 1:
                return json_response([self.url(odef, r["Id"]) for r in matches], 300)
            if method == "PATCH" and not matches:
                self.records = 1
                values = self.values(odef, self.body() or {})
                self.check_faults(odef, [parts[2]])
                self.check_rules(odef, None, {**values, field: parts[2]})
                record_id = self.state.insert(odef, {**values, field: parts[2]}, self.session.user_id)
                return json_response({"id": record_id, "success": True, "errors": [], "created": True}, 201)
            if not matches:
                raise not_found()
            if method == "PATCH":
                self.records = 1
                values = self.values(odef, self.body() or {})
                self.check_faults(odef, [matches[0]["Id"], parts[2]])
                self.check_rules(odef, matches[0], values)
                self.state.update(odef, matches[0]["Id"], values, self.session.user_id)
                return json_response(
                    {"id": matches[0]["Id"], "success": True, "errors": [], "created": False}
                )
            return self.row(odef, matches[0], method, [matches[0]["Id"], parts[2]])
        raise not_found()

    def row(self, odef: ObjectDef, record: dict[str, Any], method: str, keys: list[str]) -> Response:
        if method == "GET":
            fields = self.request.args.get("fields")
            names = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
            return json_response(self.shape(odef, record, names))
        self.records = 1
        if method == "PATCH":
            values = self.values(odef, self.body() or {})
            self.check_faults(odef, keys)
            self.check_rules(odef, record, values)
            self.state.update(odef, record["Id"], values, self.session.user_id)
            return Response(status=204)
        if method == "DELETE":
            self.check_faults(odef, keys)
            with self.state.lock:
                del self.state.records[odef.name][record["Id"]]
                self.state.deleted.add(record["Id"])
            return Response(status=204)
        raise RestError(
            405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET,PATCH,DELETE"
        )

    def ext_field(self, odef: ObjectDef, name: str) -> str:
        canonical = self.state.field_name(odef, name)
        if canonical is None or (odef.external_ids is not None and name.lower() not in odef.external_ids):
            raise RestError(
                404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {name}"
            )
        return canonical

    def check_faults(self, odef: ObjectDef, keys: list[str]) -> None:
        fault = self.state.record_fault(odef, keys)
        if fault is not None:
            raise RestError(400, fault.status_code, fault.message, list(fault.fields))

    def check_rules(self, odef: ObjectDef, before: dict[str, Any] | None, values: dict[str, Any]) -> None:
        """Refuse the save, as Salesforce does, when an active validation rule's formula is true for
        it (`before`: the stored record; None when the record is being created), as this session's
        user. The first such rule answers."""
        with self.state.lock:
            rules = list(odef.validation_rules.values())
            if not rules:
                return
            record = {**(before or {}), **values}
            ctx = Context(record, before, self.session.user_id, self.session.username)
        for rule in rules:
            if rule.fails(ctx):
                fields = [rule.display_field] if rule.display_field else []
                raise RestError(400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", rule.message, fields)

    # --- sObject Collections -------------------------------------------------------------------

    def collection_body(self) -> tuple[list[dict[str, Any]], bool]:
        body = self.body()
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise RestError(
                400, "JSON_PARSER_ERROR", 'The request body must be {"allOrNone": ..., "records": [...]}'
            )
        records = body["records"]
        self.records = len(records)
        if len(records) > MAX_COLLECTION:
            raise RestError(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        if not all(isinstance(r, dict) for r in records):
            raise RestError(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
        return records, bool(body.get("allOrNone", False))

    def collection(self, op: str, sobject: str | None, ext_name: str | None) -> Response:
        records, all_or_none = self.collection_body()
        url_odef = self.odef(sobject, create=True) if sobject else None
        ext = self.ext_field(url_odef, ext_name) if url_odef and ext_name else None
        typed: list[tuple[ObjectDef, dict[str, Any]]] = []
        for raw in records:
            rtype = (raw.get("attributes") or {}).get("type")
            if not rtype:
                raise RestError(
                    400,
                    "INVALID_TYPE",
                    "Must specify a type in attributes for each sObject in the collection",
                )
            if url_odef is not None and rtype.lower() != url_odef.name.lower():
                raise RestError(
                    400, "INVALID_TYPE", f"The records must be of type {url_odef.name}, not {rtype}"
                )
            odef = self.odef(rtype, create=op != "update")
            typed.append((odef, self.values(odef, raw)))
        seen: dict[str, int] = {}
        if ext is not None:
            for _, values in typed:
                key = str(values.get(ext))
                seen[key] = seen.get(key, 0) + 1
        results: list[dict[str, Any]] = []
        actions: list[tuple[str, ObjectDef, str | None, dict[str, Any]] | None] = []
        with self.state.lock:
            for odef, values in typed:
                try:
                    action = self.plan(op, odef, values, ext, seen)
                except RestError as err:
                    results.append(
                        {
                            "success": False,
                            "errors": [
                                {"statusCode": err.code, "message": err.message, "fields": err.fields}
                            ],
                        }
                    )
                    actions.append(None)
                else:
                    results.append({"success": True, "errors": []})  # completed below
                    actions.append(action)
            if all_or_none and any(a is None for a in actions):
                results = [
                    r if not r["success"] else {"success": False, "errors": [ROLLED_BACK]} for r in results
                ]
                return json_response(results)
            for i, planned in enumerate(actions):
                if planned is None:
                    continue
                kind, odef, record_id, values = planned
                if record_id is None:
                    record_id = self.state.insert(odef, values, self.session.user_id)
                else:
                    self.state.update(odef, record_id, values, self.session.user_id)
                results[i] = {"id": record_id, "success": True, "errors": []}
                if op == "upsert":
                    results[i]["created"] = kind == "create"
        return json_response(results)

    def plan(
        self, op: str, odef: ObjectDef, values: dict[str, Any], ext: str | None, seen: dict[str, int]
    ) -> tuple[str, ObjectDef, str | None, dict[str, Any]]:
        """Validate one record; return what to do with it, or raise RestError (a per-record error)."""
        if op == "create":
            self.check_rules(odef, None, values)
            return "create", odef, None, values
        if op == "update":
            raw_id = values.get("Id")
            if not raw_id:
                raise RestError(400, "MISSING_ARGUMENT", "Id not specified in an update call", [])
            try:
                record_id = to18(str(raw_id))
            except ValueError as exc:
                raise RestError(400, "MALFORMED_ID", f"malformed id {raw_id}", ["Id"]) from exc
            if record_id in self.state.deleted:
                raise RestError(400, "ENTITY_IS_DELETED", "entity is deleted", [])
            before = self.state.find(odef, record_id)
            if before is None:
                raise RestError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])
            self.check_faults(odef, [record_id])
            self.check_rules(odef, before, values)
            return "update", odef, record_id, values
        assert ext is not None
        key = values.get(ext)
        if key is None or key == "":
            raise RestError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{ext}]", [ext])
        if seen.get(str(key), 0) > 1:
            raise RestError(400, "DUPLICATE_VALUE", f"Duplicate external id specified: {key}", [ext])
        matches = self.state.find_by(odef, ext, key)
        if len(matches) > 1:
            ids = ", ".join(r["Id"] for r in matches)
            raise RestError(
                400,
                "DUPLICATE_EXTERNAL_ID",
                f"{ext}: more than one record found for external id field: [{ids}]",
                [ext],
            )
        self.check_faults(odef, [str(key), *(r["Id"] for r in matches)])
        self.check_rules(odef, matches[0] if matches else None, values)
        if matches:
            return "update", odef, matches[0]["Id"], values
        return "create", odef, None, values

    def collection_delete(self) -> Response:
        ids = [i for i in self.request.args.get("ids", "").split(",") if i]
        self.records = len(ids)
        if len(ids) > MAX_COLLECTION:
            raise RestError(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        results: list[dict[str, Any]] = []
        with self.state.lock:
            for raw in ids:
                found = None
                for name, rows in self.state.records.items():
                    key = to18(raw) if len(raw) in (15, 18) and raw.isalnum() else raw
                    if key in rows:
                        found = (name, key)
                if found is None:
                    results.append(
                        {
                            "success": False,
                            "errors": [
                                {
                                    "statusCode": "ENTITY_IS_DELETED",
                                    "message": "entity is deleted",
                                    "fields": [],
                                }
                            ],
                        }
                    )
                    continue
                del self.state.records[found[0]][found[1]]
                self.state.deleted.add(found[1])
                results.append({"id": found[1], "success": True, "errors": []})
        return json_response(results)

    # --- query ---------------------------------------------------------------------------------

    def query(self) -> Response:
        text = self.request.args.get("q", "")
        try:
            q = soql.parse(text)
        except soql.SoqlError as exc:
            raise RestError(400, "MALFORMED_QUERY", str(exc)) from exc
        odef = self.state.object_def(q.sobject, create=False)
        if odef is None:
            raise RestError(400, "INVALID_TYPE", f"sObject type '{q.sobject}' is not supported.")
        with self.state.lock:
            rows = list(self.state.records.get(odef.name, {}).values())
        for name in [*q.fields, *(c.field for c in q.where), *(o[0] for o in q.order_by)]:
            if odef.strict and name.lower() not in odef.fields:
                raise RestError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{odef.name}'.")

        def get(row: Any, name: str) -> Any:
            return row.get(odef.fields.get(name.lower(), name))

        try:
            selected = soql.run(q, rows, get)
        except soql.SoqlError as exc:
            raise RestError(400, "MALFORMED_QUERY", str(exc)) from exc
        shaped = [self.shape(odef, dict(r), q.fields) for r in selected]
        return self.page(shaped, 0, None)

    def page(self, rows: list[dict[str, Any]], offset: int, locator: str | None) -> Response:
        size = self.batch_size
        m = re.search(r"batchSize=(\d+)", self.request.headers.get("Sforce-Query-Options", ""))
        if m:
            size = min(max(int(m.group(1)), 200), 2000)
        chunk = rows[offset : offset + size]
        self.records = len(chunk)
        body: dict[str, Any] = {"totalSize": len(rows), "done": offset + size >= len(rows), "records": chunk}
        if not body["done"]:
            if locator is None:
                id15 = "01g" + "".join(
                    secrets.choice(string.ascii_letters + string.digits) for _ in range(12)
                )
                locator = id15 + checksum(id15)
                with self.state.lock:
                    self.state.cursors[locator] = rows
            body["nextRecordsUrl"] = f"/services/data/v{self.version}/query/{locator}-{offset + size}"
        return json_response(body)

    def query_more(self, token: str) -> Response:
        locator, _, offset = token.rpartition("-")
        with self.state.lock:
            rows = self.state.cursors.get(locator)
        if rows is None or not offset.isdigit():
            raise RestError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self.page(rows, int(offset), locator)
