"""Where blockvault keeps its own state on this host (``$BLOCKVAULT_STATE_DIR``)."""

from __future__ import annotations

import os

STATE_ENV = "BLOCKVAULT_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/blockvault"


def state_dir() -> str:
    """Return ``$BLOCKVAULT_STATE_DIR``, else /var/lib/blockvault."""
    return os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR
