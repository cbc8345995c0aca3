"""The agent: the job queue in a process that outlives the SSH session, behind a local API.

``server`` runs the queue and answers HTTP on a Unix socket only root can use;
``client`` is what the console and the command line use in place of a queue;
``store`` keeps every job in SQLite, so history survives a restart and a job cut
off by a crash comes back ``interrupted``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.agent.client import AgentClient

DEFAULT_SOCKET = "/run/blockvault/agent.sock"
SOCKET_ENV = "BLOCKVAULT_AGENT_SOCKET"


def default_socket_path() -> str:
    """Return ``$BLOCKVAULT_AGENT_SOCKET``, else ``/run/blockvault/agent.sock``.

    Here, not in the client, so that a command can look for the socket without
    importing the HTTP client (its import alone costs a scripted backup 80 ms).
    """
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def agent_for(repo_location: str | None, *, start: bool = False) -> tuple[AgentClient | None, str]:
    """Return a client of the agent that serves ``repo_location``, or None and why not.

    The one way every front end finds the agent. With ``start`` an agent is started
    in the background when none answers (the console does so); without it, no
    socket means no agent and the HTTP client is not even imported (a scripted
    backup starts faster). An agent serving another repository is not used, so
    ``--repo`` always means what it says.

    Returns:
        The client (None when the job must run here), and a line saying where jobs run.
    """
    path = default_socket_path()
    if not start and not os.path.exists(path):
        return None, "no agent runs"
    from core.agent.client import AgentClient, agent_running, start_agent
    from core.errors import BlockvaultError
    from core.repo.repository import canonical_location

    client = None
    try:
        if start and not agent_running(path):
            start_agent(path, repo_location=repo_location)
        client = AgentClient(path)  # one client: each costs a connection
        served = canonical_location(str(client.health().get("repo")))
    except BlockvaultError as e:
        if client is not None:
            client.close()
        return None, e.message
    if served != canonical_location(repo_location):
        client.close()
        return None, "the agent serves another repository"
    return client, "jobs run in the agent"
