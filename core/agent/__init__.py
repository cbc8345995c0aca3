"""The agent: the job queue in a process that outlives the SSH session, behind a local API.

``server`` runs the queue and answers HTTP on a Unix socket only root can use;
``client`` is what the console and the command line use in place of a queue;
``store`` keeps every job in SQLite, so history survives a restart and a job cut
off by a crash comes back ``interrupted``.
"""

from __future__ import annotations

import os

DEFAULT_SOCKET = "/run/blockvault/agent.sock"
SOCKET_ENV = "BLOCKVAULT_AGENT_SOCKET"


def default_socket_path() -> str:
    """Return ``$BLOCKVAULT_AGENT_SOCKET``, else ``/run/blockvault/agent.sock``.

    Here, not in the client, so that a command can look for the socket without
    importing the HTTP client (its import alone costs a scripted backup 80 ms).
    """
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
