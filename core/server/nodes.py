"""The nodes a server serves (TSM: ``register node``), with their token hashes.

The registry lives in the datastore (``server/nodes.json``, :mod:`core.server.meta`),
not in one server's memory, so every server over the datastore, a directory or a
bucket, sees the same nodes, and a change made by ``blockvault serve node add|remove``
is seen by the running servers (see :class:`NodeRegistry` for how soon).
A token is shown once, when it is made; only its SHA-256 is kept (tokens are 256
random bits, so a slow hash would add nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TypeVar

from core.errors import BlockvaultError
from core.server.meta import Meta

T = TypeVar("T")
SERVER_DIR = "server"
REGISTRY = f"{SERVER_DIR}/nodes.json"
REMOTE_RECHECK = 2.0
UNKNOWN_RECHECK = 0.25
"""Over a bucket, a token not in the registry asks it again if the last ask is older."""
TOKEN_PREFIX = "bvt1_"
NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_TOKEN = 256


class NodeError(BlockvaultError):
    """A node command cannot be done (bad name, already there, not there)."""


@dataclass(frozen=True)
class Node:
    """One registered node."""

    name: str
    token_sha256: str
    created: str
    admin: bool = False
    """An admin token may read every node's objects and delete; a node token may not."""
    revoked: str | None = None
    """When ``node remove`` revoked the token (the node's backups stay)."""

    def public(self) -> dict[str, object]:
        """Return what ``node list --json`` shows (never the hash)."""
        return {
            "name": self.name,
            "admin": self.admin,
            "created": self.created,
            "revoked": self.revoked,
        }


def check_node_name(name: str) -> str:
    """Return ``name`` if it can name a node; raise :class:`NodeError` otherwise."""
    if not NODE_NAME.match(name):
        raise NodeError(
            f"{name!r} cannot name a node: use 1–63 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name


def token_hash(token: str) -> str:
    """Return the hex SHA-256 a registry keeps of ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


class NodeRegistry:
    """``server/nodes.json`` of one datastore: read by servers, changed by node commands.

    A server re-reads it when its version changed: checked at every request over a
    directory (a stat), at most every :data:`REMOTE_RECHECK` seconds over a bucket (a
    request), so a token revoked through one server is refused by all within that time.
    """

    def __init__(self, meta: Meta) -> None:
        self.meta = meta
        self.where = f"{meta.root}/{REGISTRY}"
        self._lock = threading.Lock()
        self._checked = -REMOTE_RECHECK
        self._nodes: dict[str, Node] = {}
        self._version: str | None = None

    # --- reading (servers) -------------------------------------------------------

    def nodes(self, *, within: float = REMOTE_RECHECK) -> dict[str, Node]:
        """Return every node by name, re-read when the registry changed since the last call
        (over a bucket: asked again once the last ask is ``within`` seconds old)."""
        now = time.monotonic()
        with self._lock:
            if self.meta.remote and now - self._checked < within:
                return self._nodes
        version = self.meta.version(REGISTRY)  # a stat, or a HEAD: read only on a change
        with self._lock:
            self._checked = now
            if version == self._version:
                return self._nodes
        found = self.meta.read(REGISTRY)
        with self._lock:
            self._nodes = {} if found is None else self._parse(found[0])
            self._version = None if found is None else found[1]
            return self._nodes

    def authenticate(self, token: str) -> Node | None:
        """Return the node whose token this is (revoked ones too), or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN:
            return None
        wanted = token_hash(token)
        for nodes in (self.nodes(), self.nodes(within=UNKNOWN_RECHECK)):
            # A token not known yet may be a node added a moment ago through another
            # server or the bucket: the registry is asked again (at most so often).
            found = None
            for node in nodes.values():
                if hmac.compare_digest(node.token_sha256, wanted):
                    found = node
            if found is not None or not self.meta.remote:
                return found
        return None

    def _parse(self, data: bytes) -> dict[str, Node]:
        try:
            raw = json.loads(data)
            return {n["name"]: Node(**n) for n in raw["nodes"]}
        except (ValueError, KeyError, TypeError) as e:
            raise NodeError(f"the node registry {self.where} is unreadable: {e}") from None

    # --- changing (node commands) --------------------------------------------------

    def _change(self, edit: Callable[[dict[str, Node]], T]) -> T:
        """Apply ``edit`` to the registry as it is now, and store it if nobody changed it
        meanwhile (else read it again and redo: a compare-and-swap)."""
        for _ in range(20):
            found = self.meta.read(REGISTRY)
            nodes = {} if found is None else self._parse(found[0])
            result = edit(nodes)
            doc = {"nodes": [asdict(n) for n in nodes.values()]}
            if self.meta.swap(REGISTRY, json.dumps(doc).encode(), found[1] if found else None):
                with self._lock:
                    self._checked = -REMOTE_RECHECK
                return result
            time.sleep(0.05)
        raise NodeError(f"the node registry {self.where} keeps changing; try again")

    def add(self, name: str, *, admin: bool = False) -> str:
        """Register ``name`` and return its new token (shown once; only its hash is kept).

        A revoked node may be added again: it gets a new token and keeps its backups.
        """
        check_node_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)

        def edit(nodes: dict[str, Node]) -> None:
            old = nodes.get(name)
            if old is not None and old.revoked is None:
                raise NodeError(
                    f"node {name} is already registered; 'blockvault serve node remove {name}' "
                    "first to give it a new token"
                )
            nodes[name] = Node(name, token_hash(token), _now(), admin=admin)

        self._change(edit)
        return token

    def remove(self, name: str) -> Node:
        """Revoke ``name``'s token; its images and increments stay in the datastore."""

        def edit(nodes: dict[str, Node]) -> Node:
            node = nodes.get(name)
            if node is None or node.revoked is not None:
                raise NodeError(f"no node {name} is registered; see 'blockvault serve node list'")
            nodes[name] = Node(node.name, node.token_sha256, node.created, node.admin, _now())
            return nodes[name]

        return self._change(edit)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
