"""`verify`: check a provenance chain, or that the log kept its past, with public keys only.

    verify FILE                      FILE is what GET /api/provenance/<object>/<id> returns (or a
                                     JSON list of its chain entries, or a single DSSE envelope)
    verify --record OBJECT/ID --url URL
    verify OLD --url URL             OLD is a checkpoint saved earlier (`log checkpoint`, or
                                     GET /api/provenance/checkpoint): fetch the consistency proof
                                     from it to the log's current checkpoint and check both
    verify --checkpoints OLD NEW (--url URL | --proof FILE)
                                     two saved checkpoints; the proof fetched from
                                     /api/provenance/checkpoint?from=OLD&to=NEW, or FILE, the JSON
                                     that request answered

A saved checkpoint is the signed note as served (C2SP tlog-checkpoint); a newer one must hold the
older one's tree as its first leaves (RFC 6962 consistency proof), which is what shows that no
signed statement was removed or changed since. Public keys come from `--keys FILE` (a JWK set),
else from <URL>/.well-known/onrecord-keys.json, else from this installation's key directory.
Nothing private is needed. Exit 0 when everything verifies, 1 when something does not (named),
2 when the input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import requests

from plugin.config import Config
from plugin.provenance.checkpoint import CheckpointError, parse_checkpoint
from plugin.provenance.keys import KeyStoreError, keys_from_jwks
from plugin.provenance.rule import key_store
from plugin.provenance.verify import REASONS, verify_chain, verify_checkpoints


class LogRefused(Exception):
    """The log answered that it is corrupted (its sequencer refuses to sign over a changed past)."""


def run(args: argparse.Namespace, config: Config) -> int:
    """Verify and print one line per statement (or per checkpoint)."""
    checkpoints = getattr(args, "checkpoints", None)
    if checkpoints or (args.file and _is_note(args.file)):
        return _run_checkpoints(args, config, checkpoints)
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


def _is_note(path: str) -> bool:
    """Whether FILE holds a signed note (a saved checkpoint) rather than JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False  # the JSON path reports it
    return not text.lstrip().startswith(("{", "[")) and "\n\n\u2014 " in text


def _run_checkpoints(args: argparse.Namespace, config: Config, checkpoints: list[str] | None) -> int:
    fetched = False
    try:
        old_note = Path(checkpoints[0] if checkpoints else args.file).read_text(encoding="utf-8")
        new_note = Path(checkpoints[1]).read_text(encoding="utf-8") if checkpoints else None
        keys = keys_from_jwks(_jwks(args, config))
        old_size = parse_checkpoint(_text(old_note)).size
        new_size = parse_checkpoint(_text(new_note)).size if new_note is not None else None
        proof_file = getattr(args, "proof", None)
        if proof_file:
            answer = json.loads(Path(proof_file).read_text(encoding="utf-8"))
        elif args.url:
            answer = _fetch_consistency(args, config, old_size, new_size)
            fetched = new_note is None
        else:
            raise ValueError("give --url URL (or --proof FILE) for the consistency proof")
        hashes = _proof_hashes(answer)
        if new_note is None:
            new_note = answer.get("checkpoint") if isinstance(answer, dict) else None
            if not isinstance(new_note, str):
                raise ValueError("the proof comes without the checkpoint it leads to")
    except LogRefused as exc:
        print(f"FAILED  log_inconsistent ({REASONS['log_inconsistent']}; the log says: {exc})")
        print("NOT consistent")
        return 1
    except (OSError, ValueError, KeyStoreError, CheckpointError, requests.RequestException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    check = verify_checkpoints(old_note, new_note, hashes, keys)
    for which, cp in (("older", check.old), ("newer", check.new)):
        if cp is not None:
            print(f"{which} checkpoint: ok, {cp.size} statements ({cp.origin})")
    if not check.consistent:
        print(f"FAILED  {check.reason} ({REASONS.get(check.reason, '')}; {check.detail})")
        print("NOT consistent")
        return 1
    if fetched:
        print("newer checkpoint, to keep for the next check:")
        sys.stdout.write(new_note)
    assert check.old is not None and check.new is not None
    print(f"the log's {check.new.size} statements begin with the {check.old.size} signed before")
    print("consistent")
    return 0


def _text(note: str) -> str:
    split = note.rfind("\n\n")
    return note[: split + 1] if split >= 0 else note


def _proof_hashes(answer: Any) -> list[str]:
    """The hex hashes of a consistency proof: the API's answer, its consistency_proof, or a list."""
    if isinstance(answer, dict):
        answer = answer.get("consistency_proof", answer)
        answer = answer.get("hashes") if isinstance(answer, dict) else None
    if not isinstance(answer, list) or not all(isinstance(h, str) for h in answer):
        raise ValueError("no consistency proof (a list of hex hashes) in the proof file")
    return answer


def _headers(args: argparse.Namespace, config: Config) -> dict[str, str]:
    token = args.token or (config.api.tokens[0] if config.api.tokens else "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _fetch_consistency(args: argparse.Namespace, config: Config, old: int, new: int | None) -> Any:
    query = {"from": old} | ({"to": new} if new is not None else {})
    url = f"{args.url.rstrip('/')}/api/provenance/checkpoint?{urlencode(query)}"
    resp = requests.get(url, headers=_headers(args, config), timeout=30)
    if resp.status_code != 200:
        try:
            reason = resp.json().get("reason")
        except ValueError:
            reason = None
        if reason == "log_corrupted":
            raise LogRefused(resp.json().get("error", ""))
        raise ValueError(f"{url} answered {resp.status_code}: {resp.text[:200]}")
    return resp.json()


def _document(args: argparse.Namespace, config: Config) -> Any:
    if args.file:
        return json.loads(Path(args.file).read_text(encoding="utf-8"))
    if not args.record or not args.url:
        raise ValueError("give a FILE, or --record OBJECT/ID with --url URL")
    obj, _, record_id = args.record.partition("/")
    if not obj or not record_id:
        raise ValueError("--record must be OBJECT/ID")
    url = f"{args.url.rstrip('/')}/api/provenance/{quote(obj)}/{quote(record_id)}"
    resp = requests.get(url, headers=_headers(args, config), timeout=30)
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
