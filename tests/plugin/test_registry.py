"""The connector seam: the core finds connectors by their folders, imports none by name, validates
their sections with its own rules, and sends each CRM's writes through that CRM's writer."""

from __future__ import annotations

import ast
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import connectors
from plugin import migrate, registry
from plugin.app import create_app
from plugin.config import ConfigError, load_config
from plugin.crm import RecordResult, WriteBatch
from plugin.dispatch import Dispatcher
from plugin.events import CrmWrite, Event, Outcome
from plugin.rules import Rule
from plugin.storage import get_engine, outbox
from plugin.worker import Worker
from plugin.writers import build_writers, target_resolver
from tests.conftest import make_config

PLUGIN = Path(__file__).resolve().parents[2] / "plugin"


def test_the_core_imports_no_connector_by_name() -> None:
    offenders = []
    for path in sorted(PLUGIN.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [f"{path.relative_to(PLUGIN)}: {n}" for n in names if n.startswith("connectors.")]
    assert offenders == []


def test_the_shipped_connectors_are_discovered_with_their_hooks_and_crms() -> None:
    assert {"salesforce", "power_automate", "dataverse"} <= {c.name for c in registry.connectors()}
    assert set(registry.crm_names()) >= {"salesforce", "dataverse"}
    assert {
        "/hooks/salesforce/events",
        "/hooks/salesforce/outbound",
        "/hooks/power-automate/forms",
        "/hooks/dataverse",
    } <= set(registry.hooks())


def _forget(module: Any) -> None:
    """What the registry cached about the connectors it found."""
    for cached in (module.connectors, module.id_schemes, module.canonical_id, module.id_match_key):
        cached.cache_clear()


@pytest.fixture
def extra_connector(tmp_path: Path) -> Iterator[str]:
    """A connector that exists only as a folder: `connectors/echo/connector.py`."""
    folder = tmp_path / "echo"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "connector.py").write_text(
        textwrap.dedent(
            """
            from pydantic import Field
            from plugin.receive import Parsed, Reply, Source
            from plugin.registry import Connector
            from plugin.settings import Section

            class EchoConfig(Section):
                greeting: str = Field("hello", max_length=20)
                token: str = ""

            def _ack(result, parsed):
                return Reply(200, b"echo", "text/plain")

            def _refuse(exc):
                return Reply(exc.status, exc.reason.encode(), "text/plain")

            ECHO = Source(
                "echo", lambda incoming: "anyone", lambda incoming, sender: Parsed(events=[]), _ack, _refuse
            )

            CONNECTOR = Connector(
                name="echo",
                settings=EchoConfig,
                secrets=frozenset({"token"}),
                hooks=lambda: {"/hooks/echo": ECHO},
                checks=lambda config: [(True, "echo says " + config.echo.greeting)],
            )
            """
        )
    )
    connectors.__path__.append(str(tmp_path))
    _forget(registry)
    try:
        yield "echo"
    finally:
        connectors.__path__.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("connectors.echo")]:
            del sys.modules[name]
        _forget(registry)


def test_a_new_folder_is_a_new_connector_served_configured_and_checked(
    extra_connector: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(f"sqlite:///{tmp_path}/db.sqlite", tmp_path, **{"echo.greeting": "hi there"})
    assert config.echo.greeting == "hi there"
    with pytest.raises(ConfigError, match=r"echo\.greeting"):
        make_config(f"sqlite:///{tmp_path}/db.sqlite", tmp_path, **{"echo.greeting": "x" * 40})
    with pytest.raises(ConfigError, match=r"echo\.nonsense: unknown configuration key"):
        make_config(f"sqlite:///{tmp_path}/db.sqlite", tmp_path, **{"echo.nonsense": 1})
    with pytest.raises(ConfigError, match=r"echo\.token: secrets may not be written"):
        path = tmp_path / "onrecord.toml"
        path.write_text('[echo]\ntoken = "in the file"\n')
        load_config(path, env={})
    reply = create_app(config).test_client().post("/hooks/echo", data=b"{}")
    assert (reply.status_code, reply.data) == (200, b"echo")
    from plugin.commands.check import _sources

    assert (True, "echo says hi there") in _sources(config)


def test_unknown_sections_and_crms_are_named(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/db.sqlite"
    with pytest.raises(ConfigError, match="hubspot: unknown configuration key"):
        make_config(db, tmp_path, **{"hubspot.url": "x"})
    with pytest.raises(ConfigError, match=r"crm\.kind: must be one of auto, dry_run, dataverse, salesforce"):
        make_config(db, tmp_path, **{"crm.kind": "hubspot"})
    with pytest.raises(ConfigError, match=r"governed\.0\.crm: must be one of dataverse, salesforce"):
        make_config(db, tmp_path, governed=[{"object": "Deal", "crm": "hubspot", "fields": ["Amount"]}])
    two = [
        {"object": "opportunity", "crm": "dataverse", "fields": ["name"]},
        {"object": "opportunity", "crm": "salesforce", "fields": ["Name"]},
    ]
    with pytest.raises(ConfigError, match=r"governed\.1\.object: 'opportunity' is governed in two CRMs"):
        make_config(db, tmp_path, governed=two)
    with pytest.raises(
        ConfigError, match=r"crm_config\.enabled: .* 'dataverse' offers none \(one of: salesforce"
    ):
        make_config(db, tmp_path, **{"crm_config.enabled": True, "crm.primary": "dataverse"})


class Recording:
    """A CRM writer that records what it was sent."""

    def __init__(self, name: str, max_batch: int = 200) -> None:
        self.name = name
        self.max_batch = max_batch
        self.batches: list[WriteBatch] = []

    def ready(self) -> tuple[bool, str]:
        return True, self.name

    def write_batch(self, batch: WriteBatch) -> list[RecordResult]:
        self.batches.append(batch)
        return [RecordResult(ok=True) for _ in batch.records]

    def read_fields(self, object: str, record_id: str, fields: Any) -> dict[str, Any] | None:
        return None


def _writes_rule() -> Rule:
    """Each change gets one write back to its record, and one leader-signal-like upsert."""

    def apply(event: Event, state: Any, now: datetime) -> Outcome:
        assert event.object is not None and event.record_id is not None
        return Outcome(
            writes=[
                CrmWrite(object=event.object, record_id=event.record_id, fields={"Seen__c": True}),
                CrmWrite(object="Tally__c", fields={"N__c": 1}, external_id_field="Key__c", external_id="k"),
            ]
        )

    return Rule("writes", frozenset({"record.changed"}), apply)


def test_each_write_goes_to_its_crm_through_that_crms_writer(db_url: str, tmp_path: Path) -> None:
    governed = [
        {"object": "Opportunity", "fields": ["Amount"]},
        {"object": "opportunity", "crm": "dataverse", "fields": ["estimatedvalue"]},
    ]
    config = make_config(db_url, tmp_path, governed=governed)
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    from plugin.inbox import insert_events

    now = datetime.now(UTC)
    events = [
        Event("t", "1", "record.changed", now, object="Opportunity", record_id="006000000000001AAA"),
        Event(
            "t",
            "2",
            "record.changed",
            now,
            object="opportunity",
            record_id="5b0e0b6c-0000-4000-8000-000000000001",
        ),
    ]
    with engine.begin() as conn:
        insert_events(conn, events, now)
    worker = Worker(engine, [_writes_rule()], owner="w", target_of=target_resolver(config))
    assert worker.run_once().done == 2
    with engine.connect() as conn:
        targets = sorted(
            (r.target, r.object) for r in conn.execute(sa.select(outbox.c.target, outbox.c.object))
        )
    assert targets == [
        ("dataverse", "opportunity"),
        ("salesforce", "Opportunity"),
        ("salesforce", "Tally__c"),  # not tied to a governed object: the primary CRM's
        ("salesforce", "Tally__c"),
    ]
    sf, dv = Recording("salesforce"), Recording("dataverse", max_batch=1)
    dispatcher = Dispatcher(engine, sf, owner="d", writers={"salesforce": sf, "dataverse": dv})
    dispatcher.run_once()
    assert [(b.object, len(b.records)) for b in dv.batches] == [("opportunity", 1)]
    assert sorted(b.object for b in sf.batches) == ["Opportunity", "Tally__c"]


def test_a_crm_without_credentials_writes_to_its_own_dry_run(tmp_path: Path) -> None:
    config = make_config(f"sqlite:///{tmp_path}/db.sqlite", tmp_path)
    writers = build_writers(config, get_engine(config.storage.url))
    assert {writers["salesforce"].name, writers["dataverse"].name} == {"dry_run"}
    assert writers["crm"] is writers["salesforce"]  # rows stored before they named their CRM


def test_ids_are_canonical_by_each_crms_scheme() -> None:
    assert registry.canonical_id("001000000000001") == "001000000000001AAA"
    assert (
        registry.canonical_id("5B0E0B6C-0000-4000-8000-00000000000A")
        == "5b0e0b6c-0000-4000-8000-00000000000a"
    )
    assert (
        registry.canonical_id("{5B0E0B6C-0000-4000-8000-00000000000A}")
        == "5b0e0b6c-0000-4000-8000-00000000000a"
    )
    assert registry.canonical_id("5b0e0b6c-0000-4000-8000-00000000000a\n") is None
    assert registry.canonical_id("ana@contoso.com") is None
    assert registry.id_match_key("001000000000001aaa") == registry.id_match_key("001000000000001")
