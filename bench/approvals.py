"""Benchmark: form-only approvals through the real endpoints, worker and dispatcher (not a test).

The issue's benchmark: N requests, each a form response, two stage decisions and a status change,
on the default deployment -> verdicts per second, and the p99 time from a status change's receipt
to its verdict (outside the grace wait). Target: p99 <= 1 s.

OnRecord runs as shipped: `python -m plugin init`, then `python -m plugin serve` (gunicorn with
its default worker class and counts, the SQLite inbox writer, the rules worker and the dispatcher;
SQLite in WAL mode with synchronous=FULL; the dry-run CRM, since no Salesforce credentials are
given) in a temporary directory with its own var/ and configuration file, on a free loopback port.
The configuration governs two objects:

- `Budget_Request__c`: approval-governed, two stages (business strategy: Strategy Board; finance:
  Finance Approvers), `set_status = false`, the flow's connection user as the only status writer,
  grace 600 s; the people are in the directory.
- `Expense__c`: provenance only (not approval-governed): the baseline.

One request is one new record: the form (POST /hooks/power-automate/forms), the business-strategy
decision, the finance decision (POST /hooks/power-automate/approvals), then the status change to
Approved by the flow user (a Salesforce outbound message), sent in that order by one of
`--concurrency` client threads (a keep-alive session each). On Budget_Request__c, 9 requests in 10
have a proven chain (-> Verified) and every 10th has finance answer "Reject" (-> Blocked at once,
no grace wait); none ever waits for the grace window.

Two phases against the same server, minutes apart: first the baseline (the same four posts per
request on Expense__c), then the approvals load. After each, the script waits for the worker to
process every event and the dispatcher to send every write, then reads the database:

- receipt -> verdict: per `record.changed` event, `processed_at - received_at`. The worker marks an
  event done in the same transaction that stores the rule's verdict, but `processed_at` is the time
  its pass *started* (before it claimed its events), so this flatters OnRecord by up to a pass, and
  an event stored just after a pass started shows processed_at < received_at (counted). The upper
  bound beside it takes the start of the worker's next pass instead (which came after the commit;
  loose by up to the worker's poll interval when it was idle).
- verdicts/s: judged status changes / (last processed_at - first status change's received_at);
  for the baseline the same for its status changes ("changes/s"), and for all events ("events/s").
- verdicts: Verified and Blocked, from the rule's state and from the outbox writes of
  `OnRecord_Approval__c`; they must be exactly the planned split, else the run is wrong.
- the HTTP load: request sets (four posts each) acknowledged per second.

The client threads share the machine's cores with the server, as in the other benchmarks here.
Results are printed and saved as JSON in bench/out/approvals-<UTC timestamp>.json.

    .venv/bin/python bench/approvals.py [--requests 10000] [--concurrency 32] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors.salesforce.ids import to_18  # noqa: E402
from plugin.config import ServerConfig  # noqa: E402
from tests.connectors.power_automate.support import API_KEY  # noqa: E402
from tests.connectors.salesforce.outbound_messages import ORG_ID  # noqa: E402
from tests.e2e.approvals_org import OUTBOUND_TOKEN, Person, Senders, policies  # noqa: E402

APPROVALS = "Budget_Request__c"
BASELINE = "Expense__c"
PREFIX = {APPROVALS: "a0B5g", BASELINE: "a0E5g"}  # key prefixes of the made-up record ids
FLOW_USER = to_18("0055g00000FlowU")  # the approval flow's connection user
REQUESTER = Person("Alex Requester", "alex@contoso.com")
STRATEGY = Person("Vera Strategy", "vera@contoso.com", groups=("Strategy Board",))
FINANCE = Person("Casey Finance", "casey@contoso.com", groups=("Finance Approvers",))
WARMUP_OFFSET = 9_000_000_000  # warm-up records' numbers, apart from the measured ones
MAX_REQUESTS = 90_000  # the shared sender counter makes 6-digit notification ids: ~5 per request


def rejected(n: int) -> bool:
    """Every 10th request has finance reject: exactly 10 % when N is a multiple of 10."""
    return n % 10 == 9


# --- OnRecord as shipped, in its own directory -----------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for these plain values
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def configuration() -> dict[str, Any]:
    """What an admin would put in config/onrecord.toml for this org (no secrets)."""
    budget = next(p for p in policies(FLOW_USER) if p["object"] == APPROVALS)
    budget = {**budget, "set_status": False, "status_writers": [FLOW_USER], "grace_seconds": 600}
    return {
        "governed": [budget, {"object": BASELINE, "fields": ["Amount__c", "Status__c"]}],
        "salesforce": {"org_id": ORG_ID},
        "directory": {"people": [p.directory_entry() for p in (REQUESTER, STRATEGY, FINANCE)]},
    }


def write_config(path: Path) -> None:
    conf = configuration()
    lines = ["# written by bench/approvals.py; secrets come from the environment", ""]
    lines += [f"{k} = {toml_value(v)}" for k, v in conf.items() if not isinstance(v, dict)]
    for section, values in conf.items():
        if isinstance(values, dict):
            lines += ["", f"[{section}]", *(f"{k} = {toml_value(v)}" for k, v in values.items())]
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != json.loads(json.dumps(conf)):
        raise RuntimeError("the configuration did not survive TOML")
    path.write_text(text)


@dataclass
class OnRecord:
    """`python -m plugin serve` as shipped, in `home` (its var/ and database are there)."""

    home: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.home / "var" / "onrecord.db"  # the default storage.url, relative to home

    @property
    def log(self) -> Path:
        return self.home / "serve.log"

    @classmethod
    def create(cls, home: Path) -> OnRecord:
        port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ONRECORD_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "ONRECORD_CONFIG": str(home / "onrecord.toml"),
                "ONRECORD_POWER_AUTOMATE__API_KEY": API_KEY,
                "ONRECORD_SALESFORCE__OUTBOUND_TOKEN": OUTBOUND_TOKEN,
                "PORT": str(port),
            }
        )
        write_config(home / "onrecord.toml")
        init = subprocess.run(
            [sys.executable, "-m", "plugin", "init"], cwd=home, env=env, capture_output=True, text=True
        )
        (home / "init.log").write_text(init.stdout + init.stderr)
        if init.returncode != 0:
            raise RuntimeError(f"init failed:\n{init.stdout}{init.stderr}")
        return cls(home, port, env)

    def start(self) -> None:
        with open(self.log, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "plugin", "serve"],
                cwd=self.home,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited:\n{self.log.read_text(errors='replace')[-3000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        """SIGTERM the process group (gunicorn, inbox writer, rules worker); SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=45)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def problems(self) -> list[str]:
        """Lines of the server's log at ERROR or worse, and tracebacks."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            level = ""
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    entry = json.loads(line)
                    level = str(entry.get("levelname") or entry.get("level") or "").upper()
            if level in ("ERROR", "CRITICAL") or "Traceback" in line or "[ERROR]" in line:
                found.append(line[:500])
        return found


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the load ------------------------------------------------------------------------------------


def record_id(obj: str, n: int) -> str:
    return to_18(f"{PREFIX[obj]}{n:010d}")


def send_request(s: Senders, obj: str, n: int) -> list[str]:
    """One request's four posts, in order; the failures, if any."""
    rid = record_id(obj, n)
    now = datetime.now(UTC)
    t = now - timedelta(hours=1)
    finance = "Reject" if obj == APPROVALS and rejected(n) else "Approve"
    answers = [
        ("form", s.form(obj, rid, REQUESTER, t)),
        (
            "strategy",
            s.decision(obj, rid, "business strategy", [(STRATEGY, "Approve", t + timedelta(minutes=5))]),
        ),
        ("finance", s.decision(obj, rid, "finance", [(FINANCE, finance, t + timedelta(minutes=20))])),
        ("change", s.change(obj, rid, {"Amount__c": "125000.0", "Status__c": "Approved"}, FLOW_USER, now)),
    ]
    failures = []
    for what, resp in answers:
        if resp.status_code != 200 or (what == "change" and b"<Ack>true</Ack>" not in resp.content):
            failures.append(f"{obj} #{n} {what}: {resp.status_code} {resp.text[:200]!r}")
    return failures


@dataclass
class Load:
    requests: int
    seconds: float
    failures: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "posts": 4 * self.requests,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.requests / self.seconds, 1),
            "posts_per_s": round(4 * self.requests / self.seconds, 1),
            "failures": len(self.failures),
            "failure_examples": self.failures[:10],
        }


def run_load(url: str, obj: str, numbers: range, concurrency: int) -> Load:
    todo = iter(numbers)
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            s = Senders(url, session)
            while True:
                with lock:
                    n = next(todo, None)
                if n is None:
                    return
                try:
                    problems = send_request(s, obj, n)
                except requests.RequestException as exc:
                    problems = [f"{obj} #{n}: {type(exc).__name__}: {exc}"]
                if problems:
                    with lock:
                        failures.extend(problems)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Load(len(numbers), time.perf_counter() - started, failures)


# --- reading the results -------------------------------------------------------------------------


def connect(database: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def when(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)  # stored as naive UTC


def high_water(database: Path) -> int:
    with connect(database) as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM inbox").fetchone()[0])


def drain(database: Path, timeout: float) -> dict[str, Any]:
    """Wait until no inbox event is pending and no outbox write is pending; how long it took."""
    started = time.monotonic()
    while True:
        with connect(database) as conn:
            inbox_pending = conn.execute("SELECT count(*) FROM inbox WHERE status = 'pending'").fetchone()[0]
            outbox_pending = conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[
                0
            ]
        waited = time.monotonic() - started
        if inbox_pending == 0 and outbox_pending == 0:
            return {"drained": True, "waited_s": round(waited, 2)}
        if waited > timeout:
            return {
                "drained": False,
                "waited_s": round(waited, 2),
                "inbox_pending": inbox_pending,
                "outbox_pending": outbox_pending,
            }
        time.sleep(0.25)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def at(q: float) -> float:  # nearest rank
        return round(1000 * ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))], 1)

    return {
        "p50_ms": at(0.50),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def processing(database: Path, obj: str, after_id: int) -> dict[str, Any]:
    """Receipt-to-processed figures for one phase's events (inbox rows after `after_id`)."""
    with connect(database) as conn:
        rows = conn.execute(
            "SELECT kind, status, received_at, processed_at FROM inbox WHERE id > ? AND object = ?",
            (after_id, obj),
        ).fetchall()
        passes = sorted(
            when(r[0])
            for r in conn.execute(
                "SELECT DISTINCT processed_at FROM inbox WHERE id > ? AND processed_at IS NOT NULL",
                (after_id,),
            )
        )
    by_status = Counter(r[1] for r in rows)
    done = [(k, when(rec), when(proc)) for k, s, rec, proc in rows if s == "done" and proc]
    changes = [(rec, proc) for k, rec, proc in done if k == "record.changed"]
    latency = [(proc - rec).total_seconds() for rec, proc in changes]

    def next_pass(t: datetime) -> datetime | None:
        import bisect

        i = bisect.bisect_right(passes, t)
        return passes[i] if i < len(passes) else None

    bounded = [(nxt - rec).total_seconds() for rec, proc in changes if (nxt := next_pass(proc)) is not None]

    def rate(items: list[tuple[datetime, datetime]]) -> float | None:
        if not items:
            return None
        span = (max(p for _, p in items) - min(r for r, _ in items)).total_seconds()
        return round(len(items) / span, 1) if span > 0 else None

    return {
        "events": len(rows),
        "events_by_kind": dict(Counter(r[0] for r in rows)),
        "events_by_status": dict(by_status),
        "status_changes": len(changes),
        "receipt_to_processed": percentiles(latency),
        "negative_latencies": sum(1 for x in latency if x < 0),
        "receipt_to_next_pass_upper_bound": {**percentiles(bounded), "n": len(bounded)},
        "status_changes_per_s": rate(changes),
        "events_per_s": rate([(rec, proc) for _, rec, proc in done]),
    }


def verdicts(database: Path, numbers: range) -> dict[str, Any]:
    """Verified and Blocked, by the rule's state and by the outbox, for the phase's records."""
    wanted = {record_id(APPROVALS, n): n for n in numbers}
    state: Counter[str] = Counter()
    wrong: list[str] = []
    with connect(database) as conn:
        for key, value in conn.execute(
            "SELECT key, value FROM rule_state WHERE key LIKE ?", (f"approvals:{APPROVALS}/%",)
        ):
            rid = key.rsplit("/", 1)[1]
            if rid not in wanted:
                continue
            changes = json.loads(value).get("changes") or []
            verdict = changes[-1]["verdict"] if changes else "none"
            state[verdict] += 1
            expected = "Blocked" if rejected(wanted[rid]) else "Verified"
            if verdict != expected and len(wrong) < 10:
                wrong.append(f"{rid}: {verdict}, expected {expected}")
        written: Counter[str] = Counter()
        for rkey, payload in conn.execute(
            "SELECT record_key, payload FROM outbox WHERE object = ?", (APPROVALS,)
        ):
            if rkey in wanted:
                value = json.loads(payload).get("OnRecord_Approval__c")
                if value is not None:
                    written[value] += 1
        outbox_status = dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall())
    missing = len(wanted) - sum(state.values())
    return {
        "rule_state": dict(state),
        "records_without_state": missing,
        "outbox_writes": dict(written),
        "outbox_by_status": outbox_status,
        "wrong_examples": wrong,
    }


# --- the run -------------------------------------------------------------------------------------


def phase(server: OnRecord, obj: str, numbers: range, args: argparse.Namespace) -> dict[str, Any]:
    mark = high_water(server.database)
    print(f"{obj}: {len(numbers)} requests x 4 posts, {args.concurrency} client threads ...", flush=True)
    load = run_load(server.url, obj, numbers, args.concurrency)
    drained = drain(server.database, args.drain_timeout)
    result = {"object": obj, "load": load.figures(), "drain": drained}
    result["processing"] = processing(server.database, obj, mark)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000, help="requests (records) per phase")
    ap.add_argument("--concurrency", type=int, default=32, help="client threads")
    ap.add_argument("--warmup", type=int, default=50, help="unmeasured requests per object first")
    ap.add_argument("--drain-timeout", type=float, default=900.0, help="seconds to wait for the worker")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (var/, logs)")
    args = ap.parse_args()
    if not 0 < args.requests <= MAX_REQUESTS:
        ap.error(f"--requests must be 1..{MAX_REQUESTS}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    home = Path(tempfile.mkdtemp(prefix="onrecord-bench-approvals-"))
    server = OnRecord.create(home)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count()},
        "deployment": deployment(),
        "requests": args.requests,
        "concurrency": args.concurrency,
    }
    try:
        server.start()
        warm = range(WARMUP_OFFSET, WARMUP_OFFSET + args.warmup)
        for obj in (BASELINE, APPROVALS):
            warm_load = run_load(server.url, obj, warm, args.concurrency)
            if warm_load.failures:
                raise RuntimeError(f"warm-up failed: {warm_load.failures[:3]}")
        if not drain(server.database, args.drain_timeout)["drained"]:
            raise RuntimeError("the warm-up never drained")
        numbers = range(args.requests)
        results["baseline"] = phase(server, BASELINE, numbers, args)
        results["approvals"] = phase(server, APPROVALS, numbers, args)
        results["approvals"]["verdicts"] = verdicts(server.database, numbers)
    finally:
        server.stop()
        results["server_log_problems"] = server.problems()[:50]
        results["home"] = str(home) if args.keep else None
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    problems = judge(results, args.requests)
    results["valid"] = not problems
    results["problems"] = problems
    out = ROOT / "bench" / "out" / f"approvals-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    print(f"\nfull figures: {out.relative_to(ROOT)}")
    return 0 if not problems else 1


def deployment() -> dict[str, Any]:
    d = ServerConfig()
    return {
        "command": "python -m plugin init; python -m plugin serve",
        "gunicorn": f"{d.worker_class}, {d.workers} workers"
        + (
            f" x {d.threads} threads"
            if d.worker_class == "gthread"
            else f" x {d.worker_connections} connections"
        ),
        "worker": "one rules worker + dispatcher (serve's)",
        "storage": "SQLite WAL synchronous=FULL",
        "crm": "dry run",
    }


def judge(r: dict[str, Any], n: int) -> list[str]:
    """What makes the run invalid."""
    problems = []
    for name in ("baseline", "approvals"):
        p = r.get(name)
        if p is None:
            problems.append(f"{name}: did not run")
            continue
        if p["load"]["failures"]:
            problems.append(
                f"{name}: {p['load']['failures']} posts not acknowledged, "
                f"e.g. {p['load']['failure_examples'][:3]}"
            )
        if not p["drain"]["drained"]:
            problems.append(f"{name}: the worker did not drain: {p['drain']}")
        proc = p["processing"]
        if proc["status_changes"] != n:
            problems.append(f"{name}: {proc['status_changes']} status changes processed, {n} sent")
        if set(proc["events_by_status"]) - {"done"}:
            problems.append(f"{name}: events not done: {proc['events_by_status']}")
    v = r.get("approvals", {}).get("verdicts")
    if v is not None:
        blocked = sum(1 for i in range(n) if rejected(i))
        expected = {"Verified": n - blocked, "Blocked": blocked}
        if v["rule_state"] != expected:
            problems.append(f"verdicts in the rule state {v['rule_state']}, expected {expected}")
        if v["outbox_writes"] != expected:
            problems.append(f"OnRecord_Approval__c writes {v['outbox_writes']}, expected {expected}")
        if v["wrong_examples"]:
            problems.append(f"wrong verdicts, e.g. {v['wrong_examples'][:3]}")
    return problems


def report(r: dict[str, Any]) -> None:
    d = r["deployment"]
    print(
        f"\n{r['machine']['cores']} cores; {d['command']}: gunicorn {d['gunicorn']}, {d['worker']}, "
        f"{d['storage']}, {d['crm']} CRM; {r['concurrency']} client threads, 4 posts per request"
    )
    b, a = r.get("baseline"), r.get("approvals")
    if b is None or a is None:
        print("run incomplete")
    else:
        bp, ap_ = b["processing"], a["processing"]
        rows = [
            ("HTTP load: requests/s acknowledged (posts/s)", "load"),
            ("status change receipt -> processed p50 / p95 / p99 / max ms", "lat"),
            ("  of which processed_at < received_at", "negative"),
            ("  upper bound (next worker pass) p99 ms", "upper"),
            ("status changes judged/processed per s", "changes"),
            ("all events processed per s", "events"),
            ("worker + dispatcher drain after the load, s", "drain"),
        ]

        def cell(p: dict[str, Any], what: str) -> str:
            proc = p["processing"]
            if what == "load":
                return f"{p['load']['requests_per_s']:,.0f} ({p['load']['posts_per_s']:,.0f})"
            if what == "lat":
                q = proc["receipt_to_processed"]
                return f"{q['p50_ms']} / {q['p95_ms']} / {q['p99_ms']} / {q['max_ms']}"
            if what == "negative":
                return f"{proc['negative_latencies']} of {proc['status_changes']}"
            if what == "upper":
                return str(proc["receipt_to_next_pass_upper_bound"]["p99_ms"])
            if what == "changes":
                return str(proc["status_changes_per_s"])
            if what == "events":
                return str(proc["events_per_s"])
            return str(p["drain"]["waited_s"])

        print(f"\n| measured | baseline ({BASELINE}, provenance only) | approvals ({APPROVALS}) |")
        print("| --- | ---: | ---: |")
        for label, what in rows:
            print(f"| {label} | {cell(b, what)} | {cell(a, what)} |")
        v = a.get("verdicts", {})
        print(
            f"\nverdicts (rule state): {v.get('rule_state')}; "
            f"OnRecord_Approval__c writes: {v.get('outbox_writes')}"
        )
        p99a, p99b = ap_["receipt_to_processed"]["p99_ms"], bp["receipt_to_processed"]["p99_ms"]
        ra, rb = ap_["status_changes_per_s"], bp["status_changes_per_s"]
        if p99a is not None and p99b:
            print(f"approvals / baseline: p99 x{p99a / p99b:.2f}", end="")
        if ra and rb:
            print(f", verdicts/s vs changes/s x{ra / rb:.2f}", end="")
        print()
        if p99a is not None:
            verdict = "meets" if p99a <= 1000 else "misses"
            print(f"approvals p99 receipt -> verdict {p99a:.0f} ms: {verdict} the target (<= 1000 ms)")
    if r["server_log_problems"]:
        print(
            f"\nserver log: {len(r['server_log_problems'])} error lines, e.g. {r['server_log_problems'][0]}"
        )
    if r["problems"]:
        print("\nRUN INVALID:")
        for p in r["problems"]:
            print(f"  - {p}")


if __name__ == "__main__":
    sys.exit(main())
