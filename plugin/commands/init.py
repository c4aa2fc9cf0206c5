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
    var_dir = Path(config.var_dir)
    var_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(var_dir, 0o700)  # the database, keys and secrets live here: OnRecord's user only
    secrets_dir = Path(config.secrets_dir)
    secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(secrets_dir, 0o700)
    if not os.environ.get("ONRECORD_CONFIG") and not CONFIG.exists() and EXAMPLE.exists():
        CONFIG.write_text(starter_config(EXAMPLE.read_text(encoding="utf-8")), encoding="utf-8")
        print(
            f"wrote {CONFIG} from {EXAMPLE} (governing Opportunity and Budget_Request__c, with made-up "
            "demo people and leaders to start with); edit it to configure"
        )
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

# A form-only approval policy (docs/approvals.md): a budget request counts as approved only
# through the form "budget-request" and its two stages; the approver groups are those of the
# made-up people in [directory] people. Replace them with your own.
[[governed]]
object = "Budget_Request__c"
fields = ["Amount__c", "Status__c"]
approval_field = "Status__c"
approved_values = ["Approved"]
form_id = "budget-request"
revert_to = "Submitted"

[[governed.stages]]
name = "business strategy"
approvers = ["Strategy Board"]

[[governed.stages]]
name = "finance"
approvers = ["Finance Approvers"]
"""

# Made-up people and leaders (example.com, ids 005DEMO...) so that `python -m plugin demo` has
# someone to play; `init` puts them in place of the example's empty lists.
STARTER_ORG_ID = """# The demo org's id (`python -m plugin demo` sends outbound messages from it):
# replace with your own (Setup > Company Information).
org_id = "00D000000000062EAA"
"""
STARTER_PEOPLE = """# Made-up people for `python -m plugin demo` (added by `init`): replace with your own.
people = [
  {name = "Alex Requester", emails = ["alex.requester@example.com"], salesforce_id = "005DEMO00000001YDA"},
  {name = "Vera Strategy", emails = ["vera.strategy@example.com"], groups = ["Strategy Board"]},
  {name = "Casey Finance", emails = ["casey.finance@example.com"], groups = ["Finance Approvers"]},
  {name = "Jane Doe", emails = ["jane.doe@example.com"], salesforce_id = "005DEMO00000004YDA"},
  {name = "Dana Chief", emails = ["dana.chief@example.com"], salesforce_id = "005DEMO00000005YDA"},
]
"""
STARTER_LEADERS = """# Made-up leaders for `python -m plugin demo` (added by `init`): replace with your own.
users = [
  {email = "dana.chief@example.com", salesforce_id = "005DEMO00000005YDA", name = "Dana Chief"},
  {email = "vera.strategy@example.com", name = "Vera Strategy"},
  {email = "casey.finance@example.com", name = "Casey Finance"},
  {email = "jane.doe@example.com", salesforce_id = "005DEMO00000004YDA", name = "Jane Doe"},
]
"""


def starter_config(example: str) -> str:
    """The example configuration, with first governed objects (one with an approval policy) and
    made-up people and leaders, so a fresh install does something and `demo` can play."""
    body = example.replace("\ngoverned = []\n", "\n# governed: see [[governed]] at the end of this file\n", 1)
    for empty, starter in (
        ('\norg_id = ""\n', STARTER_ORG_ID),
        ("\npeople = []\n", STARTER_PEOPLE),
        ("\nusers = []\n", STARTER_LEADERS),
    ):
        body = body.replace(empty, "\n" + starter, 1)
    return body.rstrip("\n") + "\n" + STARTER_GOVERNED


def generate_secret(section: str, key: str) -> str:
    """A fresh secret of the form the key expects."""
    if key == "events_secret":
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    if (section, key) == ("api", "callback_key"):
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()  # a Fernet key
    return secrets.token_urlsafe(32)
