"""Benchmark: the provenance log's append, root, inclusion proof and consistency proof by log size.

The issue: sequencing and every `GET /api/provenance/...` read every leaf hash and rebuilt the tree
(86 ms per 100,000 leaves on SQLite). With the stored perfect-subtree hashes (`provenance_tree`)
each operation reads O(log n) rows, so its cost should not depend on the log's size. This script
shows it: one SQLite database (WAL, synchronous=FULL, as OnRecord runs it) in a temporary
directory, grown through OnRecord's own sequencer in bulk (statements inserted unlogged, then
`integrate` takes them in, `--chunk` at a time, storing every node as it completes), and at each
of `--sizes` the four operations are timed `--repeat` times:

- append: one new statement sequenced: `log.integrate` as the API and the worker call it (leaf
  hash, the nodes it completes, the consistency proof from the previous checkpoint checked, one
  window of 2^AUDIT_LEVEL leaves re-derived from their envelopes, the checkpoint signed, commit);
- root: `log.root_at` (the tree's right edge);
- inclusion proof: `log.proofs` for a random leaf, as GET /api/provenance does;
- consistency proof: `log.consistency` from a random older size, as
  GET /api/provenance/checkpoint?from=SIZE does;

plus, for comparison, the durable write every append includes (the statement's row inserted and
committed in its own transaction, timed before each append: SQLite's fsync, which no log layout
avoids), and once per size the old way: every leaf hash read and the tree rebuilt.

Before timing, every size is validated: the stored root, random inclusion and consistency proofs
equal a full recomputation from all the leaves, and they verify. Each figure is the median (and
p95) of its repeats, in milliseconds; the ratio is the largest size's median over the smallest's.
The table is printed and the run saved as JSON in bench/out/provenance_log-<UTC timestamp>.json.

`--db postgres` runs the same on PostgreSQL (ONRECORD_BENCH_POSTGRES_URL, by default
postgresql://postgres@127.0.0.1:5432/test), in a schema of its own dropped at the end; after each
growth the tables are VACUUM ANALYZEd, as autovacuum would leave them (growing logs every
statement through an UPDATE, whose old row versions a live log's autovacuum keeps removing).

    .venv/bin/python bench/provenance_log.py [--sizes 10000,1000000] [--repeat 200] [--chunk 50000]
        [--db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from plugin import migrate  # noqa: E402
from plugin.provenance import merkle  # noqa: E402
from plugin.provenance.keys import SigningKey  # noqa: E402
from plugin.provenance.log import (  # noqa: E402
    AUDIT_LEVEL,
    consistency,
    integrate,
    leaf_hashes,
    proofs,
    root_at,
)
from plugin.storage import begin_write, get_engine, provenance_statements  # noqa: E402

ORIGIN = "bench.onrecord.local/provenance"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PG_URL = os.environ.get("ONRECORD_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
OPERATIONS = ("append", "root", "inclusion proof", "consistency proof")
BASELINE = "baseline: one row inserted and committed"


def envelope(n: int) -> str:
    """A stand-in DSSE envelope of realistic size (~1.1 KB, as OnRecord's record statements)."""
    payload = hashlib.sha512(str(n).encode()).hexdigest() * 6
    return json.dumps({"payload": payload, "payloadType": "application/vnd.in-toto+json", "n": n})


def add(engine: sa.Engine, first: int, count: int) -> None:
    """Unlogged statements, as the API leaves citations for the sequencer."""
    with begin_write(engine) as conn:
        conn.execute(
            provenance_statements.insert(),
            [
                {
                    "kind": "citation",
                    "object": "Bench",
                    "record_id": f"r{n}",
                    "digest": hashlib.sha256(str(n).encode()).hexdigest(),
                    "envelope": envelope(n),
                    "recorded_at": NOW,
                }
                for n in range(first, first + count)
            ],
        )


def grow(engine: sa.Engine, key: SigningKey, size: int, target: int, chunk: int) -> int:
    """Bulk: insert unlogged statements, let the sequencer take each chunk in."""
    while size < target:
        count = min(chunk, target - size)
        add(engine, size, count)
        size = integrate(engine, key, ORIGIN, NOW).tree_size
    return size


def validate(engine: sa.Engine, size: int, rng: random.Random) -> float:
    """Stored answers == a full recomputation, and they verify; returns the rebuild's ms (the old way)."""
    with engine.connect() as conn:
        started = time.perf_counter()
        tree = merkle.Tree(leaf_hashes(conn, size))
        rebuild_ms = (time.perf_counter() - started) * 1000
        root = root_at(conn, size)
        assert root == tree.root(), "stored root differs from the recomputed one"
        for _ in range(5):
            index, old = rng.randrange(size), rng.randrange(1, size)
            found = proofs(conn, [index], size)[index]
            assert found["hashes"] == [h.hex() for h in tree.inclusion_proof(index)]
            assert merkle.verify_inclusion(
                index, size, tree.hashes([(0, index)])[(0, index)], tree.inclusion_proof(index), root
            )
            proof = consistency(conn, old, size)
            assert proof == tree.consistency_proof(old, size)
            assert merkle.verify_consistency(old, size, proof, tree.root(old), root)
    return rebuild_ms


def timed(repeat: int, op: Callable[[], Any], before: Callable[[], Any] | None = None) -> list[float]:
    samples = []
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        op()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def measure(engine: sa.Engine, key: SigningKey, size: int, repeat: int, rng: random.Random) -> dict[str, Any]:
    results: dict[str, list[float]] = {}
    state = {"size": size}
    stored: list[float] = []

    def before_append() -> None:  # the statement stored, as the API or the worker does: timed apart
        started = time.perf_counter()
        add(engine, state["size"], 1)
        stored.append((time.perf_counter() - started) * 1000)

    def append() -> None:
        state["size"] = integrate(engine, key, ORIGIN, NOW).tree_size

    results["append"] = timed(repeat, append, before_append)
    results[BASELINE] = stored
    n = state["size"]
    with engine.connect() as conn:
        results["root"] = timed(repeat, lambda: root_at(conn, n))
        results["inclusion proof"] = timed(repeat, lambda: proofs(conn, [rng.randrange(n)], n))
        results["consistency proof"] = timed(repeat, lambda: consistency(conn, rng.randrange(1, n), n))
    return {
        "size": n,
        "ops": {
            name: {
                "median_ms": statistics.median(samples),
                "p95_ms": sorted(samples)[int(0.95 * (len(samples) - 1))],
                "repeat": len(samples),
            }
            for name, samples in results.items()
        },
    }


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[sa.Engine]:
    """OnRecord's schema in a SQLite file under `workdir`, or in a PostgreSQL schema of its own."""
    if kind == "sqlite":
        engine = get_engine(f"sqlite:///{workdir}/log.db")
        try:
            migrate.upgrade(engine)
            yield engine
        finally:
            engine.dispose()
        return
    schema = "bench_log_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    engine = get_engine(f"{PG_URL}{sep}options=-csearch_path%3D{schema}")
    try:
        migrate.upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def vacuum(engine: sa.Engine) -> None:
    """PostgreSQL: the log's tables as autovacuum leaves them (dead row versions gone, statistics)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("provenance_statements", "provenance_tree", "provenance_checkpoints"):
            conn.exec_driver_sql(f"VACUUM ANALYZE {table}")


def database_bytes(engine: sa.Engine, workdir: Path) -> int:
    if engine.dialect.name != "postgresql":
        return sum(p.stat().st_size for p in workdir.glob("log.db*"))
    with engine.connect() as conn:
        total = conn.exec_driver_sql(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        ).scalar()
    return int(total or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="10000,1000000", help="log sizes to measure at, ascending")
    parser.add_argument("--repeat", type=int, default=200, help="timed runs of each operation per size")
    parser.add_argument("--chunk", type=int, default=50_000, help="statements per sequencer pass (growing)")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite", help="the database")
    parser.add_argument("--dir", help="where to put the database (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite database afterwards")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="onrecord-bench-log-"))
    workdir.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    rng = random.Random(6962)
    rows: list[dict[str, Any]] = []
    size = 0
    started = time.perf_counter()
    db_bytes = 0
    try:
        with database(args.db, workdir) as engine:
            for target in sizes:
                began = time.perf_counter()
                size = grow(engine, key, size, target, args.chunk)
                vacuum(engine)
                grow_s = time.perf_counter() - began
                rebuild_ms = validate(engine, size, rng)
                row = measure(engine, key, size, args.repeat, rng)
                row |= {"grow_seconds": grow_s, "old_full_rebuild_ms": rebuild_ms}
                rows.append(row)
                size = row["size"]
                print(
                    f"  {size:>10,} leaves: grown in {grow_s:.1f} s, validated; "
                    + ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in row["ops"].items()),
                    file=sys.stderr,
                )
            db_bytes = database_bytes(engine, workdir)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)

    first, last = rows[0], rows[-1]
    header = "| operation | " + " | ".join(f"{r['size']:,} leaves: median (p95) ms" for r in rows)
    print(header + f" | ratio {last['size']:,} / {first['size']:,} |")
    print("| --- | " + " | ".join("---:" for _ in rows) + " | ---: |")
    for name in (*OPERATIONS, BASELINE):
        cells = [f"{r['ops'][name]['median_ms']:.3f} ({r['ops'][name]['p95_ms']:.3f})" for r in rows]
        ratio = last["ops"][name]["median_ms"] / first["ops"][name]["median_ms"]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    rebuilds = [f"{r['old_full_rebuild_ms']:.1f}" for r in rows]
    ratio = last["old_full_rebuild_ms"] / first["old_full_rebuild_ms"]
    print("| old way: read every leaf, rebuild (once) | " + " | ".join(rebuilds) + f" | {ratio:.2f} |")
    described = "SQLite (WAL, synchronous=FULL)" if args.db == "sqlite" else "PostgreSQL"
    print(
        f"\n{described}, audit window 2^{AUDIT_LEVEL} leaves per append, "
        f"{args.repeat} runs per figure; database {db_bytes / 1e6:,.0f} MB; "
        f"whole run {time.perf_counter() - started:.0f} s."
    )
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"provenance_log-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "provenance_log",
                "when": datetime.now(UTC).isoformat(),
                "database": described,
                "audit_leaves_per_append": 1 << AUDIT_LEVEL,
                "repeat": args.repeat,
                "chunk": args.chunk,
                "database_bytes": db_bytes,
                "sizes": rows,
            },
            indent=2,
        )
    )
    print(f"saved {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
