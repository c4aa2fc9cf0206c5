"""Part-benchmark (not the deployment): the rules worker, the dispatcher and the log sequencer
alone, in this process, on governed changes already in the inbox.

`python -m plugin init` in a temporary directory (the starter configuration: Opportunity governed,
the dry-run CRM, SQLite WAL synchronous=FULL), then `--events` distinct `record.changed` events of
distinct Opportunity records are stored, and the worker's passes run until the inbox is drained,
then the dispatcher's, then one sequencer pass. Printed per phase: CPU (user + system of this
process) per event, and for the worker and the dispatcher how long each of their write
transactions held SQLite's write lock (the inbox writer, which acknowledges senders, waits that
long). `--revision REV` measures a git revision's code in the same run, alternating with the
working tree's, `--repeat` times; the ratios are the figures to read on a shared machine.

The deployment as shipped (gunicorn, inbox writer, worker and dispatcher on the same cores) is
bench/pipeline.py; this one isolates what the worker costs, for changes to it.

    .venv/bin/python bench/worker.py [--events 4000] [--repeat 3] [--revision HEAD~3]
        [--set ONRECORD_WORKER__BATCH_SIZE=100 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Runs in a child process with the code to measure first on sys.path (argv: source, home, events).
CHILD = r"""
import json, os, resource, sys, time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
source, home, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, source)
os.chdir(home)
import plugin.dispatch, plugin.dryrun, plugin.storage, plugin.worker
from plugin.commands.work import build
from plugin.config import load_config
from plugin.events import Event
from plugin.inbox import insert_events

held = {"worker": [], "dispatcher": []}
real = plugin.storage.begin_write

def timed(name):
    @contextmanager
    def begin_write(engine):
        with real(engine) as conn:
            start = time.perf_counter()
            yield conn
        held[name].append((time.perf_counter() - start) * 1000)
    return begin_write

plugin.worker.begin_write = timed("worker")
plugin.dispatch.begin_write = plugin.dryrun.begin_write = timed("dispatcher")

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

worker, dispatcher, jobs = build(load_config())
t0 = datetime.now(UTC)
events = [
    Event(source="salesforce", delivery_id=f"bench-{i}", kind="record.changed",
          occurred_at=t0 + timedelta(microseconds=i), object="Opportunity",
          record_id=f"006BENCH{i:07d}AAA", actor="0055g00000AbCdEAAV",
          data={"fields": {"Amount": 1000 + i, "StageName": "Prospecting", "CloseDate": "2026-12-31"}},
          sender="bench", raw_digest="0" * 64)
    for i in range(count)
]
with real(worker.engine) as conn:
    insert_events(conn, events, t0)
out = {}
start = cpu(); done = 0
while (n := worker.run_once().done):
    done += n
out["worker"] = (cpu() - start) / max(done, 1) * 1000
start = cpu(); sent = 0
while (r := dispatcher.run_once()).calls:
    sent += r.sent
out["dispatcher"] = (cpu() - start) / max(sent, 1) * 1000
start = cpu()
for job in jobs.jobs:
    if job.name == "provenance.sequencer":
        job.run({}, datetime.now(UTC))
out["sequencer"] = (cpu() - start) / max(done, 1) * 1000
out["done"], out["sent"] = done, sent
out["held"] = held
print(json.dumps(out))
"""


def source_of(revision: str, into: Path) -> Path:
    """The revision's tree, exported (no checkout of the working tree is touched)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run_once(source: Path, events: int, work: Path, settings: dict[str, str]) -> dict[str, Any]:
    home = work / "home"
    if home.exists():
        shutil.rmtree(home)
    (home / "config").mkdir(parents=True)
    shutil.copy(source / "config" / "onrecord.example.toml", home / "config" / "onrecord.example.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONRECORD_")}
    env["PYTHONPATH"] = str(source)
    subprocess.run(
        [sys.executable, "-m", "plugin", "init"], cwd=home, env=env, check=True, capture_output=True
    )
    env.update(settings)  # after init: they are what the worker runs with
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(home), str(events)],
        cwd=home,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def held(name: str, q: float) -> float:
        values = sorted(v for r in runs for v in r["held"][name])
        return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0

    return {
        "worker ms CPU/event": med("worker"),
        "dispatcher ms CPU/row": med("dispatcher"),
        "sequencer ms CPU/event": med("sequencer"),
        "worker lock held p50 ms": held("worker", 0.5),
        "worker lock held p90 ms": held("worker", 0.9),
        "dispatcher lock held p50 ms": held("dispatcher", 0.5),
        "dispatcher lock held p90 ms": held("dispatcher", 0.9),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--revision", help="also measure this git revision, alternating with the working tree")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ONRECORD_SECTION__KEY=VALUE",
        help="a configuration variable for both (e.g. ONRECORD_WORKER__BATCH_SIZE=100)",
    )
    args = ap.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    with tempfile.TemporaryDirectory(prefix="onrecord-bench-worker-") as tmp:
        work = Path(tmp)
        sources = {"working tree": ROOT}
        if args.revision:
            sources = {args.revision: source_of(args.revision, work / "revision"), **sources}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
        for _ in range(args.repeat):
            for name, source in sources.items():
                runs[name].append(run_once(source, args.events, work, settings))
        table = {name: summary(r) for name, r in runs.items()}
    names = list(table)
    print(f"\nworker part-benchmark: {args.events} governed changes, {args.repeat} runs each, medians")
    print(f"settings: {settings or 'the starter configuration'}\n")
    header = "| measure | " + " | ".join(names) + (" | ratio |" if len(names) == 2 else " |")
    print(header)
    print("| --- |" + " ---: |" * (len(names) + (1 if len(names) == 2 else 0)))
    for measure in table[names[0]]:
        cells = [f"{table[n][measure]:.3f}" for n in names]
        ratio = ""
        if len(names) == 2 and table[names[0]][measure]:
            ratio = f" {table[names[1]][measure] / table[names[0]][measure]:.2f} |"
        print(f"| {measure} | " + " | ".join(cells) + " |" + ratio)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
