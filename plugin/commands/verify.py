"""`verify FILE | --record OBJECT/ID --url URL`: check a provenance chain with public keys only.

FILE is what GET /api/provenance/<object>/<id> returns (or a JSON list of its chain entries, or
a single DSSE envelope). Public keys come from `--keys FILE` (a JWK set), else from
<URL>/.well-known/onrecord-keys.json, else from this installation's key directory. Nothing
private is needed. Exit 0 when everything verifies, 1 when something does not (named), 2 when
the input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from plugin.config import Config
from plugin.provenance.keys import KeyStoreError, keys_from_jwks
from plugin.provenance.rule import key_store
from plugin.provenance.verify import REASONS, verify_chain


def run(args: argparse.Namespace, config: Config) -> int:
    """Verify and print one line per statement."""
    try:
        document = _document(args, config)
        keys = keys_from_jwks(_jwks(args, config))
    except (OSError, ValueError, KeyStoreError, requests.RequestException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(document, dict) and "payloadType" in document:
        entries: list[Any] = [{"envelope": document}]
        note = None
    elif isinstance(document, dict):
        entries, note = document.get("chain", []), document.get("checkpoint")
    else:
        entries, note = document, None
    if not entries:
        print("error: no statements to verify", file=sys.stderr)
        return 2
    check = verify_chain(entries, keys, note)
    if note is not None:
        cp = check.checkpoint
        said = f"ok, {cp.size} statements" if cp else f"INVALID: {check.checkpoint_error}"
        print(f"checkpoint: {said}")
    for entry in check.entries:
        predicate = (entry.statement or {}).get("predicate", {})
        label = f"#{predicate.get('sequence', '?')} {predicate.get('channel', '')}".strip()
        if entry.verified:
            print(f"ok      {label} signed by {entry.keyid}")
        else:
            print(f"FAILED  {label}: {entry.reason} ({REASONS.get(entry.reason, '')}; {entry.detail})")
    print("verified" if check.verified else "NOT verified")
    return 0 if check.verified else 1


def _document(args: argparse.Namespace, config: Config) -> Any:
    if args.file:
        return json.loads(Path(args.file).read_text(encoding="utf-8"))
    if not args.record or not args.url:
        raise ValueError("give a FILE, or --record OBJECT/ID with --url URL")
    obj, _, record_id = args.record.partition("/")
    if not obj or not record_id:
        raise ValueError("--record must be OBJECT/ID")
    token = args.token or (config.api.tokens[0] if config.api.tokens else "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{args.url.rstrip('/')}/api/provenance/{quote(obj)}/{quote(record_id)}"
    resp = requests.get(url, headers=headers, timeout=30)
    if resp.status_code != 200:
        raise ValueError(f"{url} answered {resp.status_code}: {resp.text[:200]}")
    return resp.json()


def _jwks(args: argparse.Namespace, config: Config) -> Any:
    if args.keys:
        return json.loads(Path(args.keys).read_text(encoding="utf-8"))
    if args.url:
        resp = requests.get(f"{args.url.rstrip('/')}/.well-known/onrecord-keys.json", timeout=30)
        resp.raise_for_status()
        return resp.json()
    return key_store(config).jwks()
