"""The connector seam: what each connector contributes, and how the core finds them.

A connector is a folder under `connectors/` whose `connector.py` defines `CONNECTOR`, a
`Connector`: its hook endpoints, its configuration section, its jobs, its checks, its CLI
commands and, for a CRM, its writer, provisioner, own users and id scheme.
The core discovers them (every package under `connectors/`, then any installed distribution's
`onrecord.connectors` entry point) and never imports one by name: adding a CRM or a source means
adding a folder (docs/architecture.md, "Adding a CRM").

`connector.py` must stay cheap to import: everything heavy (zeep, msal, lxml) is imported inside
the functions it names, on first use.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from flask import Blueprint
    from sqlalchemy.engine import Engine

    from plugin.config import Config
    from plugin.crm import CrmWriter
    from plugin.crm_config import ConfigRecord
    from plugin.dispatch import Notifier
    from plugin.jobs import Job, JobRun
    from plugin.openapi import Operation
    from plugin.receive import Source
    from plugin.runtime import Runtime

# One line of `check`: True fine, None switched off (allowed), False a problem.
CheckLine = tuple[bool | None, str]
# `poll logins` / `directory --refresh`: (config, engine, *, owner, now) -> what the job run produced.
RunNow = Callable[..., "JobRun"]


def _nothing(*_: Any) -> Any:
    return ()


def lazy(path: str) -> Callable[..., Any]:
    """The function "module:attribute" names, imported on its first call (so a connector.py can
    name its heavy modules' functions without importing them)."""
    module_name, _, attr = path.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module_name), attr)(*args, **kwargs)

    call.__qualname__ = call.__name__ = attr
    return call


@dataclass(frozen=True)
class IdScheme:
    """How one CRM's record and user ids look, so every part compares them the same way.

    `canonical(value)`: the id in its one canonical form if it is one of this CRM's ids, else
    None (Salesforce: 18 characters; Dataverse: a lower-case GUID). `match_key(value)`: what two
    spellings of one id share, for lookups (Salesforce: its case-sensitive 15-character stem,
    even from an 18-character id whose case was lost), or None."""

    canonical: Callable[[str], str | None]
    match_key: Callable[[str], str | None]
    # An id whose spelling was damaged in a recognisable way (an 18-character Salesforce id
    # lower-cased by a spreadsheet), repaired; None if `value` is not such an id.
    repair: Callable[[str], str | None] = lambda value: None
    # The canonical form of one of this CRM's *user* ids (what a user lookup can point at), or
    # None (Salesforce: an id with the User key prefix 005; Dataverse: a GUID).
    user_id: Callable[[str], str | None] = lambda value: None


@dataclass(frozen=True)
class CrmSide:
    """What a CRM connector gives the dispatcher, `check`, `provision`, the rules and the jobs."""

    configured: Callable[[Config], bool]  # credentials present: otherwise its writes go to a dry run
    build_writer: Callable[[Config], CrmWriter]
    # Users whose changes are OnRecord's own write-backs (never judged, never counted)
    own_users: Callable[[Config], Sequence[str]]
    # `provision --crm <name>`: (args, config) -> exit code
    provision: Callable[[argparse.Namespace, Config], int]
    poll_logins: RunNow | None = None  # `poll logins --crm <name>`
    refresh_directory: RunNow | None = None  # `directory --refresh --crm <name>`
    # Configuration from the CRM ([crm_config]): its OnRecord configuration records, read now
    read_config: Callable[[Config], Sequence[ConfigRecord]] | None = None
    needs: str = ""  # what "configured" asks for, in words, for messages


@dataclass(frozen=True)
class Command:
    """A CLI command a connector adds: `add(subparsers)` declares it, `run(args, config)` runs it."""

    name: str
    add: Callable[[Any], None]
    run: Callable[[argparse.Namespace, Config], int]


@dataclass(frozen=True)
class Connector:
    """Everything one connector contributes. Only `name` is required."""

    name: str  # also its configuration section's name, and the outbox target of a CRM
    settings: type[BaseModel] | None = None  # its configuration section
    secrets: frozenset[str] = frozenset()  # keys of its section that are secrets
    optional_secrets: frozenset[str] = frozenset()  # secrets `init` does not generate
    hooks: Callable[[], Mapping[str, Source]] = _nothing  # path -> Source (plugin/receive.py)
    blueprints: Callable[[], Sequence[Blueprint]] = _nothing  # more Flask routes
    prepare: Callable[[Config], None] | None = None  # at app start (e.g. load WSDLs)
    jobs: Callable[[Config], Sequence[Job]] = _nothing  # scheduled in the worker
    checks: Callable[[Config], Sequence[CheckLine]] = _nothing  # lines of `check`
    commands: Sequence[Command] = ()
    # Request and response models (pydantic) of its operations: both OpenAPI documents describe them
    openapi_models: Callable[[], Sequence[type[BaseModel]]] = _nothing
    # ... and the operations flows call (plugin.openapi.Operation), with Swagger path extensions
    openapi_operations: Callable[[], Sequence[Operation]] = _nothing
    openapi_path_extensions: Callable[[], Mapping[str, Mapping[str, Any]]] = dict
    crm: CrmSide | None = None
    ids: IdScheme | None = None
    # user.activity sources whose `login_type` values count as a person's interactive login
    login_types: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # A bearer-token verifier for /api/* (Entra ID): (runtime, authorization) -> caller, or None
    # when this connector does not vouch for such tokens under the configuration.
    api_verifier: Callable[[Runtime], Callable[[str], str] | None] | None = None
    entra_tenant: Callable[[Config], str] | None = None  # whose tokens it accepts (OpenAPI 3's OAuth flow)
    notifier: Callable[[Config, Engine], Notifier] | None = None  # delivers outbox notifications


def _from_folder(name: str) -> Connector | None:
    module_name = f"connectors.{name}.connector"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # a folder without a connector.py: not a connector (yet)
            return None
        raise
    found = getattr(module, "CONNECTOR", None)
    if not isinstance(found, Connector):
        raise TypeError(f"{module_name}.CONNECTOR must be a plugin.registry.Connector")
    return found


@functools.cache
def connectors() -> tuple[Connector, ...]:
    """Every connector: the folders under `connectors/`, then installed entry points."""
    import connectors as package

    found: dict[str, Connector] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.ispkg and (connector := _from_folder(info.name)) is not None:
            found[connector.name] = connector
    for ep in entry_points(group="onrecord.connectors"):
        connector = ep.load()
        if not isinstance(connector, Connector):
            raise TypeError(f"entry point {ep.name} must name a plugin.registry.Connector")
        found.setdefault(connector.name, connector)
    return tuple(found.values())


def get(name: str) -> Connector:
    """The connector called `name` (KeyError naming the known ones otherwise)."""
    for connector in connectors():
        if connector.name == name:
            return connector
    raise KeyError(f"no connector {name!r}; known: {', '.join(c.name for c in connectors())}")


def crms() -> tuple[Connector, ...]:
    """The connectors that are CRMs."""
    return tuple(c for c in connectors() if c.crm is not None)


def crm_names() -> tuple[str, ...]:
    return tuple(c.name for c in crms())


def crm_side(name: str) -> CrmSide:
    side = get(name).crm
    if side is None:
        raise KeyError(f"connector {name!r} is not a CRM")
    return side


def settings_sections() -> dict[str, type[BaseModel]]:
    """Configuration section name -> model, for every connector that has one."""
    return {c.name: c.settings for c in connectors() if c.settings is not None}


def secret_keys() -> frozenset[tuple[str, str]]:
    return frozenset((c.name, key) for c in connectors() for key in c.secrets)


def optional_secret_keys() -> frozenset[tuple[str, str]]:
    return frozenset((c.name, key) for c in connectors() for key in c.optional_secrets)


def hooks() -> dict[str, Source]:
    """Every hook path any connector serves (a path served twice is a bug, refused here)."""
    found: dict[str, Source] = {}
    for connector in connectors():
        for path, source in connector.hooks().items():
            if path in found:
                raise ValueError(f"hook path {path} is declared twice (by {connector.name})")
            found[path] = source
    return found


@functools.cache
def id_schemes() -> tuple[IdScheme, ...]:
    """Every CRM's id scheme (cached: asked for on every event received)."""
    return tuple(c.ids for c in connectors() if c.ids is not None)


# canonical_id and id_match_key are pure and asked for the same few thousand ids (users, records)
# on every event and directory lookup: cached, they cost a dict lookup instead of a checksum.
@functools.lru_cache(maxsize=65536)
def canonical_id(value: str) -> str | None:
    """The canonical form of a CRM id, if any CRM recognises `value`."""
    for scheme in id_schemes():
        found = scheme.canonical(value)
        if found is not None:
            return found
    return None


def repaired_id(value: str) -> str:
    """`value` with a recognisably damaged CRM id repaired, then canonical; else unchanged."""
    for scheme in id_schemes():
        repaired = scheme.repair(value) or value
        found = scheme.canonical(repaired)
        if found is not None:
            return found
    return value


@functools.lru_cache(maxsize=65536)
def id_match_key(value: str) -> str | None:
    """The lookup key of a CRM id, if any CRM recognises `value`."""
    for scheme in id_schemes():
        found = scheme.match_key(value)
        if found is not None:
            return found
    return None


def own_users(config: Config) -> tuple[str, ...]:
    """Every CRM's users whose changes are OnRecord's own write-backs (never judged or counted)."""
    return tuple(user for c in crms() if c.crm is not None for user in c.crm.own_users(config) if user)


def crm_user_id(crm: str, candidates: Sequence[str]) -> str | None:
    """The first of `candidates` that is one of `crm`'s user ids, canonical (None if none is)."""
    scheme = get(crm).ids
    if scheme is None:
        return None
    for candidate in candidates:
        found = scheme.user_id(candidate) if isinstance(candidate, str) else None
        if found is not None:
            return found
    return None


def primary_own_user(config: Config) -> str:
    """The primary CRM's integration user (who a form's values are attributed as written by)."""
    found = get(config.crm.primary).crm
    users = found.own_users(config) if found is not None else ()
    return users[0] if users else ""


def entra_tenant(config: Config) -> str:
    """The Entra ID tenant whose app-only tokens OnRecord accepts, if a connector configures one."""
    for connector in connectors():
        tenant = connector.entra_tenant(config) if connector.entra_tenant is not None else ""
        if tenant:
            return tenant
    return ""


def login_types() -> dict[str, frozenset[str]]:
    """user.activity source -> the login types that are a person's interactive login."""
    found: dict[str, frozenset[str]] = {}
    for connector in connectors():
        found.update(connector.login_types)
    return found
