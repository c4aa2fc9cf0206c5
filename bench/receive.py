"""Benchmark: OnRecord's signed, durable receive path against a bare Flask endpoint, same run.

Both run under gunicorn with the same settings (`--worker-class`, `--workers`, `--threads`,
`--worker-connections`; OnRecord's defaults) on loopback; wrk drives each with distinct pre-signed
events (bench/post.lua). Measured:

1. saturation: as many requests as wrk can push in `--seconds` -> throughput, p50, p99;
2. paced: about `--rate` requests/s (wrk's per-connection delay) -> p50, p99.

OnRecord runs with SQLite in WAL mode and synchronous=FULL (the embedded default), without
its rules worker unless `--with-worker` (the worker is a separate process competing for the
same two cores). Targets: throughput >= 0.5 x bare, p99 <= 25 ms at 1,000 requests/s.

    .venv/bin/python bench/receive.py [--seconds 10] [--rate 1000] [--repeat 3] [--with-worker]
        [--worker-class gevent|gthread] [--markdown]

With --repeat N the pair runs N times, alternating, and the median ratio is reported: on these
shared machines the bare endpoint alone moves by +-20 % from one run to the next.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plugin.config import ServerConfig  # noqa: E402
from plugin.signatures import sign  # noqa: E402

defaults = ServerConfig()

SECRET = "whsec_" + "QmVuY2htYXJrIHNlY3JldCBvZiAzMiBieXRlcyEhISE="
PATH = "/hooks/salesforce/events"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_events(prefix: Path, threads: int, count: int, tag: str) -> None:
    """Pre-sign `count` distinct events, split over one file per wrk thread."""
    now = int(time.time())
    files = [open(f"{prefix}{t}", "w") for t in range(threads)]  # noqa: SIM115
    try:
        for i in range(count):
            rec = f"0065g{i % 100000:010d}"
            body = json.dumps(
                {
                    "id": f"evt-{tag}-{i}",
                    "type": "record.changed",
                    "occurred_at": "2026-11-26T10:00:00Z",
                    "org_id": "00D5g000004XyZa",
                    "object": "Opportunity",
                    "record": {
                        "Id": rec,
                        "LastModifiedById": "0055g00000AbCdE",
                        "SystemModstamp": "2026-11-26T10:00:00Z",
                        "Amount": 120000 + i,
                        "StageName": "Negotiation/Review",
                        "CloseDate": "2026-12-31",
                    },
                },
                separators=(",", ":"),
            )
            wid = f"msg_{tag}_{i}"
            sig = sign(SECRET, wid, now, body.encode())
            files[i % threads].write(f"{wid}\t{now}\t{sig}\t{body}\n")
    finally:
        for f in files:
            f.close()


def start(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not start: {log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def wrk(
    url: str, files: Path, *, threads: int, connections: int, seconds: int, delay_ms: int
) -> dict[str, Any]:
    env = {**os.environ, "ONRECORD_BENCH_FILES": str(files), "ONRECORD_BENCH_DELAY_MS": str(delay_ms)}
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(ROOT / "bench/post.lua"),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, Any]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M))
    if "99" not in pct:
        raise RuntimeError(f"wrk reported no latencies:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"NON200 (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"rps": rps, "p50_ms": ms(pct["50"]), "p99_ms": ms(pct["99"]), "requests": total, "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--worker-class", choices=["gevent", "gthread"], default=defaults.worker_class)
    ap.add_argument("--workers", type=int, default=defaults.workers)
    ap.add_argument("--threads", type=int, default=defaults.threads)
    ap.add_argument("--worker-connections", type=int, default=defaults.worker_connections)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--with-worker", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    runs = [run_once(args) for _ in range(args.repeat)]
    for n, results in enumerate(runs, 1):
        if args.repeat > 1:
            print(f"\n## run {n} of {args.repeat}\n")
        report(args, results)
    if args.repeat > 1:
        ratios = sorted(r["onrecord"]["saturation"]["rps"] / r["bare"]["saturation"]["rps"] for r in runs)
        p99s = sorted(r["onrecord"]["paced"]["p99_ms"] for r in runs)
        print(
            f"\nmedian of {args.repeat} runs: throughput ratio {statistics.median(ratios):.2f} "
            f"(each: {', '.join(f'{x:.2f}' for x in ratios)}); "
            f"paced p99 {statistics.median(p99s):.2f} ms (each: {', '.join(f'{x:.2f}' for x in p99s)})"
        )
    return 0


def run_once(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One bare run, then one OnRecord run, each on a fresh server (and a fresh database)."""
    tmp = Path(tempfile.mkdtemp(prefix="onrecord-bench-"))
    wrk_threads = 2
    results: dict[str, dict[str, Any]] = {}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("ONRECORD_")}
    base_env["PYTHONPATH"] = str(ROOT)
    gunicorn_args = [
        "--worker-class",
        args.worker_class,
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--worker-connections",
        str(args.worker_connections),
        "--no-control-socket",
        "--log-level",
        "warning",
    ]
    # (a) the bare endpoint
    port = free_port()
    bare = start(
        [
            sys.executable,
            "-m",
            "gunicorn",
            *gunicorn_args,
            "--bind",
            f"127.0.0.1:{port}",
            "bench.bare_app:app",
        ],
        base_env,
        port,
        tmp / "bare.log",
    )
    try:
        results["bare"] = run_pair(args, port, tmp, "bare", wrk_threads)
    finally:
        stop(bare)
    # (b) OnRecord's full path
    port = free_port()
    env = {
        **base_env,
        "ONRECORD_CONFIG": str(tmp / "none.toml"),
        "ONRECORD_VAR_DIR": str(tmp / "var"),
        "ONRECORD_STORAGE__URL": f"sqlite:///{tmp}/var/onrecord.db",
        "ONRECORD_SALESFORCE__EVENTS_SECRET": SECRET,
        "ONRECORD_GOVERNED": json.dumps(
            [{"object": "Opportunity", "fields": ["Amount", "StageName", "CloseDate"]}]
        ),
        "ONRECORD_SERVER__WORKER_CLASS": args.worker_class,
        "ONRECORD_SERVER__WORKERS": str(args.workers),
        "ONRECORD_SERVER__THREADS": str(args.threads),
        "ONRECORD_SERVER__WORKER_CONNECTIONS": str(args.worker_connections),
        "ONRECORD_LOGGING__LEVEL": "WARNING",
        "PORT": str(port),
    }
    (tmp / "none.toml").write_text("")
    cmd = [sys.executable, "-m", "plugin", "serve"] + ([] if args.with_worker else ["--no-worker"])
    onrecord = start(cmd, env, port, tmp / "onrecord.log")
    try:
        results["onrecord"] = run_pair(args, port, tmp, "onrecord", wrk_threads)
        results["onrecord"]["stored_rows"] = count_rows(tmp / "var" / "onrecord.db")
    finally:
        stop(onrecord)
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def run_pair(args: argparse.Namespace, port: int, tmp: Path, tag: str, wrk_threads: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}{PATH}"
    files = tmp / f"{tag}-sat-"
    write_events(files, wrk_threads, 20_000 * args.seconds, tag + "s")
    wrk(url, files, threads=wrk_threads, connections=args.connections, seconds=2, delay_ms=0)  # warm-up
    write_events(files, wrk_threads, 20_000 * args.seconds, tag + "S")  # fresh ids: no duplicates
    saturation = wrk(
        url, files, threads=wrk_threads, connections=args.connections, seconds=args.seconds, delay_ms=0
    )
    paced_files = tmp / f"{tag}-paced-"
    write_events(paced_files, wrk_threads, 2 * args.rate * args.seconds, tag + "p")
    # wrk paces each connection by a fixed think time; leave room for the response time itself.
    connections = 50
    delay = max(1, round(connections * 1000 / args.rate) - 4)
    paced = wrk(
        url, paced_files, threads=wrk_threads, connections=connections, seconds=args.seconds, delay_ms=delay
    )
    return {"saturation": saturation, "paced": paced}


def count_rows(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])


def report(args: argparse.Namespace, r: dict[str, dict[str, Any]]) -> None:
    ratio = r["onrecord"]["saturation"]["rps"] / r["bare"]["saturation"]["rps"]
    lines = [
        f"gunicorn {args.worker_class}, {args.workers} workers x "
        f"{args.threads if args.worker_class == 'gthread' else args.worker_connections} "
        f"{'threads' if args.worker_class == 'gthread' else 'connections'}; wrk 2 threads; "
        f"{os.cpu_count()} cores; SQLite WAL synchronous=FULL; worker {'on' if args.with_worker else 'off'}",
        "",
        "| endpoint | saturation req/s | p50 ms | p99 ms | paced req/s | paced p50 ms | paced p99 ms "
        "| errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("bare", "onrecord"):
        s, p = r[name]["saturation"], r[name]["paced"]
        lines.append(
            f"| {name} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {p['rps']:.0f} | "
            f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {s['errors'] + p['errors']} |"
        )
    lines += [
        "",
        f"throughput ratio onrecord/bare: {ratio:.2f} (target >= 0.50)",
        f"onrecord p99 at ~{args.rate} req/s: {r['onrecord']['paced']['p99_ms']:.2f} ms (target <= 25 ms)",
        f"onrecord inbox rows stored: {r['onrecord'].get('stored_rows')}",
    ]
    print("\n".join(lines))
    if not args.markdown:
        print(json.dumps(r, indent=2))


if __name__ == "__main__":
    sys.exit(main())
