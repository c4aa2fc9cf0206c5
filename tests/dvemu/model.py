"""OnRecord's tables and columns in the emulator, as OnRecord's provisioner is to create them, so
writer tests can run before (and without) provisioning through the API.

The rendering of plugin.crm_model's kinds into Dataverse columns (the provisioner must match it,
see connectors/dataverse/writer.py's docstring): text -> String, long_text -> Memo, number ->
Decimal (Integer when it has no decimals), datetime -> DateTime, date -> DateTime with the
DateOnly format, checkbox -> Boolean, choice -> String (the choice's label, as text), user ->
Lookup to systemuser whose navigation property is named after the column's SchemaName
(`onr_Leader`: Dataverse names a custom lookup's navigation property after its schema name, and
it is case-sensitive), and the key field an alternate key (`onr_key`).
"""

from __future__ import annotations

from typing import Any

from plugin.config import ProvenanceConfig
from plugin.crm_model import ModelField, governed_fields, objects, physical_name, stem
from tests.dvemu.state import DataverseState


def column(f: ModelField, prefix: str) -> dict[str, Any]:
    """The emulator's attribute definition of one model field."""
    found = stem(f.name) or f.name
    schema = f"{prefix}_{found}"
    if f.kind in ("text", "choice"):
        return {"AttributeType": "String", "MaxLength": f.length or 100, "SchemaName": schema}
    if f.kind == "long_text":
        return {"AttributeType": "Memo", "MaxLength": f.length, "SchemaName": schema}
    if f.kind == "number":
        return {"AttributeType": "Decimal" if f.scale else "Integer", "SchemaName": schema}
    if f.kind == "datetime":
        return {"AttributeType": "DateTime", "SchemaName": schema}
    if f.kind == "date":
        return {"AttributeType": "DateTime", "Format": "DateOnly", "SchemaName": schema}
    if f.kind == "checkbox":
        return {"AttributeType": "Boolean", "SchemaName": schema}
    if f.kind == "user":
        return {
            "AttributeType": "Lookup",
            "SchemaName": schema,
            "Targets": ["systemuser"],
            "NavigationProperty": schema,
        }
    raise ValueError(f"no rendering for kind {f.kind}")


def provision(
    state: DataverseState,
    *,
    prefix: str = "onr",
    governed: tuple[str, ...] = ("opportunity",),
    provenance: ProvenanceConfig | None = None,
) -> None:
    """Create OnRecord's own tables (violation, leader signal) and its columns on the governed
    tables."""
    for obj in objects():
        logical = physical_name(obj.name, prefix)
        attributes = {physical_name(f.name, prefix): column(f, prefix) for f in obj.fields}
        key = physical_name(obj.key_field.name, prefix)
        state.add_entity(
            logical,
            f"{logical}s",
            primary_name=f"{prefix}_name",
            attributes=attributes,
            keys=[{"SchemaName": f"{prefix}_Key", "LogicalName": key, "KeyAttributes": [key]}],
        )
    for table in governed:
        state.add_attributes(
            table, {physical_name(f.name, prefix): column(f, prefix) for f in governed_fields(provenance)}
        )
