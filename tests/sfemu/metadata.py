"""The Metadata API's deploy() and checkDeployStatus() (SOAP 1.1), as simple-salesforce calls them.

    POST /services/Soap/m/{version}/deployRequest        SOAPAction: deploy
    POST /services/Soap/m/{version}/deployRequest/{id}   SOAPAction: checkDeployStatus

The session id travels in the SOAP header (SessionHeader/sessionId); a bad one is a SOAP fault
sf:INVALID_SESSION_ID with HTTP 500, as Salesforce answers. deploy() answers an AsyncResult
(id, state Queued); checkDeployStatus() answers `deploy_polls` times InProgress, then the
DeployResult with componentSuccesses / componentFailures. The package is checked the way a
deploy fails in practice: package.xml at the zip's root (singlePackage), each member present in
its file, every file well-formed Metadata API XML, each validation rule's formula within the
subset formula.py evaluates and its errorMessage within 255 characters, each report and dashboard
in a folder the package carries (reports/<Folder>-meta.xml, a ReportFolder / DashboardFolder),
each dashboard component's report one the package carries, and each custom metadata type's
(...__mdt) field of a type custom metadata supports, a MetadataRelationship pointing at a custom
metadata type the package or the org has (and only custom metadata types having such fields).
A successful deploy (not
checkOnly) defines the deployed objects, fields and validation rules in the emulated org, so later
REST calls know them and the active rules refuse writes (see rest.py).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lxml import etree
from werkzeug.wrappers import Request, Response

from tests.sfemu.formula import FormulaError, ValidationRule, parse

if TYPE_CHECKING:
    from tests.sfemu.state import OrgState

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
MD_NS = "http://soap.sforce.com/2006/04/metadata"
_MD = f"{{{MD_NS}}}"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
ERROR_MESSAGE_MAX = 255  # a validation rule's errorMessage

# Where each checked metadata type lives in an mdapi package.
_FILES = {
    "CustomObject": ("objects", ".object"),
    "PermissionSet": ("permissionsets", ".permissionset"),
    "ReportType": ("reportTypes", ".reportType"),
}
# The field types a custom metadata type (...__mdt) supports.
MDT_FIELD_TYPES = frozenset(
    {
        "MetadataRelationship",
        "Checkbox",
        "Date",
        "DateTime",
        "Email",
        "Number",
        "Percent",
        "Phone",
        "Picklist",
        "Text",
        "TextArea",
        "LongTextArea",
        "Url",
    }
)
# Types whose components live in folders: (directory, suffix, the folder's type).
_IN_FOLDERS = {
    "Report": ("reports", ".report", "ReportFolder"),
    "Dashboard": ("dashboards", ".dashboard", "DashboardFolder"),
}


@dataclass
class Component:
    """One line of a DeployResult's details."""

    type: str
    file: str
    full_name: str
    problem: str = ""

    @property
    def success(self) -> bool:
        return not self.problem


@dataclass
class Deployment:
    """One deploy() as the emulator saw it (for tests' inspection)."""

    id: str
    zip: bytes
    options: dict[str, str]
    files: dict[str, bytes]
    components: list[Component] = field(default_factory=list)
    error: str = ""  # the whole deploy failed before any component (no package.xml, bad zip)
    polls_left: int = 1
    created: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def check_only(self) -> bool:
        return self.options.get("checkOnly", "false").lower() == "true"

    @property
    def ok(self) -> bool:
        return not self.error and all(c.success for c in self.components)

    @property
    def status(self) -> str:
        """How it ends (checkDeployStatus says InProgress `polls_left` more times first)."""
        return "Succeeded" if self.ok else "Failed"


def fault(code: str, message: str, status: int = 500) -> Response:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_NS}" '
        'xmlns:sf="http://soap.sforce.com/2006/04/metadata"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>sf:{code}</faultcode><faultstring>{code}: {_escape(message)}</faultstring>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
    return Response(body, status=status, content_type="text/xml;charset=UTF-8")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _envelope(inner: etree._Element) -> Response:
    envelope = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soapenv": SOAP_NS, None: MD_NS})
    etree.SubElement(envelope, f"{{{SOAP_NS}}}Body").append(inner)
    body = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return Response(body, status=200, content_type="text/xml;charset=UTF-8")


def _sub(parent: etree._Element, tag: str, text: Any) -> etree._Element:
    element = etree.SubElement(parent, _MD + tag)
    element.text = ("true" if text else "false") if isinstance(text, bool) else str(text)
    return element


def _stamp(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _name(element: etree._Element) -> str:
    return (element.findtext(_MD + "fullName") or "").strip()


def _rule_problem(rule: etree._Element) -> str:
    """Why Salesforce would refuse this validation rule ("" if it would not)."""
    message = rule.findtext(_MD + "errorMessage") or ""
    if not message.strip():
        return "Required field is missing: errorMessage"
    if len(message) > ERROR_MESSAGE_MAX:
        return f"Error Message: data value too large: max length={ERROR_MESSAGE_MAX} (it is {len(message)})"
    try:
        parse(rule.findtext(_MD + "errorConditionFormula") or "")
    except FormulaError as exc:
        return f"Error Condition Formula: {exc}"
    return ""


def _folder_problem(
    prefix: str, type_name: str, member: str, listed: set[tuple[str, str]], parsed: dict[str, Any]
) -> str:
    """Why a report or dashboard (or its folder) would not deploy: a component outside a folder
    the package carries, or a dashboard component whose report the package does not carry."""
    folder, _, name = member.partition("/")
    if not name:
        return ""
    if (type_name, folder) not in listed:
        return f"Cannot find folder: {folder}"
    if type_name != "Dashboard":
        return ""
    directory, suffix, _ = _IN_FOLDERS[type_name]
    root = parsed.get(f"{prefix}{directory}/{member}{suffix}")
    for report in root.iter(_MD + "report") if isinstance(root, etree._Element) else []:
        if ("Report", (report.text or "").strip()) not in listed:
            return f"Components: invalid report {report.text!r}"
    return ""


class Metadata:
    """One Metadata API request, its session already checked by `handle`."""

    def __init__(self, state: OrgState, deployments: dict[str, Deployment], *, polls: int) -> None:
        self.state = state
        self.deployments = deployments
        self.polls = polls

    def handle(self, request: Request, user_id: str, fail_next: list[tuple[str, str]]) -> Response:
        root = etree.fromstring(request.get_data(), _PARSER)
        body = root.find(f"{{{SOAP_NS}}}Body")
        call = body[0] if body is not None and len(body) else None
        if call is not None and call.tag == _MD + "deploy":
            return self.deploy(call, user_id, fail_next)
        if call is not None and call.tag == _MD + "checkDeployStatus":
            return self.check(call, user_id)
        name = etree.QName(call).localname if call is not None else "nothing"
        return fault("UNKNOWN_EXCEPTION", f"the emulator does not answer {name}")

    # --- deploy ------------------------------------------------------------------------------

    def deploy(self, call: etree._Element, user_id: str, fail_next: list[tuple[str, str]]) -> Response:
        try:
            raw = base64.b64decode(call.findtext(_MD + "ZipFile") or "", validate=True)
        except (binascii.Error, ValueError):
            return fault("INVALID_CROSS_REFERENCE_KEY", "ZipFile is not base64")
        options_el = call.find(_MD + "DeployOptions")
        options = {
            etree.QName(child).localname: (child.text or "").strip()
            for child in (options_el if options_el is not None else [])
        }
        deployment = Deployment(self.state.ids.new("DeployRequest"), raw, options, {}, polls_left=self.polls)
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                deployment.files = {name: archive.read(name) for name in archive.namelist()}
        except zipfile.BadZipFile:
            deployment.error = "The zip file is not valid"
        if not deployment.error:
            deployment.components = self._check(deployment, fail_next)
        if deployment.ok and not deployment.check_only:  # rollbackOnError: all or nothing
            self._apply(deployment)
        self.deployments[deployment.id] = deployment
        result = etree.Element(_MD + "result")
        _sub(result, "done", False)
        _sub(result, "id", deployment.id)
        _sub(result, "state", "Queued")
        response = etree.Element(_MD + "deployResponse")
        response.append(result)
        return _envelope(response)

    def _check(self, deployment: Deployment, fail_next: list[tuple[str, str]]) -> list[Component]:
        files = deployment.files
        single = deployment.options.get("singlePackage", "true").lower() == "true"
        manifest = "package.xml" if single else next((n for n in files if n.endswith("/package.xml")), "")
        if manifest not in files:
            deployment.error = "No package.xml found"
            return []
        prefix = manifest.removesuffix("package.xml")
        try:
            package = etree.fromstring(files[manifest], _PARSER)
        except etree.XMLSyntaxError as exc:
            deployment.error = f"Error parsing file: package.xml: {exc}"
            return []
        components: list[Component] = [Component("Package", manifest, "package.xml")]
        parsed: dict[str, etree._Element | str] = {}
        for name, content in files.items():
            if name.endswith("package.xml") or name.endswith("/"):
                continue
            try:
                parsed[name] = etree.fromstring(content, _PARSER)
            except etree.XMLSyntaxError as exc:
                parsed[name] = f"Error parsing file: {exc}"
        listed = {
            (types.findtext(_MD + "name") or "", member.text or "")
            for types in package.findall(_MD + "types")
            for member in types.findall(_MD + "members")
        }
        for types in package.findall(_MD + "types"):
            type_name = types.findtext(_MD + "name") or ""
            for member in types.findall(_MD + "members"):
                component = self._member(prefix, type_name, member.text or "", parsed)
                if component.success and type_name in _IN_FOLDERS:
                    component.problem = _folder_problem(prefix, type_name, member.text or "", listed, parsed)
                components.append(component)
        for file_name, problem in fail_next:
            for component in components:
                if component.file == prefix + file_name or component.file == file_name:
                    component.problem = problem
        fail_next.clear()
        return components

    def _member(self, prefix: str, type_name: str, member: str, parsed: dict[str, Any]) -> Component:
        missing = (
            f"An object '{member}' of type {type_name} was named in package.xml, but was not found in "
            "zipped directory"
        )
        if type_name in ("CustomField", "ValidationRule"):
            obj, _, child = member.partition(".")
            file_name = f"{prefix}objects/{obj}.object"
            root = parsed.get(file_name)
            tag = "fields" if type_name == "CustomField" else "validationRules"
            if isinstance(root, str):
                return Component(type_name, file_name, member, root)
            found = next(
                (el for el in (root.findall(_MD + tag) if root is not None else []) if _name(el) == child),
                None,
            )
            if found is None:
                return Component(type_name, file_name, member, missing)
            if type_name == "ValidationRule":
                return Component(type_name, file_name, member, _rule_problem(found))
            return Component(type_name, file_name, member, self._field_problem(prefix, obj, found, parsed))
        if type_name in _FILES or type_name in _IN_FOLDERS:
            root_tag = type_name
            if type_name in _FILES:
                folder, suffix = _FILES[type_name]
                file_name = f"{prefix}{folder}/{member}{suffix}"
            else:
                folder, suffix, folder_type = _IN_FOLDERS[type_name]
                if "/" in member:  # Folder/Name: a component in its folder
                    file_name = f"{prefix}{folder}/{member}{suffix}"
                else:  # the folder itself, described by <Folder>-meta.xml
                    file_name, root_tag = f"{prefix}{folder}/{member}-meta.xml", folder_type
            root = parsed.get(file_name)
            if root is None:
                return Component(type_name, file_name, member, missing)
            if isinstance(root, str):
                return Component(type_name, file_name, member, root)
            if root.tag != _MD + root_tag:
                return Component(type_name, file_name, member, f"Expected a {root_tag} in {MD_NS}")
            return Component(type_name, file_name, member)
        return Component(type_name, "", member)  # a type the emulator does not check

    def _field_problem(self, prefix: str, obj: str, found: etree._Element, parsed: dict[str, Any]) -> str:
        """Why Salesforce would refuse this field for a custom metadata type, or a metadata
        relationship on anything else ("" if it would not)."""
        kind = (found.findtext(_MD + "type") or "").strip()
        if not obj.endswith("__mdt"):
            if kind == "MetadataRelationship":
                return "Metadata relationships are only available on custom metadata types"
            return ""
        if kind not in MDT_FIELD_TYPES:
            return f"Field type {kind or '(none)'} is not supported on custom metadata types"
        if kind != "MetadataRelationship":
            return ""
        target = (found.findtext(_MD + "referenceTo") or "").strip()
        if target in ("EntityDefinition", "FieldDefinition"):
            return ""
        known = f"{prefix}objects/{target}.object" in parsed or self.state.object_def(target, create=False)
        if not target.endswith("__mdt") or not known:
            return f"referenceTo: {target!r} is not a custom metadata type"
        return ""

    def _apply(self, deployment: Deployment) -> None:
        """Make the org know what was deployed: objects, their fields, external ids."""
        for name, content in deployment.files.items():
            if not name.endswith(".object"):
                continue
            root = etree.fromstring(content, _PARSER)
            obj = name.rsplit("/", 1)[-1].removesuffix(".object")
            fields = [f.findtext(_MD + "fullName") or "" for f in root.findall(_MD + "fields")]
            external = [
                f.findtext(_MD + "fullName") or ""
                for f in root.findall(_MD + "fields")
                if f.findtext(_MD + "externalId") == "true"
            ]
            existing = self.state.object_def(obj, create=False)
            known_external = sorted(existing.external_ids) if existing and existing.external_ids else []
            odef = self.state.define_object(
                obj,
                fields,
                strict=existing.strict if existing else False,
                external_ids=[*known_external, *external] if external else None,
            )
            with self.state.lock:
                if obj.endswith("__mdt"):  # what each metadata relationship points at
                    for f in root.findall(_MD + "fields"):
                        if f.findtext(_MD + "type") == "MetadataRelationship":
                            target = f.findtext(_MD + "referenceTo") or ""
                            odef.relationships[(f.findtext(_MD + "fullName") or "").lower()] = target
                for el in root.findall(_MD + "validationRules"):
                    odef.validation_rules[_name(el)] = ValidationRule(
                        _name(el),
                        el.findtext(_MD + "errorConditionFormula") or "",
                        el.findtext(_MD + "errorMessage") or "",
                        el.findtext(_MD + "errorDisplayField") or "",
                        active=(el.findtext(_MD + "active") or "").strip() == "true",
                    )

    # --- checkDeployStatus -------------------------------------------------------------------

    def check(self, call: etree._Element, user_id: str) -> Response:
        async_id = (call.findtext(_MD + "asyncProcessId") or "").strip()
        deployment = self.deployments.get(async_id)
        if deployment is None:
            return fault("INVALID_ID_FIELD", f"invalid deploy id {async_id!r}")
        if deployment.polls_left > 0:
            deployment.polls_left -= 1
            status = "InProgress"
        else:
            status = deployment.status
        done = status != "InProgress"
        result = etree.Element(_MD + "result")
        failures = [c for c in deployment.components if not c.success]
        successes = [c for c in deployment.components if c.success]
        now = dt.datetime.now(dt.UTC)
        _sub(result, "checkOnly", deployment.check_only)
        if done:
            _sub(result, "completedDate", _stamp(now))
        _sub(result, "createdBy", user_id[:15])
        _sub(result, "createdByName", "Integration User")
        _sub(result, "createdDate", _stamp(deployment.created))
        details = etree.SubElement(result, _MD + "details")
        if done:
            for tag, items in (("componentFailures", failures), ("componentSuccesses", successes)):
                for c in items:
                    message = etree.SubElement(details, _MD + tag)
                    _sub(message, "changed", c.success)
                    _sub(message, "componentType", c.type)
                    _sub(message, "created", c.success)
                    _sub(message, "createdDate", _stamp(deployment.created))
                    _sub(message, "deleted", False)
                    _sub(message, "fileName", c.file)
                    _sub(message, "fullName", c.full_name)
                    if c.problem:
                        _sub(message, "problem", c.problem)
                        _sub(message, "problemType", "Error")
                    _sub(message, "success", c.success)
        _sub(result, "done", done)
        if done and deployment.error:
            _sub(result, "errorMessage", deployment.error)
            _sub(result, "errorStatusCode", "UNKNOWN_EXCEPTION")
        _sub(result, "id", deployment.id)
        _sub(result, "ignoreWarnings", deployment.options.get("ignoreWarnings", "false").lower() == "true")
        _sub(result, "lastModifiedDate", _stamp(now))
        counted = [c for c in deployment.components if c.type != "Package"]
        _sub(result, "numberComponentErrors", len(failures) if done else 0)
        _sub(result, "numberComponentsDeployed", len([c for c in counted if c.success]) if done else 0)
        _sub(result, "numberComponentsTotal", len(counted))
        _sub(result, "numberTestErrors", 0)
        _sub(result, "numberTestsCompleted", 0)
        _sub(result, "numberTestsTotal", 0)
        _sub(result, "rollbackOnError", deployment.options.get("rollbackOnError", "true").lower() == "true")
        _sub(result, "runTestsEnabled", False)
        _sub(result, "startDate", _stamp(deployment.created))
        if not done:
            _sub(result, "stateDetail", "Processing Type: CustomField")
        _sub(result, "status", status)
        _sub(result, "success", status == "Succeeded")
        response = etree.Element(_MD + "checkDeployStatusResponse")
        response.append(result)
        return _envelope(response)
