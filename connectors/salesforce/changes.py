"""Which Salesforce record changes OnRecord takes in, whichever way they arrived.

Changes of governed objects; and, when `leaders.training_campaigns` names any campaign, changes
of a `CampaignMember` of one of those campaigns (its "Attended" status is a training signal:
`plugin.rules.signals`). Everything else is acknowledged and ignored.
"""

from __future__ import annotations

from collections.abc import Iterable

from connectors.salesforce.connector import settings as sf_settings
from connectors.salesforce.ids import same_id
from plugin.config import Config
from plugin.events import Event
from plugin.rules.signals import CAMPAIGN_MEMBER, is_training_campaign


def why_ignored(event: Event, config: Config) -> str | None:
    """The reason a change is acknowledged and ignored, or None to take it in."""
    if event.object not in {
        g.object for g in config.governed if g.crm == "salesforce"
    } and not _training_member(event, config):
        return "not_governed"
    own_user = sf_settings(config).integration_user_id
    if own_user and event.actor and same_id(event.actor, own_user):
        return "own_change"  # OnRecord's own write-back: never loop on it
    return None


def take_in(events: Iterable[Event], config: Config, ignored: dict[str, int]) -> list[Event]:
    """The events to store; counts the others in `ignored` by reason."""
    kept: list[Event] = []
    for event in events:
        reason = why_ignored(event, config)
        if reason is None:
            kept.append(event)
        else:
            ignored[reason] = ignored.get(reason, 0) + 1
    return kept


def _training_member(event: Event, config: Config) -> bool:
    """A change of a member of one of the training campaigns (15/18-character ids alike)."""
    if event.object != CAMPAIGN_MEMBER or not config.leaders.training_campaigns:
        return False
    fields = event.data.get("fields") or {}
    return is_training_campaign(fields.get("CampaignId"), config.leaders.training_campaigns)
