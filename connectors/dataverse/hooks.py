"""POST /hooks/dataverse: Dataverse webhooks (being written)."""

from __future__ import annotations

from plugin.receive import Source

HOOKS: dict[str, Source] = {}
