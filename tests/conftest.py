"""Shared fixtures: a fresh database per test (SQLite, and PostgreSQL when one answers)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from plugin.config import Config, load_config
from plugin.storage import dispose_engines

PG_URL = os.environ.get("ONRECORD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _postgres_answers() -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        engine = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return (
            f"PostgreSQL at {PG_URL} does not answer ({type(exc).__name__}); set ONRECORD_TEST_POSTGRES_URL"
        )


_PG_PROBLEM = _postgres_answers()


def pytest_report_header() -> str:
    return "postgres: " + ("available at " + PG_URL if _PG_PROBLEM is None else f"SKIPPED - {_PG_PROBLEM}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/onrecord.db"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    if _PG_PROBLEM is not None:
        pytest.skip(_PG_PROBLEM)
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    dispose_engines()
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(name)
    return url


def make_config(db_url: str, tmp_path: Path, **overrides: Any) -> Config:
    """A configuration for tests: no file, no environment, a known signing secret."""
    values: dict[str, Any] = {
        "storage.url": db_url,
        "var_dir": str(tmp_path / "var"),
        "secrets_dir": str(tmp_path / "var" / "secrets"),
        "salesforce.events_secret": [TEST_SECRET],
        "worker.rules": ["tests.support.rules:counting_rules"],
        "governed": [{"object": "Opportunity", "fields": ["Amount", "StageName", "CloseDate"]}],
    }
    values.update(overrides)
    return load_config(path=None, env={}, overrides=values)


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> Config:
    return make_config(db_url, tmp_path)


@pytest.fixture(autouse=True)
def _fresh_engines() -> Iterator[None]:
    yield
    dispose_engines()
