"""The nodes a server serves (TSM: ``register node``), with their token hashes.

The registry lives in the datastore (``server/nodes.json``), not in one server's
memory, so every server over the datastore sees the same nodes and a change made by
``blockvault serve node add|remove`` is seen by a running server at its next request.
A token is shown once, when it is made; only its SHA-256 is kept (tokens are 256
random bits, so a slow hash would add nothing).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.errors import BlockvaultError
from core.undo import write_durably

SERVER_DIR = "server"
REGISTRY_NAME = "nodes.json"
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
    """``server/nodes.json`` of one datastore: read by servers, changed by node commands."""

    def __init__(self, store_root: str) -> None:
        self.directory = os.path.join(store_root, SERVER_DIR)
        self.path = os.path.join(self.directory, REGISTRY_NAME)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._nodes: dict[str, Node] = {}

    # --- reading (servers) -------------------------------------------------------

    def nodes(self) -> dict[str, Node]:
        """Return every node by name, re-read when the file changed since the last call."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_ino)
        with self._lock:
            if stamp != self._seen:
                self._nodes = self._read()
                self._seen = stamp
            return self._nodes

    def authenticate(self, token: str) -> Node | None:
        """Return the node whose token this is (revoked ones too), or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN:
            return None
        wanted = token_hash(token)
        found = None
        for node in self.nodes().values():
            if hmac.compare_digest(node.token_sha256, wanted):
                found = node
        return found

    def _read(self) -> dict[str, Node]:
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
            return {n["name"]: Node(**n) for n in raw["nodes"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise NodeError(f"the node registry {self.path} is unreadable: {e}") from None

    # --- changing (node commands) --------------------------------------------------

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Node]]:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.directory, "nodes.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            nodes = self._read() if os.path.exists(self.path) else {}
            yield nodes
            doc: dict[str, object] = {"nodes": [asdict(n) for n in nodes.values()]}
            tmp = Path(f"{self.path}.tmp-{secrets.token_hex(4)}")
            write_durably(tmp, Path(self.path), doc)
        finally:
            os.close(fd)

    def add(self, name: str, *, admin: bool = False) -> str:
        """Register ``name`` and return its new token (shown once; only its hash is kept).

        A revoked node may be added again: it gets a new token and keeps its backups.
        """
        check_node_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._changing() as nodes:
            old = nodes.get(name)
            if old is not None and old.revoked is None:
                raise NodeError(
                    f"node {name} is already registered; 'blockvault serve node remove {name}' "
                    "first to give it a new token"
                )
            nodes[name] = Node(name, token_hash(token), _now(), admin=admin)
        return token

    def remove(self, name: str) -> Node:
        """Revoke ``name``'s token; its images and increments stay in the datastore."""
        with self._changing() as nodes:
            node = nodes.get(name)
            if node is None or node.revoked is not None:
                raise NodeError(f"no node {name} is registered; see 'blockvault serve node list'")
            nodes[name] = Node(node.name, node.token_sha256, node.created, node.admin, _now())
            return nodes[name]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
