"""The Leader Buy-In report: the page from hand-built data (GET /api/leaders bodies), opened in
headless Chromium as a person would see it; and `python -m plugin report` from a database."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from plugin import migrate
from plugin.config import SIGNAL_KINDS
from plugin.leaders.periods import last_periods, parse_period
from plugin.report import OffSystemApproval, ReportData, period_label, render_html, score_series
from plugin.storage import begin_write, facts, get_engine
from tests.support.processes import ROOT

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
GENERATED = datetime(2026, 11, 27, 16, 30, tzinfo=UTC)
LEADERS = (
    ("dana.chief@example.com", "Dana Chief", "005DEMO00000005YDA"),
    ("vera.strategy@example.com", "Vera Strategy", ""),
    ("casey.finance@example.com", "Casey Finance", ""),
    ("jane.doe@example.com", "Jane Doe", "005DEMO00000004YDA"),
)
WEIGHTS = {"login": 1, "record_touched": 2, "form_approval": 3, "off_system_approval": -10, "training": 5}
WEIGHTS |= {"citation": 4, "report_view": 0.5, "dashboard_view": 0.5}
JANE_REASON = (
    "set to Approved by Jane Doe in the CRM on 26 Nov 10:30, not through form 'Budget Request'; "
    "stage 'finance' has no decision. (UTC)"
)


def counts_for(week: int, leader: int) -> dict[str, int]:
    """A leader's signals in week 0..11: adoption growing week after week, differently per leader."""
    grow = week * (4 - leader) // 3
    counts = dict.fromkeys(SIGNAL_KINDS, 0)
    counts |= {
        "login": 1 + grow // 2,
        "record_touched": grow // 3,
        "report_view": grow,
        "dashboard_view": grow // 2,
    }
    counts["form_approval"] = (week + leader) % 3 if leader in (1, 2) else 0
    counts["training"] = 1 if week == 3 + 2 * leader else 0
    counts["citation"] = 1 if leader == 0 and week in (7, 10, 11) else 0
    counts["off_system_approval"] = 1 if leader == 3 and week in (6, 11) else 0
    return counts


def synthetic_history(name_of_last: str | None = None) -> list[dict[str, Any]]:
    """Twelve GET /api/leaders bodies, 2026-W37 to 2026-W48, as plugin.leaders builds them."""
    history: list[dict[str, Any]] = []
    previous: dict[str, float] = {}
    for week, period in enumerate(last_periods(parse_period("2026-W48", "week"), 12)):
        leaders = []
        for n, (email, name, sf_id) in enumerate(LEADERS):
            counts = counts_for(week, n)
            score = float(sum(WEIGHTS[k] * v for k, v in counts.items()))
            leaders.append(
                {
                    "email": email,
                    "name": name_of_last if (name_of_last and n == 3) else name,
                    "salesforce_id": sf_id,
                    "counts": counts,
                    "score": score,
                    "trend": score - previous.get(email, 0.0),
                    "champion_candidate": False,
                }
            )
            previous[email] = score
        leaders.sort(key=lambda lead: -lead["score"])
        champions = [lead for lead in leaders if lead["score"] > 10 and lead["email"] != LEADERS[3][0]][:2]
        for lead in champions:
            lead["champion_candidate"] = True
        history.append(
            {
                "period": period.name,
                "weights_version": "2026.1",
                "leaders": leaders,
                "champions": [lead["email"] for lead in champions],
            }
        )
    return history


def synthetic_report(**more: Any) -> ReportData:
    values: dict[str, Any] = {
        "history": synthetic_history(),
        "off_system": [
            OffSystemApproval(
                who="005DEMO00000004YDA",
                who_name="Jane Doe",
                object="Budget_Request__c",
                record_id="a0B5g00000DemoQAAS",
                occurred_at=datetime(2026, 11, 26, 10, 30, tzinfo=UTC),
                why=JANE_REASON,
            )
        ],
        "weights": WEIGHTS,
        "generated_at": GENERATED,
        "period_label": "23-29 Nov 2026",
    }
    return ReportData(**(values | more))


def svg_of(page: str) -> str:
    match = re.search(r"<svg\b.*?</svg>", page, re.DOTALL)
    assert match is not None, "no inline SVG chart"
    return match.group(0)


# --- the page --------------------------------------------------------------------------------


def test_the_page_shows_the_chart_this_periods_counts_the_champions_and_the_off_system_approvals() -> None:
    page = render_html(synthetic_report())

    svg = svg_of(page)
    assert len(re.findall(r"<path\b", svg)) > 50  # lines, markers, axes, and the text drawn as paths
    assert svg.count("stroke: #0072b2") + svg.count("stroke: #0072B2") > 0  # the first leader's line
    assert "Leader Buy-In" in page and "2026-W48" in page and "23-29 Nov 2026" in page
    table = page[page.index("Signals in 2026-W48") : page.index("Champion candidates")]
    for _, name, _ in LEADERS:
        assert name in table
    for label in ("Logins", "Records touched", "Form approvals", "Off-system approvals", "Citations"):
        assert label in table
    dana = re.search(r'<tr><td class="who">Dana Chief.*?</tr>', table, re.DOTALL)
    assert dana is not None
    numbers = re.findall(r'<td class="n[^"]*">(?:<b>)?([-\d.,]+)', dana.group(0))
    expected = counts_for(11, 0)
    assert numbers[: len(SIGNAL_KINDS)] == [str(expected[k]) for k in SIGNAL_KINDS]
    champions = page[page.index("Champion candidates") : page.index("Off-system approvals in")]
    assert "Dana Chief" in champions and "Jane Doe" not in champions
    off = page[page.index("Off-system approvals in") :]
    assert "Jane Doe" in off and "Budget_Request__c a0B5g00000DemoQAAS" in off
    assert "not through form &#x27;Budget Request&#x27;" in off  # the reason, in words (escaped)
    assert "weights 2026.1" in page and "off-system approvals -10" in page


def test_every_value_is_escaped_and_the_page_fetches_nothing() -> None:
    hostile = 'Eve <script>alert("x")</script> <img src=x onerror=alert(1)> $\\frac{1}{2}$ -->'
    data = synthetic_report(
        history=synthetic_history(name_of_last=hostile),
        off_system=[
            OffSystemApproval(
                "eve@example.com",
                hostile,
                "Budget_Request__c",
                '"><svg onload=alert(1)>',
                GENERATED,
                "<b>because</b> & so on",
            )
        ],
    )

    page = render_html(data)

    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;svg onload=alert(1)&gt;" in page
    assert "&lt;b&gt;because&lt;/b&gt; &amp; so on" in page
    assert page.count("<svg") == 1  # only the chart: a name inside it never becomes markup
    # nothing is fetched when the page opens: no remote or local references, no script at all
    tags = Tags()
    tags.feed(page)
    assert "script" not in tags.names and "img" not in tags.names and "link" not in tags.names
    assert {value[:1] for value in tags.references} <= {"#"}  # only the SVG's own glyphs, in the page
    assert not any(name.startswith("on") for name in tags.attributes)  # no event handlers
    assert "url(" not in tags.style and "@import" not in tags.style and "@font-face" not in tags.style
    assert "default-src 'none'" in page


class Tags(HTMLParser):
    """Every element, attribute and reference (src, href) the page really has, and its CSS."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attributes: set[str] = set()
        self.references: list[str] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            self.attributes.add(name)
            if name in ("src", "href", "xlink:href", "srcset", "action", "data"):
                self.references.append(value or "")
            if name == "style":
                self.style += value or ""

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False


def test_a_report_without_leaders_still_renders() -> None:
    empty = [{"period": "2026-W48", "weights_version": "2026.1", "leaders": [], "champions": []}]

    page = render_html(ReportData(history=empty, generated_at=GENERATED))

    assert "No leaders are configured" in page and "None this period." in page
    assert "<path" in svg_of(page)


def test_scores_follow_each_leader_across_periods_even_when_a_period_lacks_one() -> None:
    history = synthetic_history()[-3:]
    history[0] = {
        **history[0],
        "leaders": [lead for lead in history[0]["leaders"] if lead["name"] != "Jane Doe"],
    }

    series = score_series(history)

    assert list(series)[:1] == ["dana.chief@example.com"]  # the current period's order
    name, scores = series["jane.doe@example.com"]
    assert name == "Jane Doe" and scores[0] is None and scores[1:] == [s for s in scores[1:] if s is not None]


def test_period_labels() -> None:
    week = parse_period("2026-W48", "week")
    assert period_label(week.start, week.end, "week") == "23-29 Nov 2026"
    across = parse_period("2026-W49", "week")
    assert period_label(across.start, across.end, "week") == "30 Nov - 6 Dec 2026"
    day = parse_period("2026-11-26", "day")
    assert period_label(day.start, day.end, "day") == "26 Nov 2026"


# --- in a browser ----------------------------------------------------------------------------


def chromium_screenshot(page: Path, png: Path, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            "--window-size=1280,1800",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "HOME": str(profile)},
    )


def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    from PIL import Image

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = ARTIFACTS / "leader-report.html"
    page.write_text(render_html(synthetic_report()), encoding="utf-8")
    png = ARTIFACTS / "leader-report.png"
    png.unlink(missing_ok=True)

    result = chromium_screenshot(page, png, tmp_path / "profile")

    assert result.returncode == 0 and png.is_file(), result.stderr[-2000:]
    with Image.open(png) as shot:
        image = shot.convert("RGB")
    assert image.size == (1280, 1800)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the page is blank (a single colour, or nearly)"
    # The chart is drawn: its first line's colour (#0072B2) fills many pixels in the chart's band
    # of the page (below the header, above the tables), and the axis labels are dark.
    chart_band = image.crop((0, 180, 1280, 760))
    line = sum(n for n, c in chart_band.getcolors(1 << 20) or [] if _near(c, (0x00, 0x72, 0xB2)))
    assert line > 300, f"the chart's first line is not drawn ({line} pixels of its colour)"
    dark = sum(n for n, c in chart_band.getcolors(1 << 20) or [] if max(c) < 80)
    assert dark > 500, "the chart has no axes or labels"


def _near(colour: tuple[int, ...], target: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, target, strict=False))


# --- the command -----------------------------------------------------------------------------


def cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plugin", *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_command_writes_the_page_from_the_database(tmp_path: Path, sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    migrate.upgrade(engine)
    at = datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
    rows = [
        ("citation", "c1", "dana.chief@example.com", at, {}),
        ("report_view", "r1", "dana.chief@example.com", at, {}),
        ("report_view", "r0", "dana.chief@example.com", at - timedelta(days=14), {}),
        (
            "off_system_approval",
            "v1",
            "005DEMO00000004YDA",
            at,
            {
                "object": "Budget_Request__c",
                "record_id": "a0B5g00000DemoQAAS",
                "reason": "stage 'finance' has no decision",
            },
        ),
        (
            "off_system_approval",
            "v2",
            "005DEMO00000004YDA",
            at,
            {"object": "X__c", "record_id": "a1", "reason": "gone"},
        ),
    ]
    with begin_write(engine) as conn:
        conn.execute(
            facts.insert(),
            [
                {"kind": k, "fact_key": key, "person": p, "occurred_at": t, "data": d, "updated_at": t}
                for k, key, p, t, d in rows
            ],
        )
        conn.execute(sa.update(facts).where(facts.c.fact_key == "v2").values(retracted=True))  # withdrawn
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONRECORD_")}
    config = tmp_path / "onrecord.toml"
    config.write_text(f'var_dir = "{tmp_path}/var"\nsecrets_dir = "{tmp_path}/var/secrets"\n')
    leaders = [{"email": e, "name": n, "salesforce_id": s} for e, n, s in LEADERS]
    people = [{"name": n, "emails": [e], **({"salesforce_id": s} if s else {})} for e, n, s in LEADERS]
    env |= {
        "ONRECORD_CONFIG": str(config),
        "ONRECORD_STORAGE__URL": sqlite_url,
        "ONRECORD_LEADERS__USERS": json.dumps(leaders),
        "ONRECORD_DIRECTORY__PEOPLE": json.dumps(people),
        "PYTHONPATH": str(ROOT),
    }
    out = tmp_path / "out" / "report.html"

    result = cli(env, "report", "--html", str(out), "--period", "2026-W48", "--periods", "4")

    assert result.returncode == 0, result.stderr
    assert (
        f"wrote {out}: Leader Buy-In for 2026-W48 (4 leader(s), 4 period(s), 1 off-system approval(s))"
        in (result.stdout)
    )
    page = out.read_text(encoding="utf-8")
    assert "Signals in 2026-W48" in page and "23-29 Nov 2026" in page
    off = page[page.index("Off-system approvals in") :]
    assert "Jane Doe" in off and "a0B5g00000DemoQAAS" in off and "has no decision" in off
    assert "X__c" not in off  # a withdrawn one does not count
    assert "2026-W45" in page  # four periods, oldest first
    dana = re.search(r'<tr><td class="who">Dana Chief.*?</tr>', page, re.DOTALL)
    assert dana is not None and "<b>4.5</b>" in dana.group(0)  # a citation (4) and a report view (0.5)

    wrong = cli(env, "report", "--html", str(out), "--period", "2026-11-26")
    assert wrong.returncode == 2 and "--period" in wrong.stderr and "ISO week" in wrong.stderr
