"""gunicorn settings for the bare baseline: the same interpreter tuning `serve` applies."""

import sys

from plugin.commands.serve import SWITCH_INTERVAL_SECONDS


def post_worker_init(worker: object) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
