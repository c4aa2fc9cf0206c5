"""CI checks what the README promises: `.ci/run` lints, checks the format and the strict types
before it runs the tests, so a lint or type break cannot land."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe(target: str) -> list[str]:
    """The commands of one Makefile target."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"(?m)^{target}:[^\n]*\n((?:\t[^\n]*\n)*)", text)
    assert match, f"no {target} target in the Makefile"
    return [line.strip() for line in match.group(1).splitlines()]


def test_ci_runs_lint_format_and_types_before_the_tests() -> None:
    steps = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("make ")
    ]
    assert steps == ["make lint typecheck", "make test"]
    assert "$(VENV)/bin/ruff check ." in recipe("lint")
    assert "$(VENV)/bin/ruff format --check ." in recipe("lint")
    assert "$(VENV)/bin/mypy --strict plugin connectors" in recipe("typecheck")
