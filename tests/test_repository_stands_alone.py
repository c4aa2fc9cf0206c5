"""The repository stands alone: what an admin or engineer reads (README.md, docs/, the product code
and the example configuration) points at no file outside it and at no issue of the project's
tracker, and the one contract page that lists the event kinds lists the code's."""

from __future__ import annotations

import re
from pathlib import Path

from plugin.events import KINDS

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("README.md", "docs", "plugin", "connectors", "config", "bench")
# A file outside the repository (the design notes it grew from), or the project's own issues
# ("issue 13", "(issue 12)"). Upstream trackers named with their repository
# (microsoft/PowerPlatformConnectors#3678, gevent issue #2148) are sources, not these.
POINTERS = re.compile(r"\.\./shared|\bDESIGN\.md\b|\bissue \d+\b|\(issue\b", re.IGNORECASE)


def scanned_files() -> list[Path]:
    found: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        found += [p for p in candidates if p.is_file() and p.suffix in {".md", ".py", ".toml"}]
    return found


def test_nothing_points_outside_the_repository_or_at_an_issue_number() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in scanned_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if POINTERS.search(line)
    ]
    assert hits == []


def test_the_pointer_pattern_finds_what_it_is_for() -> None:
    outside = "/".join(("..", "shared", "DESIGN.md"))  # spelled in parts: this file points nowhere
    for line in (f"see {outside}", "Target (issue 3): ratio", "as issue 13 asks"):
        assert POINTERS.search(line), line
    for line in ("(microsoft/PowerPlatformConnectors#3678)", "(gevent issue #2148)", "color: #0072B2"):
        assert not POINTERS.search(line), line


def test_the_architecture_page_lists_every_event_kind() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## The event kinds", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"(?m)^\| `([a-z]+\.[a-z]+)` \|", section)) == set(KINDS)
