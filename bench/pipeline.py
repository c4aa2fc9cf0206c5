"""Benchmark: the whole pipeline of the default deployment, end to end, in one run (not a test).

OnRecord runs exactly as `make run` starts it: `python -m plugin init` (which writes
config/onrecord.toml from the example, governing Opportunity, and generates the development
secrets), then `python -m plugin serve` (gunicorn with its default worker class and counts, the
SQLite inbox writer, the rules worker and the dispatcher, SQLite WAL synchronous=FULL, the dry-run
CRM), in a temporary directory with its own config/ and var/, on a free loopback port. The events
are distinct `record.changed` events of distinct Opportunity records, each a real change of the
governed fields, signed with the events secret that init generated, sent by wrk (bench/post.lua).

First, while OnRecord is not even started, the bare Flask endpoint (bench/bare_app.py) under
gunicorn with the same settings is measured as bench/receive.py measures it (its `run_pair`):
2 s warm-up, saturation for `--seconds` (32 connections), paced at about `--rate` requests/s.

Then OnRecord, its rules worker and dispatcher running throughout, the same warm-up, and after
each phase a wait until the worker and dispatcher have drained (nothing pending in the inbox or
the outbox):

(a) saturation, as the bare endpoint -> acknowledged requests/s and p99, ratio to bare (>= 0.5);
(b) paced at about `--rate` requests/s -> p99 acknowledgement latency (<= 25 ms), the worker
    processing these same events as they arrive;
(d) for the events of (b): per event, the outbox `sent_at` of its provenance write to the dry-run
    CRM (the outbox row to a CRM, not a notification, whose `event_id` is the inbox id) minus the
    inbox `received_at` -> p99 (<= 2 s). `received_at` is taken when the request is handed to the
    inbox, before its commit and the acknowledgement, so this is an upper bound of
    acknowledgement-to-write;
(c) sustained: wrk at a fixed rate (bench/paced.lua: a schedule of send times, so the rate holds
    whatever the response time) for `--sustain-seconds` (>= 30 s for a valid figure) -> events
    whose provenance write was *sent within the load window*, per second (writes of events still
    queued when the window closes are not counted), ratio to bare saturation (>= 0.3). The rate is
    `--sustain-rate`, or by default about what the pipeline sustains: if (a) left a backlog, the
    rate at which the worker alone drained it (at most what (a) acknowledged), else what (a)
    acknowledged. The backlog when the window closes is shown: a large one means the offered rate
    was above what the pipeline sustains (the figure is then the pipeline's, not the offer's).

(b) uses bench/receive.py's pacing (a think time per connection), as for the bare endpoint: if
OnRecord answers slowly, the rate reached is lower than `--rate`, and the report says so.

Worker CPU per event: utime + stime of the rules-worker process (serve's child running
`plugin worker`, which also runs the dispatcher and the jobs) from /proc/<pid>/stat, from the start
of a phase until it drained, divided by the phase's events; the other processes of serve's group
(gunicorn's workers, the inbox writer) likewise. Breakdown: py-spy (if installed: `pip install
py-spy`) records the worker for `--profile-seconds` during an extra phase at the sustained rate, so
that its sampling perturbs none of the figures above.

This is the end-to-end benchmark; bench/receive.py is the receive-only one (the HTTP path alone).
Results are printed and saved as JSON in bench/out/pipeline-<UTC timestamp>.json.

    .venv/bin/python bench/pipeline.py [--seconds 10] [--rate 1000] [--sustain-seconds 30]
        [--sustain-rate N] [--profile-seconds 10] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.approvals import OnRecord, connect, drain, percentiles, when  # noqa: E402
from bench.receive import PATH, free_port, parse_wrk, run_pair, stop, wrk  # noqa: E402
from plugin.config import ServerConfig  # noqa: E402
from plugin.signatures import sign  # noqa: E402

defaults = ServerConfig()
WRK_THREADS = 2
PACED_CONNECTIONS = 50  # as bench/receive.py's paced run
SUSTAIN_CONNECTIONS = 100  # (c) at a fixed rate: enough for the rate x the response time
SATURATION_EVENTS_PER_S = 20_000  # events written per second of saturation (receive.py's figure)
TICK = os.sysconf("SC_CLK_TCK")
ACTOR = "0055g00000AbCdE"  # who changed the records: a person, not OnRecord's integration user


# --- OnRecord as `make run` starts it ------------------------------------------------------------


def shipped(home: Path) -> tuple[OnRecord, Events]:
    """`python -m plugin init` in `home` as on a fresh checkout; the server, and events it takes."""
    (home / "config").mkdir(parents=True)
    shutil.copy(ROOT / "config" / "onrecord.example.toml", home / "config" / "onrecord.example.toml")
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ONRECORD_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update({"PYTHONPATH": str(ROOT), "PORT": str(port)})
    init = subprocess.run(
        [sys.executable, "-m", "plugin", "init"], cwd=home, env=env, capture_output=True, text=True
    )
    (home / "init.log").write_text(init.stdout + init.stderr)  # holds the generated secrets
    if init.returncode != 0:
        raise RuntimeError(f"init failed:\n{init.stdout}{init.stderr}")
    conf = tomllib.loads((home / "config" / "onrecord.toml").read_text())
    opportunity = next((g for g in conf.get("governed", []) if g.get("object") == "Opportunity"), None)
    if opportunity is None or "Amount" not in opportunity.get("fields", []):
        raise RuntimeError(f"init's configuration does not govern Opportunity.Amount: {conf.get('governed')}")
    if conf.get("salesforce", {}).get("integration_user_id") == ACTOR:
        raise RuntimeError("the events' actor is the integration user: the rule would ignore them")
    secret = (home / "var" / "secrets" / "salesforce.events_secret").read_text().strip()
    org_id = conf.get("salesforce", {}).get("org_id") or "00D5g000004XyZa"  # the configured org, if any
    return OnRecord(home, port, env), Events(secret, org_id)


def stop_group(server: OnRecord) -> None:
    """Stop serve's whole process group; SIGKILL whatever is left of it."""
    server.stop()
    if server.proc is None:
        return
    pgid = server.proc.pid
    deadline = time.monotonic() + 10
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_pids(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


# --- processes and their CPU ---------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, pgrp, utime + stime in seconds) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
    return int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / TICK


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := proc_stat(int(entry))) is not None and st[1] == pgid:
            pids.append(int(entry))
    return pids


def role(pid: int, leader: int) -> str:
    if pid == leader:
        return "serve (gunicorn arbiter)"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if b"inbox-writer" in argv:
        return "inbox writer"
    if argv[1:4] == [b"-m", b"plugin", b"worker"]:
        return "rules worker"
    return "gunicorn workers"


def group_cpu(leader: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process in serve's group, by pid, with its role."""
    out = {}
    for pid in group_pids(leader):
        st = proc_stat(pid)
        if st is not None:
            out[pid] = (role(pid, leader), st[2])
    return out


def worker_pid(leader: int) -> int:
    pids = [pid for pid, (r, _) in group_cpu(leader).items() if r == "rules worker"]
    if len(pids) != 1:
        raise RuntimeError(f"expected one rules worker in serve's group, found {pids}")
    return pids[0]


def cpu_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    used: dict[str, float] = {}
    for pid, (r, seconds) in after.items():
        used[r] = used.get(r, 0.0) + seconds - before.get(pid, (r, 0.0))[1]
    return used


# --- the events ----------------------------------------------------------------------------------


class Events:
    """Distinct signed events of distinct records, numbered across the whole run.

    Like bench/receive.py's write_events (same line format, read by bench/post.lua), but numbered
    on from phase to phase and signed with init's secret: a record seen again with the values it
    already has is no change, and would make no provenance write.
    """

    def __init__(self, secret: str, org_id: str) -> None:
        self.secret = secret
        self.org_id = org_id
        self.next = 0

    def write(self, prefix: Path, count: int) -> None:
        now = int(time.time())
        files = [open(f"{prefix}{t}", "w") for t in range(WRK_THREADS)]  # noqa: SIM115
        try:
            for i in range(self.next, self.next + count):
                body = json.dumps(
                    {
                        "id": f"evt-pipeline-{i}",
                        "type": "record.changed",
                        "occurred_at": "2026-11-26T10:00:00Z",
                        "org_id": self.org_id,
                        "object": "Opportunity",
                        "record": {
                            "Id": f"0065g{i:010d}",
                            "LastModifiedById": ACTOR,
                            "SystemModstamp": "2026-11-26T10:00:00Z",
                            "Amount": 120000 + i,
                            "StageName": "Negotiation/Review",
                            "CloseDate": "2026-12-31",
                        },
                    },
                    separators=(",", ":"),
                )
                wid = f"msg_pipeline_{i}"
                files[i % WRK_THREADS].write(
                    f"{wid}\t{now}\t{sign(self.secret, wid, now, body.encode())}\t{body}\n"
                )
        finally:
            for f in files:
                f.close()
        self.next += count


def paced_delay(rate: float) -> int:
    # bench/receive.py's pacing: a fixed think time per connection, less ~4 ms for the response.
    return max(1, round(PACED_CONNECTIONS * 1000 / rate) - 4)


def wrk_at_rate(url: str, files: Path, *, rate: float, seconds: int, connections: int) -> dict[str, Any]:
    """wrk at a fixed rate (bench/paced.lua), however long the responses take; as receive.wrk."""
    env = {
        **os.environ,
        "ONRECORD_BENCH_FILES": str(files),
        "ONRECORD_BENCH_POST": str(ROOT / "bench" / "post.lua"),
        "ONRECORD_BENCH_THREAD_RATE": str(rate / WRK_THREADS),
    }
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["-s", str(ROOT / "bench" / "paced.lua"), url]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


# --- reading the database ------------------------------------------------------------------------


def high_water(database: Path) -> int:
    with connect(database) as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM inbox").fetchone()[0])


def pipeline_figures(
    database: Path, after_id: int, upto_id: int, t0: datetime, t1: datetime
) -> dict[str, Any]:
    """The phase's events (inbox ids in (after_id, upto_id]) and their provenance writes."""
    with connect(database) as conn:
        events = conn.execute(
            "SELECT id, received_at, status FROM inbox WHERE id > ? AND id <= ?", (after_id, upto_id)
        ).fetchall()
        writes = dict(
            conn.execute(
                "SELECT event_id, max(sent_at) FROM outbox WHERE target <> 'notification' AND event_id > ? "
                "AND event_id <= ? GROUP BY event_id HAVING count(*) = count(sent_at)",
                (after_id, upto_id),
            ).fetchall()
        )
    received = {eid: when(rec) for eid, rec, _ in events}
    sent = {eid: when(s) for eid, s in writes.items() if s is not None and eid in received}
    latency = [(sent[e] - received[e]).total_seconds() for e in sent]
    window = (t1 - t0).total_seconds()
    in_window = sorted(s for s in sent.values() if t0 <= s <= t1)
    per_second = Counter(int((s - t0).total_seconds()) for s in in_window)
    after = [s for s in sent.values() if s > t1]
    last = max(sent.values(), default=None)
    drain_span = (last - t1).total_seconds() if last is not None and after else 0.0
    return {
        "events": len(events),
        "events_by_status": dict(Counter(s for _, _, s in events)),
        "written": len(sent),
        "not_written": len(events) - len(sent),
        "ack_to_write": percentiles(latency),
        "window_s": round(window, 3),
        "written_in_window": len(in_window),
        "written_per_s_in_window": round(len(in_window) / window, 1) if window > 0 else None,
        "written_each_second": [per_second.get(s, 0) for s in range(int(window) + 1)],
        "backlog_at_window_end": sum(
            1 for e, r in received.items() if r <= t1 and not (e in sent and sent[e] <= t1)
        ),
        "written_after_window": len(after),
        "drain_after_window_s": round(drain_span, 2),
        "drain_written_per_s": round(len(after) / drain_span, 1) if drain_span > 1 else None,
    }


# --- the phases ----------------------------------------------------------------------------------


def load_phase(
    name: str,
    server: OnRecord,
    events: Events,
    tmp: Path,
    *,
    seconds: int,
    connections: int,
    count: int,
    drain_timeout: float,
    delay_ms: int = 0,
    rate: float | None = None,
) -> dict[str, Any]:
    """One wrk load against OnRecord, then wait for the pipeline to drain; what happened.

    The load: `rate` requests/s (bench/paced.lua) if given, else each connection sends, waits
    for the answer and `delay_ms` more (bench/post.lua; 0: saturation).
    """
    assert server.proc is not None
    files = tmp / f"{name}-"
    events.write(files, count)
    mark = high_water(server.database)
    how = f"{rate:.0f} req/s" if rate else f"delay {delay_ms} ms"
    print(f"{name}: {seconds} s, {connections} connections, {how} ...", flush=True)
    cpu0 = group_cpu(server.proc.pid)
    t0 = datetime.now(UTC)
    url = server.url + PATH
    if rate:
        load = wrk_at_rate(url, files, rate=rate, seconds=seconds, connections=connections)
    else:
        load = wrk(
            url, files, threads=WRK_THREADS, connections=connections, seconds=seconds, delay_ms=delay_ms
        )
    t1 = datetime.now(UTC)
    drained = drain(server.database, drain_timeout)
    cpu1 = group_cpu(server.proc.pid)
    upto = high_water(server.database)
    result: dict[str, Any] = {"wrk": load, "events_in_files": count, "drain": drained}
    result["pipeline"] = pipeline_figures(server.database, mark, upto, t0, t1)
    n = result["pipeline"]["events"]
    used = cpu_used(cpu0, cpu1)
    result["cpu_s"] = {k: round(v, 3) for k, v in used.items()}
    result["cpu_ms_per_event"] = {k: round(1000 * v / n, 3) for k, v in used.items()} if n else {}
    return result


def profile_phase(
    server: OnRecord, events: Events, tmp: Path, rate: float, seconds: int, out: Path
) -> dict[str, Any]:
    """py-spy on the rules worker for `seconds` while wrk sends at `rate`; the summary."""
    assert server.proc is not None
    spy = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if spy is None:
        return {"available": False, "why": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    pid = worker_pid(server.proc.pid)
    files = tmp / "profile-"
    events.write(files, int(1.2 * rate * (seconds + 2)) + 1000)
    raw = tmp / "pyspy.txt"
    print(
        f"profile: py-spy on the rules worker (pid {pid}) for {seconds} s at ~{rate:.0f} req/s ...",
        flush=True,
    )
    spy_command = [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"]
    spy_command += ["--format", "raw", "--output", str(raw)]
    with open(tmp / "pyspy.log", "wb") as log:
        spy_proc = subprocess.Popen(spy_command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wrk_at_rate(server.url + PATH, files, rate=rate, seconds=seconds + 2, connections=SUSTAIN_CONNECTIONS)
        spy_proc.wait(timeout=60)
    finally:
        if spy_proc.poll() is None:
            spy_proc.kill()
            spy_proc.wait()
    drain(server.database, 60)  # nothing in flight when serve is stopped
    if not raw.exists():
        return {"available": True, "error": (tmp / "pyspy.log").read_text(errors="replace")[-2000:]}
    shutil.copy(raw, out)
    return {"available": True, "raw": str(out.relative_to(ROOT)), **summarise_profile(raw.read_text())}


IDLE = {("wait", "threading.py"), ("Condition.wait", "threading.py"), ("Event.wait", "threading.py")}
WAITS = {  # leaves where the thread waits in a system call (py-spy cannot tell these from CPU)
    ("sqlite_write_lock", "plugin/storage.py"): "waiting for the SQLite write lock (flock)",
    ("DefaultDialect.do_commit", "sqlalchemy/engine/default.py"): "committing (WAL write, fsync)",
}
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short_file(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(ROOT))
    return re.sub(r"^.*/lib/python3\.\d+/", "", path)


def area(path: str) -> str:
    """The package or module a frame's file belongs to (plugin.provenance, sqlalchemy, json ...)."""
    parts = short_file(path).removesuffix(".py").split("/")
    if parts[0] in ("plugin", "connectors"):
        return ".".join(parts[:2])
    return parts[0]


def summarise_profile(raw: str) -> dict[str, Any]:
    """Where the worker's CPU goes: by loop, by package (self time), by function.

    py-spy counts a thread blocked in Condition.wait (with a timeout) as active: those samples,
    the loops' sleeps between passes, are counted apart as idle and left out of the shares.
    """
    total = idle = busy = 0
    loops: Counter[str] = Counter()
    states: Counter[str] = Counter()
    self_area: Counter[str] = Counter()
    self_func: Counter[str] = Counter()
    incl_func: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = []
        for f in stack.split(";"):
            m = FRAME.match(f)
            frames.append((m["func"], m["file"]) if m else (f, ""))
        files = [short_file(file) for _, file in frames]
        funcs = [func for func, _ in frames]
        func, file = frames[-1]
        if (func, short_file(file)) in IDLE:
            idle += count
            continue
        busy += count
        if any(f == "plugin/dispatch.py" for f in files):
            loops["dispatcher"] += count
        elif "plugin/worker.py" in files or any(f.endswith("rules_pass") for f in funcs):
            loops["rules worker"] += count
        elif any(f == "plugin/jobs.py" for f in files):
            loops["jobs"] += count
        else:
            loops["other"] += count
        states[WAITS.get((func, short_file(file)), "running Python (or C called from it)")] += count
        self_area[area(file)] += count
        self_func[f"{func} ({short_file(file)})"] += count
        for key in {
            f"{func} ({short_file(file)})" for func, file in frames if area(file).startswith("plugin")
        }:
            incl_func[key] += count

    def share(c: Counter[str], top: int) -> dict[str, float]:
        return {k: round(100 * v / busy, 1) for k, v in c.most_common(top)} if busy else {}

    return {
        "samples": total,
        "idle_samples": idle,
        "busy_samples": busy,
        "by_loop_pct": share(loops, 10),
        "by_state_pct": share(states, 5),
        "self_by_package_pct": share(self_area, 12),
        "self_by_function_pct": share(self_func, 15),
        "inclusive_plugin_functions_pct": share(incl_func, 15),
    }


# --- the run -------------------------------------------------------------------------------------


def gunicorn_args(args: argparse.Namespace) -> list[str]:
    # As bench/receive.py's, plus the keep-alive and timeout serve sets.
    return [
        "--worker-class",
        args.worker_class,
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--worker-connections",
        str(args.worker_connections),
        "--keep-alive",
        "5",
        "--timeout",
        "90",
        "--no-control-socket",
        "--log-level",
        "warning",
    ]


@contextlib.contextmanager
def started(cmd: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[None]:
    """bench/receive.py's start() and stop(), but a slow /healthz (a loaded machine) is waited for,
    not raised out of, and the server is stopped whatever happens, even if it never answered."""
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text(errors='replace')[-3000:]}")
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)  # any answer: it serves
                break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        yield
    finally:
        if proc.poll() is None:
            stop(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # gunicorn's workers, if any outlived the arbiter


def bare_phase(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONRECORD_")}
    env["PYTHONPATH"] = str(ROOT)
    port = free_port()
    print("bare endpoint (OnRecord not started) ...", flush=True)
    command = [sys.executable, "-m", "gunicorn", *gunicorn_args(args)]
    command += ["--bind", f"127.0.0.1:{port}", "bench.bare_app:app"]
    with started(command, env, port, tmp / "bare.log"):
        return run_pair(args, port, tmp, "bare", WRK_THREADS)


def onrecord_phases(
    args: argparse.Namespace, server: OnRecord, events: Events, tmp: Path, results: dict[str, Any]
) -> None:
    timeout = args.drain_timeout
    sat = {"connections": args.connections, "delay_ms": 0, "drain_timeout": timeout}
    results["warmup"] = load_phase(
        "warmup", server, events, tmp, seconds=2, count=2 * SATURATION_EVENTS_PER_S, **sat
    )
    results["saturation"] = load_phase(
        "saturation",
        server,
        events,
        tmp,
        seconds=args.seconds,
        count=SATURATION_EVENTS_PER_S * args.seconds,
        **sat,
    )
    results["paced"] = load_phase(
        "paced",
        server,
        events,
        tmp,
        seconds=args.seconds,
        connections=PACED_CONNECTIONS,
        delay_ms=paced_delay(args.rate),
        count=2 * args.rate * args.seconds,
        drain_timeout=timeout,
    )
    # (c)'s rate: about what the pipeline sustains. If (a) left a backlog, the rate at which the
    # worker drained it alone (no HTTP load), but no more than (a) acknowledged; if the worker kept
    # up with (a), what (a) acknowledged.
    acked = results["saturation"]["wrk"]["rps"]
    drained = results["saturation"]["pipeline"]["drain_written_per_s"]
    if args.sustain_rate:
        rate, source = args.sustain_rate, "--sustain-rate"
    elif drained:
        rate, source = (
            min(drained, acked),
            "the worker's drain rate after (a), at most (a)'s acknowledged rate",
        )
    else:
        rate, source = acked, "(a)'s acknowledged rate: the worker kept up with it"
    results["sustain_rate"] = {"offered": round(rate, 1), "from": source}
    results["sustained"] = load_phase(
        "sustained",
        server,
        events,
        tmp,
        seconds=args.sustain_seconds,
        connections=SUSTAIN_CONNECTIONS,
        rate=rate,
        count=int(1.2 * rate * args.sustain_seconds) + 1000,
        drain_timeout=timeout,
    )
    if args.profile_seconds > 0:
        out = ROOT / "bench" / "out" / f"pipeline-{results['stamp']}.pyspy.txt"
        results["profile"] = profile_phase(server, events, tmp, rate, args.profile_seconds, out)


def judge(r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What makes the run invalid."""
    problems = []
    for name in ("bare", "onrecord"):
        if name not in r["endpoints"]:
            problems.append(f"{name}: did not run")
    for name in ("saturation", "paced", "sustained"):
        p = r.get(name)
        if p is None:
            problems.append(f"{name}: did not run")
            continue
        w, pl = p["wrk"], p["pipeline"]
        if w["errors"]:
            problems.append(f"{name}: {w['errors']} wrk errors or non-200 answers")
        if w["requests"] > p["events_in_files"]:
            problems.append(
                f"{name}: wrk sent {w['requests']} requests, more than the {p['events_in_files']} events"
            )
        if not w["requests"] - w["errors"] <= pl["events"] <= w["requests"] + 2 * PACED_CONNECTIONS:
            problems.append(f"{name}: {pl['events']} events stored for {w['requests']} requests")
        if not p["drain"]["drained"]:
            problems.append(f"{name}: the pipeline did not drain: {p['drain']}")
        if pl["not_written"]:
            problems.append(f"{name}: {pl['not_written']} events without a sent provenance write")
        if set(pl["events_by_status"]) - {"done"}:
            problems.append(f"{name}: events not done: {pl['events_by_status']}")
    if args.sustain_seconds < 30:
        problems.append(f"sustained load ran {args.sustain_seconds} s: the issue asks for at least 30 s")
    if r.get("server_log_problems"):
        problems.append(f"server log: {len(r['server_log_problems'])} error lines")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="saturation and paced runs")
    ap.add_argument("--rate", type=int, default=1000, help="paced requests/s for (b) and (d)")
    ap.add_argument("--sustain-seconds", type=int, default=30, help="(c): at least 30 for a valid run")
    ap.add_argument("--sustain-rate", type=float, default=0, help="(c) requests/s; 0: (a)'s drain rate")
    ap.add_argument("--profile-seconds", type=int, default=10, help="py-spy on the worker; 0: none")
    ap.add_argument("--connections", type=int, default=32, help="saturation connections")
    ap.add_argument("--worker-class", choices=["gevent", "gthread"], default=defaults.worker_class)
    ap.add_argument("--workers", type=int, default=defaults.workers)
    ap.add_argument("--threads", type=int, default=defaults.threads)
    ap.add_argument("--worker-connections", type=int, default=defaults.worker_connections)
    ap.add_argument("--drain-timeout", type=float, default=600.0, help="seconds to wait for the worker")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (var/, logs)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ONRECORD_SECTION__KEY=VALUE",
        help="a configuration variable for OnRecord's processes (default: the starter configuration)",
    )
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    tmp = Path(tempfile.mkdtemp(prefix="onrecord-bench-pipeline-"))
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    results: dict[str, Any] = {
        "stamp": stamp,
        "machine": {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "deployment": {
            "command": "python -m plugin init; python -m plugin serve (as make run)",
            "gunicorn": f"{args.worker_class}, {args.workers} workers x "
            + (
                f"{args.threads} threads"
                if args.worker_class == "gthread"
                else f"{args.worker_connections} connections"
            ),
            "governed": "init's starter configuration: Opportunity (Amount, StageName, CloseDate)",
            "storage": "SQLite WAL synchronous=FULL",
            "crm": "dry run",
        },
        "args": vars(args),
        "endpoints": {},
    }
    server: OnRecord | None = None
    try:
        results["endpoints"]["bare"] = bare_phase(args, tmp)
        server, events = shipped(tmp / "onrecord")
        server.env.update(dict(item.split("=", 1) for item in args.set))  # after init, as an admin would
        server.start()
        onrecord_phases(args, server, events, tmp, results)
        results["endpoints"]["onrecord"] = {
            "saturation": results["saturation"]["wrk"],
            "paced": results["paced"]["wrk"],
        }
    finally:
        if server is not None:
            stop_group(server)
            results["server_log_problems"] = server.problems()[:50]
        results["home"] = str(tmp) if args.keep else None
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    problems = judge(results, args)
    results["valid"] = not problems
    results["problems"] = problems
    out = ROOT / "bench" / "out" / f"pipeline-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    report(results, args)
    print(f"\nfull figures: {out.relative_to(ROOT)}")
    return 0 if not problems else 1


def verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    d = r["deployment"]
    print(
        f"\n{r['machine']['cores']} cores; {d['command']}: gunicorn {d['gunicorn']}, rules worker + "
        f"dispatcher running, {d['storage']}, {d['crm']} CRM; wrk {WRK_THREADS} threads; "
        f"the bare endpoint measured first, OnRecord not started"
    )
    if r["args"].get("set"):
        print("settings: " + ", ".join(r["args"]["set"]))
    e = r["endpoints"]
    print(
        "\n| endpoint | saturation req/s | p50 ms | p99 ms | paced req/s | paced p50 ms | paced p99 ms "
        "| errors |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, label in (("bare", "bare"), ("onrecord", "onrecord, worker on")):
        if name in e:
            s, p = e[name]["saturation"], e[name]["paced"]
            print(
                f"| {label} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {p['rps']:.0f} | "
                f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {s['errors'] + p['errors']} |"
            )
    if "bare" in e and "onrecord" in e and "sustained" in r:
        bare = e["bare"]["saturation"]["rps"]
        ratio = e["onrecord"]["saturation"]["rps"] / bare
        p99 = e["onrecord"]["paced"]["p99_ms"]
        sus = r["sustained"]["pipeline"]
        susw = r["sustained"]["wrk"]
        e2e = sus["written_per_s_in_window"] or 0.0
        d_p99 = r["paced"]["pipeline"]["ack_to_write"]["p99_ms"]
        print("\n| measure | value | target | |")
        print("| --- | --- | --- | --- |")
        print(
            f"| (a) acknowledged req/s at saturation / bare | {ratio:.2f} | >= 0.50 | "
            f"{verdict(ratio >= 0.5)} |"
        )
        print(
            f"| (b) p99 acknowledgement at ~{args.rate} req/s "
            f"({e['onrecord']['paced']['rps']:.0f} achieved), worker running | {p99:.2f} ms | <= 25 ms | "
            f"{verdict(p99 <= 25)} |"
        )
        print(
            f"| (c) provenance writes sent per s within a {sus['window_s']:.0f} s window at "
            f"{susw['rps']:.0f} req/s acknowledged | {e2e:,.0f} = {e2e / bare:.2f} x bare | >= 0.30 x bare | "
            f"{verdict(e2e / bare >= 0.3)} |"
        )
        print(
            f"| (d) p99 acknowledgement -> CRM write at ~{args.rate} req/s | {d_p99} ms | <= 2000 ms | "
            f"{verdict(d_p99 is not None and d_p99 <= 2000)} |"
        )
        print(
            f"\n(c) fixed rate offered: {r['sustain_rate']['offered']:.0f} req/s "
            f"({r['sustain_rate']['from']}); "
            f"backlog when the window closed: {sus['backlog_at_window_end']} events; "
            f"writes per second: {sus['written_each_second']}"
        )
    phases = [p for p in ("saturation", "paced", "sustained") if p in r]
    if phases:
        print(
            "\n| phase | events | ack -> write p50 / p99 / max ms | worker CPU ms/event | web ms/event "
            "| inbox writer ms/event | drain s |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name in phases:
            p = r[name]
            pl, cpu = p["pipeline"], p["cpu_ms_per_event"]
            q = pl["ack_to_write"]
            print(
                f"| {name} | {pl['events']} | {q['p50_ms']} / {q['p99_ms']} / {q['max_ms']} | "
                f"{cpu.get('rules worker', 0):.3f} | {cpu.get('gunicorn workers', 0):.3f} | "
                f"{cpu.get('inbox writer', 0):.3f} | {p['drain']['waited_s']} |"
            )
    prof = r.get("profile")
    if prof is not None:
        if prof.get("busy_samples"):
            print(
                f"\nrules-worker process, py-spy: {prof['busy_samples']} busy samples (shares below) and "
                f"{prof['idle_samples']} idle ones of {prof['samples']}, at 100 Hz, {prof['raw']}:"
            )
            for title, key in (
                ("by loop", "by_loop_pct"),
                ("by state", "by_state_pct"),
                ("self time by package", "self_by_package_pct"),
                ("self time by function", "self_by_function_pct"),
                ("inclusive, OnRecord's functions", "inclusive_plugin_functions_pct"),
            ):
                items = list(prof[key].items())[:8]
                print(f"- {title}: " + "; ".join(f"{k} {v}%" for k, v in items))
        else:
            print(f"\npy-spy: {prof.get('why') or prof.get('error')}")
    paced = r.get("paced", {}).get("wrk")
    if paced and paced["rps"] < 0.9 * args.rate:
        print(
            f"\nnote: (b) and (d) ran at {paced['rps']:.0f} req/s, not {args.rate}: wrk paces each of its "
            f"{PACED_CONNECTIONS} connections by a think time after each answer (as bench/receive.py), "
            "and OnRecord answered too slowly for that to reach the rate"
        )
    print("\nreceive-only figures (the HTTP path alone, no worker): bench/receive.py")
    if r.get("server_log_problems"):
        print(
            f"\nserver log: {len(r['server_log_problems'])} error lines, e.g. {r['server_log_problems'][0]}"
        )
    if r["problems"]:
        print("\nRUN INVALID:")
        for p in r["problems"]:
            print(f"  - {p}")


if __name__ == "__main__":
    sys.exit(main())
