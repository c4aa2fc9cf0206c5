"""`init`: var/, dev secrets (printed once, kept mode 0600), configuration file, schema."""

from __future__ import annotations

import argparse
import base64
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from plugin import migrate
from plugin.config import OPTIONAL_SECRETS, SECRET_KEYS, Config, env_name
from plugin.provenance.rule import key_store
from plugin.storage import get_engine

EXAMPLE = Path("config/onrecord.example.toml")
CONFIG = Path("config/onrecord.toml")


def run(args: argparse.Namespace, config: Config) -> int:
    """Prepare a machine to serve; safe to run again (nothing is overwritten)."""
    Path(config.var_dir).mkdir(parents=True, exist_ok=True)
    secrets_dir = Path(config.secrets_dir)
    secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(secrets_dir, 0o700)
    if not os.environ.get("ONRECORD_CONFIG") and not CONFIG.exists() and EXAMPLE.exists():
        CONFIG.write_text(starter_config(EXAMPLE.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote {CONFIG} from {EXAMPLE} (governing Opportunity to start with); edit it to configure")
    for section, key in sorted(SECRET_KEYS):
        if getattr(getattr(config, section), key) or (section, key) in OPTIONAL_SECRETS:
            continue  # configured from the environment or an existing file, or not needed
        path = secrets_dir / f"{section}.{key}"
        value = generate_secret(section, key)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(value + "\n")
        print(
            f"generated a development secret for {section}.{key} in {path} (mode 0600).\n"
            f"  It is shown once: {value}\n"
            f"  In production set {env_name(section, key)} or {env_name(section, key)}_FILE instead."
        )
    store = key_store(config)
    if not store.exists():
        kid = store.create(datetime.now(UTC))
        print(f"generated the provenance signing key {kid} in {store.directory} (private part mode 0600)")
    engine = get_engine(config.storage.url)
    migrate.upgrade(engine)
    print(
        f"database ready at {engine.url.render_as_string(hide_password=True)} "
        f"(schema {migrate.current_revision(engine)})"
    )
    return 0


STARTER_GOVERNED = """
# Added by `python -m plugin init` as a starting point: OnRecord governs these objects and fields.
[[governed]]
object = "Opportunity"
fields = ["Amount", "StageName", "CloseDate"]
"""


def starter_config(example: str) -> str:
    """The example configuration, with a first governed object so a fresh install does something."""
    body = example.replace("\ngoverned = []\n", "\n# governed: see [[governed]] at the end of this file\n", 1)
    return body.rstrip("\n") + "\n" + STARTER_GOVERNED


def generate_secret(section: str, key: str) -> str:
    """A fresh secret of the form the key expects."""
    if key == "events_secret":
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    if (section, key) == ("api", "callback_key"):
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()  # a Fernet key
    return secrets.token_urlsafe(32)
