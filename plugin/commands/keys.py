"""`keys list | rotate | export`: the provenance signing keys."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from plugin.cli import print_json
from plugin.config import Config
from plugin.provenance.keys import KeyStoreError
from plugin.provenance.rule import key_store


def run(args: argparse.Namespace, config: Config) -> int:
    """List the keys, rotate to a new one, or print the public JWK set."""
    store = key_store(config)
    try:
        if args.action == "rotate":
            kid = store.rotate(datetime.now(UTC))
            print(f"new signing key {kid}; the old public keys stay published for verification.")
            print("Restart `serve` and `worker` so they sign with it.")
            return 0
        if args.action == "export":
            print_json(store.jwks())
            return 0
        active = store.index()["active"]
        for entry in reversed(store.entries()):
            status = "active" if entry["kid"] == active else f"retired {entry['retired_at']}"
            print(f"{entry['kid']}  Ed25519  created {entry['created_at']}  {status}")
        return 0
    except KeyStoreError as exc:
        print(f"error: {exc}")
        return 1
