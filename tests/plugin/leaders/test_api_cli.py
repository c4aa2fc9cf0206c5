"""GET /api/leaders answers the documented shape (and 400 for a bad period), and
`python -m plugin leaders` prints the same (both databases)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask.testing import FlaskClient

from plugin.app import create_app
from plugin.cli import main
from plugin.config import SIGNAL_KINDS, Config
from plugin.leaders import current_period
from tests.plugin.leaders.world import (
    ANA,
    CARLA,
    EVE,
    expected_weeks,
    month_of_activity,
    prepare,
    store,
    world_config,
)

TOKEN = "api-token-for-leaders-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACTS = month_of_activity()
EXPECTED = expected_weeks(ACTS)


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> Config:
    conf = world_config(db_url, tmp_path, **{"api.tokens": [TOKEN]})
    store(prepare(conf), ACTS)
    return conf


@pytest.fixture
def client(config: Config) -> FlaskClient:
    return create_app(config).test_client()


def documented(client: FlaskClient, name: str) -> jsonschema.Draft4Validator:
    document = client.get("/openapi-v2.json").json
    assert document is not None
    return jsonschema.Draft4Validator(
        {"definitions": document["definitions"], "$ref": f"#/definitions/{name}"}
    )


def test_the_api_answers_the_documented_shape(client: FlaskClient) -> None:
    resp = client.get("/api/leaders?period=2026-W47", headers=AUTH)

    assert resp.status_code == 200
    body: dict[str, Any] = resp.json  # type: ignore[assignment]
    assert body == EXPECTED["2026-W47"]
    documented(client, "Leaders").validate(body)
    schema = client.get("/openapi-v2.json").json["definitions"]["LeaderSignals"]  # type: ignore[index]
    counts = schema["properties"]["counts"]
    assert "additionalProperties" not in counts and set(counts["properties"]) == set(SIGNAL_KINDS)
    assert counts["required"] == list(SIGNAL_KINDS)
    assert {p["type"] for p in counts["properties"].values()} == {"integer"}
    assert set(body) == {"period", "weights_version", "leaders", "champions"}


def test_without_a_period_the_api_answers_the_current_one(client: FlaskClient, config: Config) -> None:
    body = client.get("/api/leaders", headers=AUTH).json
    assert body is not None and body["period"] == current_period(config).name
    assert len(body["leaders"]) == 5


@pytest.mark.parametrize(
    ("period", "problem"),
    [
        ("2026-11", "is not an ISO week like 2026-W48"),
        ("2026-W60", "2026 has ISO weeks 01 to 53, not 60"),
        ("2026-11-26", "counts ISO weeks, not days"),
    ],
)
def test_a_bad_period_is_a_400_naming_the_problem(client: FlaskClient, period: str, problem: str) -> None:
    resp = client.get(f"/api/leaders?period={period}", headers=AUTH)
    assert resp.status_code == 400
    assert resp.json is not None and resp.json["reason"] == "bad_period" and problem in resp.json["error"]
    documented(client, "Error").validate(resp.json)


def test_the_api_needs_a_token(client: FlaskClient) -> None:
    assert client.get("/api/leaders").status_code == 401
    assert (
        client.get("/api/leaders", headers={"Authorization": "Bearer nope-nope-nope-nope-nope"}).status_code
        == 401
    )


def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    (tmp_path / "onrecord.toml").write_text(
        "[leaders]\n"
        'roles = ["Regional Director"]\n'
        f'users = [{{ email = "{ANA.email}" }}, {{ email = "{CARLA.upn}" }}]\n'
    )
    monkeypatch.setenv("ONRECORD_CONFIG", str(tmp_path / "onrecord.toml"))
    monkeypatch.setenv("ONRECORD_STORAGE__URL", db_url)
    monkeypatch.setenv("ONRECORD_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("ONRECORD_SECRETS_DIR", str(tmp_path / "var" / "secrets"))
    return main(list(argv))


def test_the_command_prints_the_leaders(
    config: Config,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The command's configuration names three of the five: Ana and Carla, and Eve by her role.
    assert cli(db_url, tmp_path, monkeypatch, "leaders", "--period", "2026-W47", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["period"] == "2026-W47"
    names = {ANA.name, CARLA.name, EVE.name}
    expected = [r for r in EXPECTED["2026-W47"]["leaders"] if r["name"] in names]
    assert [(r["name"], r["score"], r["counts"]) for r in shown["leaders"]] == [
        (r["name"], r["score"], r["counts"]) for r in expected
    ]

    assert cli(db_url, tmp_path, monkeypatch, "leaders", "--period", "2026-W47") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "leaders 2026-W47 (weights 2026.1)"
    assert lines[1].split()[:4] == ["leader", "score", "trend", "champion"]
    top = shown["leaders"][0]
    assert lines[2].startswith(f"{top['name']} <{top['email']}>")
    assert f"{top['score']:.1f}" in lines[2] and f"{top['trend']:+.1f}" in lines[2]
    assert lines[-1] == "champion candidates: " + ", ".join(shown["champions"])

    assert cli(db_url, tmp_path, monkeypatch, "leaders", "--period", "2026-W99") == 2
    assert "2026 has ISO weeks 01 to 53, not 99" in capsys.readouterr().err


def test_the_command_says_when_nobody_is_a_leader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "onrecord.toml").write_text("")
    monkeypatch.setenv("ONRECORD_CONFIG", str(tmp_path / "onrecord.toml"))
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("ONRECORD_STORAGE__URL", url)
    monkeypatch.setenv("ONRECORD_VAR_DIR", str(tmp_path / "var"))
    from plugin import migrate
    from plugin.storage import get_engine

    migrate.upgrade(get_engine(url))
    assert main(["leaders", "--period", "2026-W47"]) == 0
    assert capsys.readouterr().out == (
        "leaders 2026-W47 (weights 2026.1)\nno leaders ([leaders] users and roles name nobody)\n"
    )


def test_a_period_names_the_crm_configuration_version_its_leaders_and_weights_came_from(
    config: Config,
) -> None:
    from plugin.crm_config import Composed, apply
    from plugin.leaders import leaders_snapshot
    from plugin.storage import get_engine

    engine = get_engine(config.storage.url)
    period = "2026-W47"
    assert leaders_snapshot(engine, config, period) == EXPECTED[period]  # the file alone: no version
    weights = {**config.leaders.weights, "login": 3.0}
    from_crm = apply(config, Composed(leaders={"weights": weights}, version="3f2a9c41d0be77aa"))
    snapshot = leaders_snapshot(engine, from_crm, period)
    assert snapshot["config_version"] == "3f2a9c41d0be77aa"
    assert snapshot["leaders"] != EXPECTED[period]["leaders"]  # and the weights are the CRM's
