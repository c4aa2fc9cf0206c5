"""Benchmark: the Salesforce connector, both ways, measured in one run (not a test).

(a) Outbound messages of 100 Opportunity notifications each, stored and acknowledged end to end
    by real gunicorn (`python -m plugin serve --no-worker`, SQLite in WAL mode with
    synchronous=FULL), sent by `--concurrency` keep-alive client threads -> notifications/s; and,
    in the same run, the rate at which zeep alone deserialises the same messages on one core
    (lxml parse with zeep's settings + zeep's `notifications` element parse against the
    message's WSDL) -> ratio. Target: ratio >= 0.5.
(b) Write-back of a burst of 10,000 CRM writes to 10,000 distinct records through the real
    dispatcher and SalesforceWriter (JWT bearer, HTTPS, sObject Collections) to the Salesforce
    emulator -> API calls (those the org counts against its daily limit) per record written.
    Target: <= 1/180 (1/200 is the floor: 200 records per call).

    .venv/bin/python bench/salesforce.py [--messages 500] [--concurrency 8] [--writes 10000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from tests.connectors.salesforce.outbound_messages import (  # noqa: E402
    OPPORTUNITY_WSDL,
    ORG_ID,
    OUTBOUND,
    opportunities,
)
from tests.support.processes import Server, onrecord_env  # noqa: E402

TOKEN = "bench-outbound-token-0123456789abcdef"
SECRET = "whsec_" + "QmVuY2htYXJrIHNlY3JldCBvZiAzMiBieXRlcyEhISE="


# --- (a) outbound messages ---------------------------------------------------------------------


def zeep_rate(bodies: list[bytes], seconds: float = 5.0) -> float:
    """Notifications/s zeep alone deserialises on this core: parse the XML, then the element."""
    from zeep.loader import parse_xml

    from connectors.salesforce import outbound_schema

    schema = outbound_schema.load_wsdl(OPPORTUNITY_WSDL)
    element = schema.get_element(f"{{{OUTBOUND}}}notifications")
    done = notifications = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or done < len(bodies):
        root = parse_xml(bodies[done % len(bodies)], None, settings=outbound_schema.ZEEP_SETTINGS)  # type: ignore[arg-type]
        parsed = element.parse(root[0][0], schema)  # type: ignore[no-untyped-call]
        notifications += len(parsed.Notification)
        done += 1
    return notifications / (time.perf_counter() - started)


def send_all(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, int]:
    """POST every body once over keep-alive connections; (seconds taken, notifications acked)."""
    host, port = url.removeprefix("http://").split(":")
    path = f"/hooks/salesforce/outbound?token={TOKEN}"
    lock = threading.Lock()
    queue = list(reversed(bodies))
    acked = [0]
    failures: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                body = queue.pop()
            conn.request("POST", path, body, {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'})
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status != 200 or b"<Ack>true</Ack>" not in answer:
                failures.append(f"{resp.status}: {answer[:200]!r}")
                continue
            with lock:
                acked[0] += body.count(b"<Notification>")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} messages not acknowledged, e.g. {failures[0]}")
    return elapsed, acked[0]


def outbound(args: argparse.Namespace, work: Path) -> dict[str, float]:
    bodies = [opportunities(100, batch=b) for b in range(args.messages)]
    warmup = [opportunities(100, batch=9000 + b) for b in range(args.concurrency)]
    db = f"sqlite:///{work}/outbound.db"
    env = onrecord_env(
        db,
        work / "var",
        SECRET,
        ONRECORD_SALESFORCE__OUTBOUND_TOKEN=TOKEN,
        ONRECORD_SALESFORCE__ORG_ID=ORG_ID,
        ONRECORD_SALESFORCE__OUTBOUND_WSDLS=json.dumps([str(OPPORTUNITY_WSDL)]),
        ONRECORD_SERVER__WORKER_CLASS=args.worker_class,
        ONRECORD_SERVER__WORKERS=args.workers,
        ONRECORD_SERVER__THREADS=args.threads,
        ONRECORD_LOGGING__LEVEL="ERROR",
    )
    server = Server(env, work / "serve.log")
    try:
        send_all(server.url, warmup, args.concurrency)  # every gunicorn worker loaded and warm
        elapsed, notifications = send_all(server.url, bodies, args.concurrency)
    finally:
        server.stop()
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM inbox")).scalar_one()
    engine.dispose()
    expected = 100 * (len(bodies) + len(warmup))
    if stored != expected:
        raise RuntimeError(f"{stored} notifications stored, {expected} sent")
    e2e = notifications / elapsed
    zeep = zeep_rate(bodies)
    return {"e2e": e2e, "zeep": zeep, "ratio": e2e / zeep, "messages": len(bodies), "seconds": elapsed}


# --- (b) write-back ----------------------------------------------------------------------------


def write_back(args: argparse.Namespace, work: Path) -> dict[str, float]:
    from connectors.salesforce.wiring import build_salesforce_writer
    from plugin.config import load_config
    from plugin.dispatch import Dispatcher
    from plugin.migrate import upgrade
    from plugin.storage import get_engine, outbox
    from tests.sfemu import SalesforceEmulator, make_consumer_keypair

    keypair = make_consumer_keypair()
    key = work / "jwt.key"
    key.write_bytes(keypair.private_key_pem)
    with SalesforceEmulator(api_limit=1_000_000) as emu:
        emu.register_consumer("3MVG9bench", certificate_pem=keypair.certificate_pem)
        ids = [emu.insert_record("Opportunity", {"Name": f"Deal {i}"}) for i in range(args.writes)]
        config = load_config(
            env={},
            overrides={
                "storage.url": f"sqlite:///{work}/writeback.db",
                "salesforce.client_id": "3MVG9bench",
                "salesforce.username": emu.username,
                "salesforce.private_key_file": str(key),
                "salesforce.login_url": emu.base_url,
                "salesforce.ca_bundle": emu.ca_path,
            },
        )
        engine = get_engine(config.storage.url)
        upgrade(engine)
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = [
            {
                "target": "crm",
                "object": "Opportunity",
                "record_key": record_id,
                "operation": "update",
                "external_id_field": None,
                "payload": {"OnRecord_Channel__c": "Form", "OnRecord_Source__c": f"form response {n}"},
                "occurred_at": now,
                "event_id": None,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for n, record_id in enumerate(ids)
        ]
        with engine.begin() as conn:
            conn.execute(outbox.insert(), rows)
        d = config.dispatch
        dispatcher = Dispatcher(
            engine,
            build_salesforce_writer(config),
            owner="bench",
            batch_size=d.batch_size,
            claim_size=d.claim_size,
        )
        started = time.perf_counter()
        sent = 0
        while (result := dispatcher.run_once()).calls:
            sent += result.sent
        elapsed = time.perf_counter() - started
        written = sum(1 for r in emu.records("Opportunity") if r.get("OnRecord_Channel__c") == "Form")
        counted = [c for c in emu.calls if c.counted]
    if sent != args.writes or written != args.writes:
        raise RuntimeError(f"{sent} sent, {written} written, {args.writes} expected")
    return {
        "writes": written,
        "api_calls": len(counted),
        "collections": sum(1 for c in counted if c.path.endswith("/composite/sobjects")),
        "per_record": len(counted) / written,
        "seconds": elapsed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=500, help="outbound messages of 100 notifications")
    ap.add_argument("--concurrency", type=int, default=8, help="client connections")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn workers")
    ap.add_argument("--worker-class", choices=["gevent", "gthread"], default="gevent", help="as serve's")
    ap.add_argument("--threads", type=int, default=16, help="gunicorn threads per worker (gthread)")
    ap.add_argument("--writes", type=int, default=10_000, help="records in the write-back burst")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="onrecord-bench-sf-") as tmp:
        work = Path(tmp)
        a = outbound(args, work)
        b = write_back(args, work)
    concurrency = f"{args.threads} threads" if args.worker_class == "gthread" else "greenlets"
    print(f"cores: {os.cpu_count()}, gunicorn {args.worker_class}, {args.workers} workers x {concurrency}\n")
    print("| measure | value | target |")
    print("| --- | --- | --- |")
    print(
        f"| outbound, stored and acked end to end | {a['e2e']:,.0f} notifications/s "
        f"({a['messages']:.0f} messages of 100 in {a['seconds']:.1f} s) | |"
    )
    print(f"| zeep alone, one core, same messages | {a['zeep']:,.0f} notifications/s | |")
    print(f"| ratio end to end / zeep | {a['ratio']:.2f} | >= 0.5 |")
    print(
        f"| write-back, {b['writes']:,.0f} records | {b['api_calls']:.0f} API calls "
        f"({b['collections']:.0f} sObject Collections) = 1/{1 / b['per_record']:.0f} per record, "
        f"{b['writes'] / b['seconds']:,.0f} records/s | <= 1/180 |"
    )
    ok = a["ratio"] >= 0.5 and b["per_record"] <= 1 / 180
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
