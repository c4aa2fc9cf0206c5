"""`log checkpoint`: take in pending statements and print the log's current signed checkpoint.

The output is the checkpoint exactly as GET /api/provenance/checkpoint serves it: a C2SP
tlog-checkpoint (origin, tree size, base64 RFC 6962 root hash) in a C2SP signed note, signed with
the active Ed25519 key under the origin. Kept outside the organisation, it is what
`verify SAVED --url URL` later checks the log against (a consistency proof from its size).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from plugin import migrate
from plugin.config import Config
from plugin.provenance.keys import KeyStoreError
from plugin.provenance.log import LogCorrupted, integrate
from plugin.provenance.rule import key_store
from plugin.storage import get_engine


def run(args: argparse.Namespace, config: Config) -> int:
    """Print the checkpoint (a signed note), for auditors to keep outside the organisation.

    Exit 1 when the sequencer refuses to sign: the log's stored past no longer matches what it
    signed (LogCorrupted), or no signing key.
    """
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    try:
        key = key_store(config).signing_key()
        result = integrate(engine, key, config.provenance.log_origin, datetime.now(UTC))
    except (KeyStoreError, LogCorrupted) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(result.note)
    return 0
