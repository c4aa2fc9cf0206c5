"""The admin guides say what gets an admin through the first failure: each topic below is one an
admin tripped on, so a rewrite that drops one fails here rather than in front of an admin. And
where a guide quotes what OnRecord prints, the code still prints it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POWER_AUTOMATE = ROOT / "connectors" / "power_automate" / "README.md"
SALESFORCE = ROOT / "connectors" / "salesforce" / "README.md"
DEPLOY = ROOT / "docs" / "deploy.md"


def text(path: Path) -> str:
    return re.sub(r"\s+", " ", path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("guide", "topic", "pattern"),
    [
        (POWER_AUTOMATE, "custom connectors need a Premium licence", r"Premium"),
        (POWER_AUTOMATE, "a DLP policy that allows them", r"data policy \(DLP\).*Custom connectors"),
        (POWER_AUTOMATE, "public_url must be public HTTPS", r"api\.public_url` is not reachable.*https://"),
        (
            POWER_AUTOMATE,
            "re-import when public_url changes",
            r"change of `api\.public_url`.*Import the connector again",
        ),
        (
            POWER_AUTOMATE,
            "what a 401 at save time means",
            r"Saving a flow with the OnRecord trigger fails with \*\*401\*\*",
        ),
        (
            POWER_AUTOMATE,
            "token rotation and existing subscriptions",
            r"What rotating a secret does to existing subscriptions",
        ),
        (POWER_AUTOMATE, "US-government clouds", r"US-government clouds.*GCC High.*DoD"),
        (
            POWER_AUTOMATE,
            "the connector's contact and privacy policy",
            r"api\.contact_email.*api\.privacy_url",
        ),
        (SALESFORCE, "reading the outbound message queue", r"View Message Delivery Status"),
        (SALESFORCE, "its failure reasons", r"Delivery Failure Reason shows"),
        (SALESFORCE, "what each check problem means", r"What `python -m plugin check` says"),
        (SALESFORCE, "which operations Flow should select", r"\*\*select only these\*\*"),
        (SALESFORCE, "how field names appear in Flow", r"`z0object`.*`recordx5fid`"),
        (DEPLOY, "systemd units for serve and worker", r"onrecord\.service.*onrecord-worker\.service"),
        (DEPLOY, "nginx from Debian as the TLS proxy", r"apt-get install nginx-light.*listen 443 ssl"),
        (DEPLOY, "a publicly trusted certificate", r"publicly trusted certificate"),
        (DEPLOY, "PostgreSQL for several instances", r"## PostgreSQL.*For several"),
        (DEPLOY, "secrets from files", r"ONRECORD_<SECTION>__<KEY>_FILE"),
        (DEPLOY, "backups of var/keys", r"## Backups.*`var/keys`"),
        (DEPLOY, "trusted proxy hops", r"server\.trusted_proxy_hops"),
    ],
)
def test_the_guide_covers_the_topic(guide: Path, topic: str, pattern: str) -> None:
    assert re.search(pattern, text(guide)), f"{guide.relative_to(ROOT)} no longer covers: {topic}"


def test_the_check_lines_the_salesforce_guide_explains_are_what_check_prints() -> None:
    # check's "configuration from the CRM" lines come from plugin/crm_config_job.status_line.
    source = (ROOT / "plugin" / "crm_config_job.py").read_text(encoding="utf-8")
    guide = text(SALESFORCE)
    for line in (
        "configuration from the CRM: off ([crm_config] enabled = false)",
        "configuration from the CRM: not read yet",
        "configuration from the CRM refused",
        "stays in force",
    ):
        assert line in source, line
        assert line in guide, line
