"""What every configuration section shares, core or connector: the base model and small validators.

Kept apart from plugin/config.py so a connector's section (connectors/<name>/config.py) can use
them without importing the whole configuration, which discovers the connectors.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class Section(BaseModel):
    """A configuration section: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def secret_list(v: Any) -> Any:
    """A secret given as one string, or several (rotation) as a JSON list."""
    if isinstance(v, str):
        v = v.strip()
        if v.startswith("["):
            return json.loads(v)
        return [v] if v else []
    return v
