"""What a repository server does with a datastore, apart from HTTP: sessions, known chunks, owners.

The datastore is a blockvault repository (``config.json``, ``chunks/``, ``images/``,
``increments/``) in a directory or in a bucket (``s3://BUCKET/PREFIX``), plus
``server/`` in the same place (:mod:`core.server.meta`), so that several servers over
one bucket serve the same nodes:

- ``server/nodes.json``: the registry (:mod:`core.server.nodes`);
- ``server/owners/NODE/KIND/ID``: which node a manifest belongs to, holding the
  digests of the chunks it names (32 bytes each): the node's *known chunks* are
  those of its manifests that exist;
- ``server/sessions/SID.json`` and the log ``SID.chunks``: an open session and the
  chunks it was sent, so that a restarted server (or another over the same bucket)
  resumes it and the client resends nothing the server acknowledged. Uploads in
  flight at once are recorded together (one append for all of them, a group commit),
  each acknowledged once its record is durable.

Every upload is checked against its id before it is acknowledged (plain: the BLAKE3
of the decompressed content; sealed: the checksum over the ciphertext). A manifest
is committed only at the session's finish: the chunks it names are made durable,
then its owner record, then the manifest itself, so a manifest that can be seen
never lacks a chunk or an owner, and an unfinished session leaves nothing visible.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from core.errors import BlockvaultError
from core.repo.crypto import check_sealed
from core.repo.filemanifest import FILE_CHUNK, decode_file_manifest
from core.repo.format import (
    CHUNK_SLACK,
    ID_BYTES,
    DamagedObject,
    decode_manifest,
    split_digests,
    verify_chunk,
)
from core.repo.packs import PackMap, verify_pack
from core.repo.s3 import S3Store
from core.repo.store import LocalStore, ObjectMissing, check_key
from core.server.meta import Busy, Meta, meta_of, store_at
from core.server.nodes import SERVER_DIR, Node, NodeRegistry

log = logging.getLogger("blockvault.server")
PACKS_RECHECK = 1.0
"""Seconds a chunk not found in the packs waits before they are listed again for it."""

MANIFEST_KINDS = ("images", "increments")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_SID = re.compile(r"^[0-9a-f]{32}$")
_MANIFEST_NAME = re.compile(r"^[0-9]{8}T[0-9A-Za-z.]{6,20}-[0-9a-f]{6}$")
SESSION_IDLE = 3600.0
"""Seconds a session may go unused before the server drops it (and its shared lock)."""
KNOWN_RECHECK = 2.0
"""Over a bucket, seconds a node's known chunks are taken as they were last listed
(a miss lists them again, at most once a second: another server may have committed)."""
CONFIG = "config.json"
OWNERS = f"{SERVER_DIR}/owners"
SESSIONS = f"{SERVER_DIR}/sessions"


class Refused(BlockvaultError):
    """A request the server will not do; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def forbidden(message: str) -> Refused:
    """Return the 403 for ``message``."""
    return Refused(403, message)


@dataclass
class Session:
    """One backup's upload session: what it sent, and the shared lock that keeps prune off."""

    id: str
    node: str
    started: float
    uploaded: set[bytes] = field(default_factory=set)
    used: float = field(default_factory=time.monotonic)
    release: Callable[[], None] | None = None
    """Gives the datastore's shared lock back."""
    recorded: threading.Condition = field(default_factory=threading.Condition)
    pending: list[bytes] = field(default_factory=list)
    batch: int = 1
    """The number the next record batch will have; ``flushed`` the last one durable."""
    flushed: int = 0
    flushing: bool = False


class Datastore:
    """One datastore as a server serves it to its nodes."""

    def __init__(self, location: str) -> None:
        self.store: LocalStore | S3Store = store_at(location)
        self.root = self.store.root
        self.meta: Meta = meta_of(self.store)
        self.registry = NodeRegistry(self.meta)
        self._sessions: dict[str, Session] = {}
        self._known: dict[str, tuple[tuple[str, ...], float, frozenset[bytes]]] = {}
        self._lock = threading.Lock()
        self._fixed_config: tuple[bool, int] | None = None
        store = self.store
        self.packs = PackMap(
            store, (lambda: store.sizes("packs")) if isinstance(store, S3Store) else None
        )
        """Where packed chunks lie: loaded again when a chunk is not where it was."""

    # --- the repository's config ---------------------------------------------------

    def _config(self) -> tuple[bytes, str]:
        found = self.meta.read(CONFIG)
        if found is None:
            raise Refused(
                404,
                "the server's datastore holds no repository yet; make it with "
                "'blockvault repo init --repo URL'",
            )
        return found

    def config_bytes(self) -> bytes:
        """Return ``config.json`` as stored; 404 before any node made the repository."""
        return self._config()[0]

    def config(self) -> dict[str, object]:
        """Return the repository's config as a dict."""
        doc = json.loads(self.config_bytes())
        assert isinstance(doc, dict)
        return doc

    def create_config(self, node: Node, data: bytes) -> None:
        """Make the repository from a client's ``repo init`` (only while there is none)."""
        doc = _config_doc(data)
        if not self.meta.create(CONFIG, json.dumps(doc, indent=2).encode()):
            raise Refused(409, f"the server's datastore already holds repository "
                          f"{self.config().get('id')}")
        log.info("node %s made repository %s (encryption %s)", node.name, doc["id"],
                 "none" if doc.get("encryption") is None else "on")

    def replace_slots(self, node: Node, data: bytes, expected: str) -> None:
        """Store a changed list of key slots (``repo key add|remove|passwd``).

        Only the slots may change, and only from the config the client read
        (``expected`` is its SHA-256): two nodes changing keys at once cannot lose
        each other's change.
        """
        import hashlib

        with self._lock:
            current_bytes, version = self._config()
            if hashlib.sha256(current_bytes).hexdigest() != expected:
                raise Refused(409, "the repository's keys changed since they were read; try again")
            current = json.loads(current_bytes)
            new = _config_doc(data)
            enc_old, enc_new = current.get("encryption"), new.get("encryption")
            if not isinstance(enc_old, dict) or not isinstance(enc_new, dict):
                raise Refused(400, "only an encrypted repository has keys to change")
            same = {k: v for k, v in new.items() if k != "encryption"} == {
                k: v for k, v in current.items() if k != "encryption"
            } and {k: v for k, v in enc_new.items() if k != "slots"} == {
                k: v for k, v in enc_old.items() if k != "slots"
            }
            if not same or not enc_new.get("slots"):
                raise Refused(400, "a node may change only the key slots, and one must stay")
            if not self.meta.swap(CONFIG, json.dumps(new, indent=2).encode(), version):
                raise Refused(409, "the repository's keys changed since they were read; "
                              "try again")
        log.warning("node %s changed the key slots of repository %s", node.name, new["id"])

    def _fixed(self) -> tuple[bool, int]:
        """Return (encrypted, chunk size): fixed at ``repo init``, so read once."""
        if self._fixed_config is None:
            doc = self.config()
            size = doc.get("chunk_size")
            self._fixed_config = (
                doc.get("encryption") is not None,
                size if isinstance(size, int) else 4 << 20,
            )
        return self._fixed_config

    def _encrypted(self) -> bool:
        return self._fixed()[0]

    def _chunk_size(self) -> int:
        return self._fixed()[1]

    def max_chunk(self) -> int:
        """Return the largest chunk upload accepted."""
        return max(self._chunk_size(), FILE_CHUNK) + CHUNK_SLACK

    # --- owners and known chunks ------------------------------------------------------

    def owned(self, node: str, kind: str) -> list[str]:
        """Return the names of ``node``'s manifests of ``kind`` that exist."""
        names = self.meta.names(f"{OWNERS}/{node}/{kind}")
        keys = [f"{kind}/{n}" for n in names if _MANIFEST_NAME.match(n)]
        return sorted(k.split("/", 1)[1] for k in self.store.exists_many(keys))

    def owner_of(self, key: str) -> str | None:
        """Return the node a manifest belongs to (None: no owner recorded)."""
        kind, name = check_key(key)
        for node in self.meta.names(OWNERS):
            if self.meta.version(f"{OWNERS}/{node}/{kind}/{name}") is not None:
                return node
        return None

    def known(self, node: str, *, fresh: bool = False) -> frozenset[bytes]:
        """Return the digests named by ``node``'s existing manifests (cached per change).

        Over a directory a change is seen at once (the owner folders' mtimes); over a
        bucket the listing is trusted for :data:`KNOWN_RECHECK` seconds unless
        ``fresh`` asks to list again now.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._known.get(node)
        if cached and self.meta.remote and not fresh and now - cached[1] < KNOWN_RECHECK:
            return cached[2]
        stamp = tuple(self.meta.stamp(f"{OWNERS}/{node}/{kind}") for kind in MANIFEST_KINDS)
        if cached is not None and cached[0] == stamp:
            with self._lock:
                self._known[node] = (stamp, now, cached[2])
            return cached[2]
        digests: set[bytes] = set()
        for kind in MANIFEST_KINDS:
            for name in self.owned(node, kind):
                found = self.meta.read(f"{OWNERS}/{node}/{kind}/{name}")
                if found is not None:
                    digests.update(split_digests(found[0]))
        frozen = frozenset(digests)
        with self._lock:
            self._known[node] = (stamp, now, frozen)
        return frozen

    def known_stored(self, node: str) -> bytes:
        """Return ``node``'s known chunks that are stored, as concatenated digests."""
        known = self.known(node, fresh=True)
        return b"".join(sorted(self.stored(known)))

    def stored(self, digests: Iterable[bytes], *, fresh: bool = False) -> set[bytes]:
        """Return the subset of ``digests`` stored, as chunk objects or in packs (any not
        found lists the packs again: at once when ``fresh``, else at most every
        :data:`PACKS_RECHECK` seconds)."""
        digests = set(digests)
        found = {d for d in digests if self.packs.locate(d) is not None}
        keys = {f"chunks/{d.hex()}": d for d in digests - found}
        found |= {keys[k] for k in self.store.exists_many(keys)}
        if len(found) < len(digests):  # packed through another server meanwhile?
            where = self.packs.refresh(min_age=0.0 if fresh else PACKS_RECHECK)
            found |= {d for d in digests - found if d in where}
        return found

    def may_read(self, node: Node, key: str, session: Session | None = None) -> None:
        """Raise 403 unless ``node`` may read object ``key``."""
        if node.admin:
            return
        kind, name = check_key(key)
        if kind == "chunks":
            if not _HEX.match(name):
                raise forbidden(f"{key} is no chunk of node {node.name}")
            digest = bytes.fromhex(name)
            if digest in self.known(node.name) or (session and digest in session.uploaded):
                return
            with self._lock:
                cached = self._known.get(node.name)
            recent = cached is not None and time.monotonic() - cached[1] < 1.0
            if not recent and digest in self.known(node.name, fresh=True):
                return  # committed a moment ago, perhaps through another server
            raise forbidden(f"chunk {name[:16]}… is not named by any manifest of node {node.name}")
        if kind not in MANIFEST_KINDS:
            raise forbidden(f"{key} is not an object a node may read")
        if self.meta.version(f"{OWNERS}/{node.name}/{kind}/{name}") is not None:
            return
        if self.store.exists_many([key]):
            raise forbidden(f"{key} belongs to another node than {node.name}")
        raise Refused(404, f"no {kind.removesuffix('s')} {name} of node {node.name}")

    def listing(self, node: Node, kind: str) -> list[str]:
        """Return the names of ``kind`` that ``node`` may see."""
        if kind not in (*MANIFEST_KINDS, "chunks", "packs"):
            raise Refused(404, f"no object kind {kind!r}")
        if node.admin:
            return [k.split("/", 1)[1] for k in self.store.list(kind)]
        if kind == "packs":
            return []  # a node reads packed chunks as chunks: which pack holds one is ours
        if kind == "chunks":
            data = self.known_stored(node.name)
            return [d.hex() for d in split_digests(data)]
        return self.owned(node.name, kind)

    # --- sessions -------------------------------------------------------------------

    def begin(self, node: Node) -> Session:
        """Open a session for ``node``, holding the datastore's lock shared (prune waits)."""
        self._drop_idle()
        session = Session(secrets.token_hex(16), node.name, time.time())
        session.release = self._shared_lock()
        self.packs.forget()  # under the lock: no prune runs now, and one may have run
        try:
            doc = {"node": node.name, "started": session.started}
            self.meta.put(f"{SESSIONS}/{session.id}.json", json.dumps(doc).encode())
        except BaseException:
            session.release()
            raise
        with self._lock:
            self._sessions[session.id] = session
        return session

    def live_session(self, node: Node, sid: str) -> Session | None:
        """Return ``node``'s session ``sid`` if this server has it open (no I/O), else None."""
        if not _SID.match(sid):
            raise Refused(404, "no such session")
        with self._lock:
            session = self._sessions.get(sid)
        return None if session is None else self._owned(node, session)

    def session(self, node: Node, sid: str) -> Session:
        """Return ``node``'s open session ``sid`` (resumed from the store after a restart,
        or begun through another server over the same bucket)."""
        return self.live_session(node, sid) or self._owned(node, self._resume(sid))

    def _owned(self, node: Node, session: Session) -> Session:
        sid = session.id
        if session.node != node.name:
            raise forbidden(f"session {sid[:8]}… belongs to another node than {node.name}")
        session.used = time.monotonic()
        return session

    def _resume(self, sid: str) -> Session:
        found = self.meta.read(f"{SESSIONS}/{sid}.json")
        try:
            if found is None:
                raise ValueError("no session record")
            doc = json.loads(found[0])
            node, started = str(doc["node"]), float(doc["started"])
        except (ValueError, KeyError, TypeError):
            raise Refused(404, "the session is gone (finished, dropped after an hour "
                          "unused, or never begun); start the backup again") from None
        session = Session(sid, node, started)
        # A torn last record was never acknowledged: split_digests drops it.
        session.uploaded = set(split_digests(self.meta.records(f"{SESSIONS}/{sid}.chunks") or b""))
        session.release = self._shared_lock()
        self.packs.forget()  # under the lock: no prune runs now, and one may have run
        with self._lock:
            kept = self._sessions.setdefault(sid, session)
        if kept is not session:
            session.release()
        log.info("resumed session %s of node %s (%d chunks)", sid[:8], kept.node,
                 len(kept.uploaded))
        return kept

    def _shared_lock(self) -> Callable[[], None]:
        try:
            return self.meta.shared_lock()
        except Busy:
            raise Refused(503, "the datastore is being pruned on the server; try again "
                          "when the prune has finished") from None

    def end(self, session: Session) -> None:
        """Close ``session``: forget it, release its lock, remove its records."""
        with self._lock:
            self._sessions.pop(session.id, None)
        release, session.release = session.release, None
        if release is not None:
            release()
        for name in (f"{session.id}.json", f"{session.id}.chunks"):
            self.meta.delete(f"{SESSIONS}/{name}")

    def close(self) -> None:
        """Release every session's lock (the records stay: a restarted server resumes them)."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            release, session.release = session.release, None
            if release is not None:
                release()

    def _drop_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [s for s in self._sessions.values() if now - s.used > SESSION_IDLE]
        for session in idle:
            log.info("dropped session %s of node %s: unused for an hour", session.id[:8],
                     session.node)
            self.end(session)
        for name in self.meta.idle(SESSIONS, SESSION_IDLE):
            with self._lock:
                live = name.split(".", 1)[0] in self._sessions
            if not live:
                self.meta.delete(f"{SESSIONS}/{name}")

    def _record(self, session: Session, *digests: bytes) -> None:
        """Make ``digests``' records in ``session`` durable, with those of uploads in flight."""
        cond = session.recorded
        with cond:
            session.pending.extend(digests)
            mine = session.batch
            while session.flushed < mine:
                if session.flushing:
                    cond.wait()
                    continue
                batch, session.pending = session.pending, []
                number = session.batch
                session.batch += 1
                session.flushing = True
                cond.release()
                try:
                    self.meta.append(f"{SESSIONS}/{session.id}.chunks", b"".join(batch))
                except BaseException:
                    cond.acquire()
                    session.pending[:0] = batch  # the next flush records them
                    session.flushing = False
                    cond.notify_all()
                    raise
                cond.acquire()
                session.flushed = number
                session.flushing = False
                session.uploaded.update(batch)
                cond.notify_all()

    # --- uploads and commits ------------------------------------------------------------

    def upload_chunk(self, session: Session, name: str, body: bytes) -> None:
        """Check ``body`` against chunk id ``name``, store it once, and acknowledge it."""
        if not _HEX.match(name):
            raise Refused(400, f"{name!r} is no chunk id (64 hex digits)")
        digest, key = bytes.fromhex(name), f"chunks/{name}"
        if digest in session.uploaded:
            return
        try:
            if self._encrypted():
                check_sealed(key, body)
            else:
                verify_chunk(body, digest, max_size=self.max_chunk())
        except DamagedObject:
            raise Refused(
                422, f"the upload of chunk {name[:16]}… does not match its id: refused"
            ) from None
        if not self.store.exists_many([key]):
            self.store.put(key, body)
        self._record(session, digest)

    def upload_pack(self, session: Session, name: str, body: bytes) -> None:
        """Verify pack ``name`` and every piece in it, store it once, acknowledge its chunks."""
        if not _HEX.match(name):
            raise Refused(400, f"{name!r} is no pack name (64 hex digits)")
        key = f"packs/{name}"
        try:
            entries = verify_pack(key, body, sealed=self._encrypted(),
                                  max_chunk=self.max_chunk())
        except DamagedObject as e:
            raise Refused(422, f"the upload of {key[:22]}… is refused: {e}") from None
        if not self.store.exists_many([key]):
            self.store.put(key, body)
        self.packs.add(key, entries)
        self._record(session, *(d for d, _ in entries))

    def commit(self, node: Node, session: Session, key: str, manifest: bytes,
               refs: bytes) -> bool:
        """Commit manifest ``key`` of ``session``; return False when it was already there.

        ``refs`` lists the chunks the manifest names; a plain manifest's own table is
        used instead. Every one must be known to the session and stored.
        """
        kind, name = check_key(key)
        if kind not in MANIFEST_KINDS or not _MANIFEST_NAME.match(name):
            raise Refused(400, f"{key} cannot name a manifest")
        if self.store.exists_many([key]):
            if self.owner_of(key) == node.name and self.store.get(key) == manifest:
                self.end(session)
                return False  # a retried commit whose answer was lost
            raise Refused(409, f"{key} already exists in the datastore")
        digests = self._manifest_refs(key, kind, manifest, refs)
        known = self.known(node.name)
        foreign = [d for d in digests if d not in known and d not in session.uploaded]
        if foreign:
            raise forbidden(
                f"{key} names {len(foreign)} chunks that node {node.name} neither uploaded "
                "in this session nor named in its own manifests"
            )
        missing = digests - self.stored(digests, fresh=True)
        if missing:
            raise Refused(409, f"{key} names {len(missing)} chunks no longer stored "
                          "(pruned meanwhile); run the backup again")
        self.store.sync()
        self.meta.put(f"{OWNERS}/{node.name}/{kind}/{name}", b"".join(sorted(digests)))
        self.store.put(key, manifest, durable=True)
        with self._lock:
            self._known.pop(node.name, None)
        self.end(session)
        log.info("node %s committed %s (%d chunks, %d new in the session)", node.name, key,
                 len(digests), len(session.uploaded))
        return True

    def _manifest_refs(self, key: str, kind: str, manifest: bytes, refs: bytes) -> set[bytes]:
        try:
            if self._encrypted():
                check_sealed(key, manifest)
            elif kind == "images":
                return decode_manifest(manifest, key).stored_digests()
            else:
                return decode_file_manifest(manifest, key).stored_digests()
        except DamagedObject as e:
            raise Refused(422, f"the manifest upload is refused: {e}") from None
        if len(refs) % ID_BYTES:
            raise Refused(400, "the chunk list is not a whole number of 32-byte digests")
        return set(split_digests(refs))

    # --- reading and deleting ---------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """Return object ``key`` as stored (404 when missing); a packed chunk's piece
        as the chunk object would be."""
        kind, name = check_key(key)
        digest = bytes.fromhex(name) if kind == "chunks" and _HEX.match(name) else None
        for attempt in range(2):
            # A chunk object comes first: a pack uploaded later cannot stand in for it.
            packed = digest is not None and not self.store.exists_many([key])
            entry = self.packs.locate(digest) if packed and digest is not None else None
            try:
                if entry is None:
                    return self.store.get(key)
                piece = self.store.get_range(entry.key, entry.offset, entry.length)
                if len(piece) == entry.length:
                    return piece
            except ObjectMissing:
                pass
            if digest is None or attempt:
                break
            self.packs.refresh(min_age=PACKS_RECHECK)  # pruned and rewritten, or packed
            # through another server
        raise Refused(404, f"object {key} is missing from the datastore")

    def delete(self, node: Node, key: str) -> None:
        """Delete a manifest (admin only): its owner record goes with it; chunks wait for prune."""
        if not node.admin:
            raise forbidden(
                f"node {node.name} may not delete {key}: deleting is the server's (an admin "
                "token, or root on the server host)"
            )
        kind, name = check_key(key)
        if kind not in MANIFEST_KINDS:
            raise forbidden("chunks are deleted by prune on the server, not one by one")
        self.store.delete(key)
        for owner in self.meta.names(OWNERS):
            self.meta.delete(f"{OWNERS}/{owner}/{kind}/{name}")
        with self._lock:
            self._known.clear()
        log.warning("admin %s deleted %s", node.name, key)


def _config_doc(data: bytes) -> dict[str, object]:
    from core.repo.repository import RepoConfig

    if len(data) > 1 << 20:
        raise Refused(413, "a repository config is at most 1 MiB")
    try:
        doc = json.loads(data)
        RepoConfig(**doc)
    except (ValueError, TypeError) as e:
        raise Refused(400, f"not a repository config: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != 1:
        raise Refused(400, "not a repository config of format 1")
    return doc
