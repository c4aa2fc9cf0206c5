"""The Leader Buy-In report: one self-contained HTML page an admin pastes into a leadership slide.

    python -m plugin report --html FILE [--period P] [--periods 12]

What it shows: each leader's score per period over the last periods (a line chart), this
period's signals per kind (a table), the champion candidates, and the period's off-system
approvals with who gave them, on which record and why.

`gather` reads it all (the leaders' figures from `plugin.leaders`, the off-system approvals
from the facts table and the approvals rule's state); `render_html` turns it into the page and
touches nothing else, so it can be tested with hand-built data. The chart is drawn server-side
by matplotlib (the Agg canvas, saved as SVG with its text as paths) and inlined: the page loads
no script, font, stylesheet or image from anywhere, and prints as it shows. Every value from the
data is escaped.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from plugin.config import DEFAULT_WEIGHTS, SIGNAL_KINDS, Config
from plugin.directory import Directory

# How each signal kind is named on the page, in the order of the table.
KIND_LABELS: dict[str, str] = {
    "login": "Logins",
    "record_touched": "Records touched",
    "form_approval": "Form approvals",
    "off_system_approval": "Off-system approvals",
    "training": "Trainings",
    "citation": "Citations",
    "report_view": "Report views",
    "dashboard_view": "Dashboard views",
}
# Line colours (Okabe-Ito: told apart by people with colour-vision deficiencies, and in grey print).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")


@dataclass(frozen=True)
class OffSystemApproval:
    """An approval given outside the form, as the report lists it."""

    who: str  # the identifier OnRecord saw (CRM user id, e-mail)
    who_name: str
    object: str
    record_id: str
    occurred_at: datetime
    why: str  # the reason in words


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows. `history` holds GET /api/leaders bodies, oldest first; the last
    one is the report's period."""

    history: Sequence[Mapping[str, Any]]
    off_system: Sequence[OffSystemApproval] = ()
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    period_label: str = ""  # e.g. "23-29 Nov 2026"; empty: the period's name alone

    @property
    def current(self) -> Mapping[str, Any]:
        """The report's period (the last of the history)."""
        return self.history[-1] if self.history else {"period": "", "leaders": [], "champions": []}


# --- gathering -----------------------------------------------------------------------------------


def gather(engine: Engine, config: Config, period: str | None = None, periods: int = 12) -> ReportData:
    """The report's data from the database: the leaders' figures for the `periods` periods ending
    with `period` (default: the current one), and that period's off-system approvals. A malformed
    period raises plugin.leaders.PeriodError (a ValueError) saying why."""
    from plugin.directory_store import load_directory
    from plugin.leaders import compute_periods, current_period, last_periods, parse_period

    kind = config.leaders.period
    directory = load_directory(engine, config)
    end = current_period(config) if period is None else parse_period(period, kind)
    wanted = last_periods(end, max(periods, 1))
    history = [s.to_json() for s in compute_periods(engine, config, wanted, directory=directory)]
    return ReportData(
        history=history,
        off_system=off_system_approvals(engine, config, end.start, end.end, directory),
        weights=dict(config.leaders.weights),
        period_label=period_label(end.start, end.end, kind),
    )


def period_label(start: datetime, end: datetime, kind: str) -> str:
    """A period's days in words: "23-29 Nov 2026" for a week, "26 Nov 2026" for a day."""
    if kind == "day":
        return f"{start.day} {start:%b %Y}"
    last = end - timedelta(days=1)
    if start.month == last.month:
        return f"{start.day}-{last.day} {last:%b %Y}"
    if start.year == last.year:
        return f"{start.day} {start:%b} - {last.day} {last:%b %Y}"
    return f"{start.day} {start:%b %Y} - {last.day} {last:%b %Y}"


def off_system_approvals(
    engine: Engine, config: Config, start: datetime, end: datetime, directory: Directory | None = None
) -> list[OffSystemApproval]:
    """The off-system approvals that happened in [start, end) and still stand (not withdrawn),
    oldest first, each with the actor's name and the reason in words."""
    from plugin.approvals_view import read
    from plugin.directory_store import load_directory
    from plugin.rules.approvals import violation_key
    from plugin.storage import facts

    directory = directory if directory is not None else load_directory(engine, config)
    found: list[OffSystemApproval] = []
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(facts.c.fact_key, facts.c.person, facts.c.occurred_at, facts.c.data)
            .where(
                facts.c.kind == "off_system_approval",
                facts.c.retracted == sa.false(),
                facts.c.occurred_at >= start,
                facts.c.occurred_at < end,
            )
            .order_by(facts.c.occurred_at, facts.c.id)
        ).all()
        for key, person, occurred_at, data in rows:
            data = data if isinstance(data, Mapping) else {}
            obj, record_id = str(data.get("object") or ""), str(data.get("record_id") or "")
            why = str(data.get("reason") or "")
            state = read(conn, obj, record_id) if obj and record_id else None
            if state is not None:  # the note the record carries says it in a whole sentence
                last = state.get("last") or {}
                change = next(
                    (c for c in state.get("changes", []) if violation_key(obj, record_id, c["id"]) == key),
                    None,
                )
                if change is not None and last.get("change") == change["id"] and last.get("note"):
                    why = str(last["note"])
            found.append(
                OffSystemApproval(
                    who=person,
                    who_name=directory.name_of(person),
                    object=obj,
                    record_id=record_id,
                    occurred_at=occurred_at,
                    why=why or "no reason recorded",
                )
            )
    return found


# --- the chart -------------------------------------------------------------------------------------


def leader_key(leader: Mapping[str, Any]) -> str:
    """What identifies a leader across periods."""
    return str(leader.get("email") or leader.get("salesforce_id") or leader.get("name") or "")


def leader_name(leader: Mapping[str, Any]) -> str:
    """How a leader is named on the page."""
    return str(leader.get("name") or leader.get("email") or leader.get("salesforce_id") or "(unnamed)")


def score_series(history: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, list[float | None]]]:
    """Per leader (in the current period's order, then any others): their name and their score in
    each period of the history (None where the period does not list them)."""
    order: dict[str, str] = {}
    for snapshot in reversed(history):
        for leader in snapshot.get("leaders", []):
            order.setdefault(leader_key(leader), leader_name(leader))
    series: dict[str, tuple[str, list[float | None]]] = {}
    for key, name in order.items():
        scores: list[float | None] = []
        for snapshot in history:
            found = next((lead for lead in snapshot.get("leaders", []) if leader_key(lead) == key), None)
            scores.append(_number(found.get("score")) if found is not None else None)
        series[key] = (name, scores)
    return series


def _number(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


_SVG_PROLOGUE = re.compile(r"^.*?(?=<svg\b)", re.DOTALL)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)


def score_chart_svg(history: Sequence[Mapping[str, Any]]) -> str:
    """Each leader's score per period as an inline SVG (a line per leader, the report's period
    shaded), drawn by matplotlib on the Agg canvas; text is drawn as paths, so no font is needed."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    periods = [str(s.get("period", "")) for s in history]
    series = score_series(history)
    with matplotlib.rc_context(
        {
            "svg.fonttype": "path",
            "svg.hashsalt": "onrecord-leader-report",  # stable ids: the same data, the same page
            "font.family": "DejaVu Sans",  # shipped with matplotlib
            "font.size": 10,
            "text.parse_math": False,  # names are shown as written: a "$" starts no formula
        }
    ):
        figure = Figure(figsize=(11.0, 4.2), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        x = list(range(len(periods)))
        for index, (name, scores) in enumerate(series.values()):
            color = PALETTE[index % len(PALETTE)]
            values = [float("nan") if s is None else s for s in scores]
            axes.plot(x, values, marker="o", markersize=4, linewidth=2, color=color, label=name)
        if periods:
            axes.axvspan(len(periods) - 1.5, len(periods) - 0.5, color="#EEF3F8", zorder=0)
        if not series:
            axes.text(0.5, 0.5, "No leaders configured", ha="center", va="center", transform=axes.transAxes)
        axes.set_xticks(x, periods, rotation=30 if len(periods) > 6 else 0, ha="right")
        axes.set_xlim(-0.5, max(len(periods) - 0.5, 0.5))
        axes.set_ylabel("Buy-in score")
        axes.axhline(0, color="#888888", linewidth=0.8)
        axes.grid(axis="y", color="#DDDDDD", linewidth=0.8)
        axes.spines[["top", "right"]].set_visible(False)
        if series:
            figure.legend(loc="outside upper center", ncols=min(len(series), 5), frameon=False)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = _SVG_PROLOGUE.sub("", buffer.getvalue(), count=1)
    svg = _SVG_METADATA.sub("", svg, count=1)  # RDF about the file: namespace URLs, no use here
    return svg.replace("<svg ", '<svg role="img" aria-label="Buy-in score per leader and period" ', 1)


# --- the page ----------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _score(value: Any) -> str:
    number = _number(value)
    return "&ndash;" if number is None else f"{number:,.1f}"


def _trend(value: Any) -> str:
    number = _number(value)
    if number is None:
        return '<span class="muted">new</span>' if value is None else _e(value)
    if abs(number) < 0.05:
        return '<span class="muted">&#9644; 0.0</span>'
    arrow, css = ("&#9650;", "up") if number > 0 else ("&#9660;", "down")
    return f'<span class="{css}">{arrow} {abs(number):,.1f}</span>'


def _count(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "&ndash;"
    return f"{int(number):,}" if number == int(number) else f"{number:,.1f}"


CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #FFFFFF; color: #1B1F24;
  font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.page { max-width: 1180px; margin: 0 auto; padding: 28px 32px 24px; }
header { display: flex; justify-content: space-between; align-items: flex-end;
  border-bottom: 3px solid #0072B2; padding-bottom: 10px; margin-bottom: 16px; }
h1 { margin: 0; font-size: 28px; letter-spacing: -0.01em; }
h2 { margin: 0 0 8px; font-size: 16px; text-transform: uppercase; letter-spacing: 0.04em; color: #3D4854; }
.sub { margin: 2px 0 0; color: #55606B; }
.stamp { text-align: right; color: #55606B; font-size: 12px; }
.kpis { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; margin-bottom: 16px; }
.kpi { border: 1px solid #D8DEE4; border-radius: 6px; padding: 10px 14px; }
.kpi b { display: block; font-size: 24px; }
.kpi span { color: #55606B; font-size: 12px; }
section { margin-bottom: 18px; break-inside: avoid; page-break-inside: avoid; }
figure { margin: 0; }
figure svg { width: 100%; height: auto; display: block; }
.cols { display: grid; grid-template-columns: 3fr 1fr; gap: 20px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 5px 8px; border-bottom: 1px solid #E3E7EB; text-align: left; vertical-align: top; }
th { background: #F3F5F7; font-weight: 600; font-size: 12px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.n, td.who { white-space: nowrap; }
td.neg { color: #B3261E; font-weight: 600; }
.up { color: #1A7F37; } .down { color: #B3261E; } .muted { color: #6E7781; }
.champ { color: #9A6700; font-weight: 600; }
ul.champions { margin: 0; padding-left: 18px; }
ul.champions li { margin-bottom: 6px; }
.why { max-width: 560px; }
.empty { color: #55606B; font-style: italic; }
footer { border-top: 1px solid #D8DEE4; padding-top: 8px; color: #55606B; font-size: 11px; }
@page { size: A4 landscape; margin: 10mm; }
@media print {
  body { font-size: 11px; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  .page { max-width: none; padding: 0; }
  table { font-size: 10px; }
}
"""


def render_html(data: ReportData) -> str:
    """The whole page: inline CSS and SVG, nothing fetched when it opens."""
    current = data.current
    period = str(current.get("period", ""))
    leaders: list[Mapping[str, Any]] = list(current.get("leaders", []))
    kinds = [k for k in SIGNAL_KINDS if k in KIND_LABELS]
    champions = _champions(current, leaders)
    scores = [s for s in (_number(lead.get("score")) for lead in leaders) if s is not None]
    average = sum(scores) / len(scores) if scores else None
    when = f"{_e(period)}" + (f" &middot; {_e(data.period_label)}" if data.period_label else "")
    weights_version = current.get("weights_version", "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Nothing may be fetched: no scripts, fonts, images or stylesheets from anywhere.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>Leader Buy-In &mdash; {_e(period)}</title>",
        f'<style>{CSS}</style></head><body><main class="page">',
        "<header><div><h1>Leader Buy-In</h1>",
        '<p class="sub">How much our leaders use the system, as OnRecord counted it &mdash; '
        f"{when}</p></div>",
        f'<div class="stamp">weights {_e(weights_version)}<br>generated '
        f"{_e(data.generated_at.astimezone(UTC).strftime('%Y-%m-%d %H:%M'))} UTC</div></header>",
        '<div class="kpis">',
        _kpi(str(len(leaders)), "leaders measured"),
        _kpi(_score(average), "average score this period"),
        _kpi(str(len(champions)), "champion candidates"),
        _kpi(str(len(data.off_system)), "off-system approvals this period"),
        "</div>",
        f"<section><h2>Score per period, last {len(data.history)}</h2>",
        f'<figure class="chart">{score_chart_svg(data.history)}</figure></section>',
        '<div class="cols">',
        _signals_table(period, leaders, kinds, champions),
        _champions_list(champions, leaders),
        "</div>",
        _off_system_table(period, data.off_system),
        _footer(data.weights, weights_version),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _kpi(value: str, label: str) -> str:
    return f'<div class="kpi"><b>{value}</b><span>{_e(label)}</span></div>'


def _champions(current: Mapping[str, Any], leaders: Sequence[Mapping[str, Any]]) -> list[str]:
    listed = [str(c) for c in current.get("champions", [])]
    flagged = [leader_key(lead) for lead in leaders if lead.get("champion_candidate")]
    return list(dict.fromkeys([*listed, *flagged]))


def _find(leaders: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any] | None:
    return next(
        (lead for lead in leaders if key in (leader_key(lead), lead.get("email"), lead.get("salesforce_id"))),
        None,
    )


def _signals_table(
    period: str, leaders: Sequence[Mapping[str, Any]], kinds: Sequence[str], champions: Sequence[str]
) -> str:
    head = "".join(f'<th class="n">{_e(KIND_LABELS[k])}</th>' for k in kinds)
    rows = []
    ranked = sorted(leaders, key=lambda lead: -(_number(lead.get("score")) or 0.0))
    for lead in ranked:
        counts = lead.get("counts") or {}
        cells = []
        for kind in kinds:
            value = counts.get(kind, 0)
            negative = kind == "off_system_approval" and (_number(value) or 0) > 0
            cells.append(f'<td class="n{" neg" if negative else ""}">{_count(value)}</td>')
        star = (
            ' <span class="champ" title="champion candidate">&#9733;</span>'
            if leader_key(lead) in champions or lead.get("email") in champions
            else ""
        )
        rows.append(
            f'<tr><td class="who">{_e(leader_name(lead))}{star}</td>{"".join(cells)}'
            f'<td class="n"><b>{_score(lead.get("score"))}</b></td>'
            f'<td class="n">{_trend(lead.get("trend"))}</td></tr>'
        )
    if not rows:
        width = len(kinds) + 3
        rows.append(
            f'<tr><td colspan="{width}" class="empty">No leaders are configured ([leaders] users).</td></tr>'
        )
    return (
        f"<section><h2>Signals in {_e(period)}</h2><table><thead><tr><th>Leader</th>{head}"
        '<th class="n">Score</th><th class="n">Trend</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _champions_list(champions: Sequence[str], leaders: Sequence[Mapping[str, Any]]) -> str:
    items = []
    for key in champions:
        lead = _find(leaders, key)
        name = leader_name(lead) if lead is not None else key
        score = _score(lead.get("score")) if lead is not None else "&ndash;"
        items.append(
            f'<li><span class="champ">&#9733; {_e(name)}</span><br>'
            f'<span class="muted">score {score}</span></li>'
        )
    body = (
        f'<ul class="champions">{"".join(items)}</ul>' if items else '<p class="empty">None this period.</p>'
    )
    return f"<section><h2>Champion candidates</h2>{body}</section>"


def _off_system_table(period: str, approvals: Sequence[OffSystemApproval]) -> str:
    rows = [
        f"<tr><td>{_e(a.who_name)}</td><td>{_e(a.object)} {_e(a.record_id)}</td>"
        f"<td>{_e(a.occurred_at.astimezone(UTC).strftime('%d %b %H:%M'))} UTC</td>"
        f'<td class="why">{_e(a.why)}</td></tr>'
        for a in approvals
    ]
    if not rows:
        return (
            f"<section><h2>Off-system approvals in {_e(period)}</h2>"
            '<p class="empty">None: every approval this period went through the form.</p></section>'
        )
    return (
        f"<section><h2>Off-system approvals in {_e(period)}</h2><table><thead><tr><th>Who</th>"
        "<th>Record</th><th>When</th><th>Why it did not count</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _footer(weights: Mapping[str, float], version: Any) -> str:
    points = ", ".join(
        f"{_e(KIND_LABELS.get(kind, kind).lower())} {weight:+g}" for kind, weight in weights.items() if weight
    )
    return (
        f"<footer>Score = the sum of each signal times its weight (weights {_e(version)}: {points}). "
        "Signals are counted from the CRM, the official forms and approvals, trainings and citations; "
        "an approval given outside the form counts against its giver. Made by OnRecord.</footer>"
    )


def write_report(path: str, data: ReportData) -> None:
    """Write the page to `path` (UTF-8)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(data))
