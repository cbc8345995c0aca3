"""A blockvault repository: chunks and image manifests behind the object API.

The embedded default is a local directory (``/var/lib/blockvault/repo`` for root),
created on first use. An image becomes visible only when its manifest is stored,
and the manifest is stored only after every chunk it names is durable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from core.repo.crypto import OVERHEAD as SEAL_OVERHEAD
from core.repo.crypto import (
    PASSPHRASE_COMMAND_ENV,
    PASSPHRASE_FILE_ENV,
    Keys,
    LockedRepository,
    new_keys,
    wrap,
)
from core.repo.filemanifest import (
    FileManifest,
    decode_file_manifest,
    encode_file_manifest,
)
from core.repo.format import (
    DamagedObject,
    ImageManifest,
    chunk_digest,
    chunk_key,
    decode_chunk,
    decode_manifest,
    encode_manifest,
)
from core.repo.packs import PACK_BELOW, Entry, Packer, PackMap
from core.repo.remote import RemoteStore, connect, is_remote, normalize_url
from core.repo.s3 import S3Store, is_s3, normalize_location
from core.repo.sealed import SealedStore, secret_given, unlock, unlocked
from core.repo.store import LocalStore, ObjectMissing, RepositoryError

T = TypeVar("T")
OBJECT_KINDS = ("chunks", "packs", "images", "increments")
_CHUNK_NAME = re.compile(r"^[0-9a-f]{64}$")


def digest_of_key(key: str) -> bytes | None:
    """Return the digest a chunk's key names, or None when it is named like no chunk."""
    name = key.split("/", 1)[1]
    return bytes.fromhex(name) if _CHUNK_NAME.match(name) else None


class NoSuchManifest(RepositoryError):
    """The image or increment asked for is not in the repository."""


REPO_ENV = "BLOCKVAULT_REPO"
ROOT_DEFAULT = "/var/lib/blockvault/repo"
CONFIG_NAME = "config.json"
DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_KEEP_VERSIONS = 3


def canonical_location(location: str | None) -> str:
    """Return ``location`` (None: the default) as two names for one repository compare equal.

    A directory by its real path; a server by ``scheme://host:port``.
    """
    location = location or default_location()
    if is_s3(location):
        return normalize_location(location)
    return normalize_url(location) if is_remote(location) else os.path.realpath(location)


def default_location() -> str:
    """Return ``$BLOCKVAULT_REPO``, else the default for this user."""
    env = os.environ.get(REPO_ENV)
    if env:
        return env
    if os.geteuid() == 0:
        return ROOT_DEFAULT
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "blockvault", "repo")


@dataclass(frozen=True)
class RepoConfig:
    """What a repository fixes at ``repo init``."""

    id: str
    format: int
    chunk_size: int
    keep_versions: int
    """Images kept active per volume; older ones become inactive."""
    created: str
    encryption: dict[str, Any] | None = None
    """None: plain. Else ``cipher``, ``key_id`` and ``slots`` (:mod:`core.repo.crypto`)."""


def _write_config(location: str, config: RepoConfig) -> None:
    """Write ``config`` durably, whole or not at all (temporary file, fsync, rename)."""
    tmp = os.path.join(location, f".{CONFIG_NAME}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(asdict(config), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(location, CONFIG_NAME))


def _parse_config(raw: bytes, where: str) -> RepoConfig:
    try:
        return RepoConfig(**json.loads(raw))
    except (ValueError, TypeError) as e:
        raise RepositoryError(f"the config of {where} is unreadable or damaged: {e}") from None


def _new_config(
    keep_versions: int, chunk_size: int, encryption: str, passphrase: bytes | None
) -> tuple[RepoConfig, Keys | None]:
    """Return a new repository's config, and its fresh keys when it is encrypted."""
    repo_id = uuid.uuid4().hex
    created = now_iso()
    if encryption == "none":
        return RepoConfig(repo_id, 1, chunk_size, keep_versions, created), None
    assert passphrase is not None
    keys = new_keys(encryption)
    slot = wrap(keys, passphrase, "default", repo_id, created)
    sealed = {"cipher": keys.cipher, "key_id": keys.key_id, "slots": [slot]}
    return RepoConfig(repo_id, 1, chunk_size, keep_versions, created, sealed), keys


def now_iso() -> str:
    """Return the current UTC time as ISO 8601 (milliseconds: two images a second apart sort)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Repository:
    """Chunks and image manifests in one :class:`LocalStore`, sealed when encrypted."""

    def __init__(
        self,
        location: str,
        config: RepoConfig,
        keys: Keys | None = None,
        remote: RemoteStore | S3Store | None = None,
    ) -> None:
        self.location = location
        self.config = config
        self.keys = keys
        """The unwrapped keys of an encrypted repository (None: plain, or locked)."""
        self.remote = remote
        """The store when the repository is not a directory: a server's, or a bucket's."""
        self.local: LocalStore | RemoteStore | S3Store = remote or LocalStore(location)
        """The objects as stored (sealed, in an encrypted repository)."""
        self.store: LocalStore | RemoteStore | S3Store | SealedStore = (
            self.local if keys is None else SealedStore(self.local, keys)
        )
        self.digest: Callable[[bytes | memoryview], bytes] = (
            chunk_digest if keys is None else keys.digest
        )
        """What names a chunk: BLAKE3 of its content, keyed with the id key when encrypted."""
        self.packs: PackMap | None = (
            None
            if isinstance(self.local, RemoteStore)  # the server finds packed chunks itself
            else PackMap(self.local, self._pack_sizes if isinstance(self.local, S3Store) else None)
        )
        """Where packed chunks lie (None through a server: it reads them out of its packs)."""
        self.packer = Packer(self._store_pack, self._stored_pack)
        """Small chunks on their way into a pack (stored at the latest before a manifest)."""
        self._made_directory = False
        self.created = False
        """True when this very opening created the repository (see :meth:`discard_unused`)."""
        self.damaged: dict[str, DamagedObject] = {}
        """Manifests the last :meth:`images` / :meth:`increments` could not read, by key
        (``images/ID``): each is left out of what they return, and reported by those
        who show the repository (``query image``, ``repo check``, a restore)."""

    # --- opening ---------------------------------------------------------------

    @classmethod
    def init(
        cls,
        location: str,
        *,
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        encryption: str = "none",
        passphrase: bytes | None = None,
    ) -> Repository:
        """Create a repository at ``location`` (an empty or missing directory).

        With ``encryption`` (a cipher of :data:`core.repo.crypto.CIPHERS`) fresh keys
        are made and wrapped by ``passphrase`` in the slot named "default".
        """
        if encryption != "none" and not passphrase:
            raise LockedRepository(
                "an encrypted repository needs a passphrase: type it at the prompt, or "
                f"give it with {PASSPHRASE_FILE_ENV} or {PASSPHRASE_COMMAND_ENV}"
            )
        if keep_versions < 1:
            raise RepositoryError(f"--keep-versions must be at least 1, not {keep_versions}")
        if is_remote(location) or is_s3(location):
            return cls._init_remote(location, keep_versions, chunk_size, encryption, passphrase)
        if os.path.exists(os.path.join(location, CONFIG_NAME)):
            raise RepositoryError(f"{location} already holds a blockvault repository")
        if os.path.isdir(location) and os.listdir(location):
            raise RepositoryError(
                f"{location} is not empty and not a blockvault repository; choose another path"
            )
        made_directory = not os.path.isdir(location)
        try:
            os.makedirs(location, mode=0o700, exist_ok=True)
        except OSError as e:
            raise RepositoryError(f"cannot create repository {location}: {e.strerror}") from None
        config, keys = _new_config(keep_versions, chunk_size, encryption, passphrase)
        _write_config(location, config)
        if keys is not None:
            unlocked[config.id] = keys
        repo = cls(location, config, keys)
        repo.created, repo._made_directory = True, made_directory
        return repo

    @classmethod
    def _init_remote(
        cls,
        location: str,
        keep_versions: int,
        chunk_size: int,
        encryption: str,
        passphrase: bytes | None,
    ) -> Repository:
        remote: RemoteStore | S3Store
        if is_s3(location):
            remote = S3Store(location)  # the config is created only where there is none
        else:
            remote = connect(location)
            if remote.config_bytes() is not None:
                raise RepositoryError(
                    f"the server {remote.url} already holds a blockvault repository"
                )
        config, keys = _new_config(keep_versions, chunk_size, encryption, passphrase)
        remote.create_config(json.dumps(asdict(config), indent=2).encode())
        if keys is not None:
            unlocked[config.id] = keys
        return cls(remote.root, config, keys, remote)

    @classmethod
    def open(
        cls, location: str | None = None, *, create: bool = True, locked: bool = False
    ) -> Repository:
        """Open the repository at ``location`` (default: :func:`default_location`).

        The embedded default is created on first use; a path the user named must
        already be a repository unless ``create`` is true. An encrypted repository is
        unlocked (:func:`unlock`) unless ``locked`` is asked for: then it opens without
        its keys when nothing gives them, for what needs none (``repo check``).

        Raises:
            LockedRepository: encrypted, and no passphrase or key file opens it.
        """
        location = location or default_location()
        if is_remote(location) or is_s3(location):
            return cls._open_remote(location, locked)
        location = os.path.abspath(location)
        path = os.path.join(location, CONFIG_NAME)
        if not os.path.exists(path):
            if create and (not os.path.exists(location) or not os.listdir(location)):
                return cls.init(location)
            raise RepositoryError(
                f"{location} is not a blockvault repository; create it with "
                f"'blockvault repo init --repo {location}'"
            )
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise RepositoryError(f"{path} is unreadable or damaged: {e}") from None
        return cls._opened(location, _parse_config(raw, path), locked)

    @classmethod
    def _open_remote(cls, location: str, locked: bool) -> Repository:
        remote = S3Store(location) if is_s3(location) else connect(location)
        raw = remote.config_bytes()
        if raw is None:
            where = remote.root if is_s3(location) else f"the server {remote.root}"
            raise RepositoryError(
                f"{where} holds no repository yet; create it with "
                f"'blockvault repo init --repo {remote.root}'"
            )
        return cls._opened(remote.root, _parse_config(raw, remote.root), locked, remote)

    @classmethod
    def _opened(
        cls,
        location: str,
        config: RepoConfig,
        locked: bool,
        remote: RemoteStore | S3Store | None = None,
    ) -> Repository:
        if config.format != 1:
            raise RepositoryError(f"{location} has repository format {config.format}; unsupported")
        if config.encryption is None:
            return cls(location, config, remote=remote)
        try:
            return cls(location, config, unlock(location, config), remote)
        except LockedRepository:
            if locked and not secret_given():
                return cls(location, config, remote=remote)
            raise

    @property
    def encrypted(self) -> bool:
        """True when the repository's objects are sealed (:mod:`core.repo.crypto`)."""
        return self.config.encryption is not None

    def save_slots(self, slots: list[dict[str, Any]]) -> None:
        """Replace the key slots (the wrapped copies of the keys); at least one stays."""
        assert self.config.encryption is not None and slots
        sealed = {**self.config.encryption, "slots": slots}
        new = replace(self.config, encryption=sealed)
        if self.remote is not None:
            previous = self.remote.config_bytes()
            if previous is None or RepoConfig(**json.loads(previous)) != self.config:
                raise RepositoryError(
                    f"the repository's keys on {self.location} changed meanwhile; run the "
                    "command again"
                )
            self.remote.replace_config(json.dumps(asdict(new), indent=2).encode(), previous)
        else:
            _write_config(self.location, new)
        self.config = new

    def discard_unused(self) -> None:
        """Remove a repository this opening created when nothing was stored in it.

        A refused or failed first backup leaves no repository behind. Only what
        :meth:`init` and the lock made is removed, and the directory only when empty;
        any object, manifest or unknown file keeps the repository as it is.
        """
        if not self.created or self.remote is not None:
            return
        for kind in OBJECT_KINDS:
            top = os.path.join(self.location, kind)
            if os.path.isdir(top) and any(os.scandir(top)):
                return
        for name in OBJECT_KINDS:
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(os.path.join(self.location, name))
        for name in (CONFIG_NAME, "lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.location, name))
        if self._made_directory:
            with contextlib.suppress(OSError):
                os.rmdir(self.location)  # only if nothing else is there
        self.created = False

    # --- locking -----------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, exclusive: bool = False) -> Iterator[None]:
        """Hold the repository lock: shared for backups and restores, exclusive for prune.

        Prune deletes chunks no manifest names; a backup in flight may be about to
        name them, so the two never overlap. On a server the server holds the lock for
        each session, and prune runs there; in a bucket the lock is an object of its own.
        """
        if self.packs is not None:
            self.packs.forget()  # a prune may have rewritten packs since they were read
        if isinstance(self.remote, S3Store):
            with self.remote.lock(exclusive):
                yield
            return
        if self.remote is not None:
            if exclusive:
                raise RepositoryError(
                    f"prune of the server {self.location} runs on the server host: "
                    "'blockvault repo prune --repo DATASTORE' there"
                )
            yield
            return
        try:
            fd = os.open(os.path.join(self.location, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            if exclusive or e.errno not in (errno.EROFS, errno.EACCES):
                raise RepositoryError(
                    f"cannot lock repository {self.location}: {e.strerror}"
                ) from None
            # A repository on read-only media: nothing can prune it under a reader.
            yield
            return
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                what = "a backup or restore" if exclusive else "a prune"
                raise RepositoryError(
                    f"repository {self.location} is busy ({what} is running); try again later"
                ) from None
            yield
        finally:
            os.close(fd)

    # --- chunks ----------------------------------------------------------------------

    def chunk_digests(self) -> list[bytes]:
        """Return the digest of every chunk stored as an object of its own (not packed)."""
        return [d for key in self.store.list("chunks") if (d := digest_of_key(key)) is not None]

    def strays(self) -> list[tuple[str, str]]:
        """Return ``(where, why)`` for every entry of the repository's folders that is no object.

        Such entries are never read, listed or deleted (``repo check`` reports them).
        """
        out = [s for kind in OBJECT_KINDS for s in self.store.strays(kind)]
        for kind in ("chunks", "packs"):
            for key in self.store.list(kind):
                name = key.split("/", 1)[1]
                if not _CHUNK_NAME.match(name):
                    where = os.path.join(self.location, kind, name[:2], name)
                    out.append((where, f"is named like no {kind[:-1]} (named by 64 hex digits)"))
        return out

    def stored_chunks(self, digests: Iterable[bytes]) -> set[bytes]:
        """Return the subset of ``digests`` already stored (as objects, in packs, or on
        their way into a pack in this process)."""
        digests = list(digests)
        found = {d for d in digests if self.packer.pending(d)}
        if self.packs is not None:
            found.update(d for d in digests if self.packs.locate(d) is not None)
        keys = {chunk_key(d): d for d in digests if d not in found}
        return found | {keys[k] for k in self.store.exists_many(keys)}

    def put_chunk(self, digest: bytes, stored: Sequence[bytes | memoryview], plain: int) -> None:
        """Store an encoded chunk of ``plain`` bytes (see :func:`core.repo.format.encode_chunk`):
        a small one goes into a pack, sealed first in an encrypted repository."""
        if sum(len(p) for p in stored) + (SEAL_OVERHEAD if self.keys else 0) >= PACK_BELOW:
            self.store.put(chunk_key(digest), stored)
        elif self.keys is None:
            self.packer.add(digest, stored, plain)
        else:
            self.packer.add(digest, self.keys.seal(chunk_key(digest), stored), plain)

    def flush(self) -> None:
        """Store the chunks waiting in the packer (a manifest that names them comes after)."""
        self.packer.flush()

    def _pack_sizes(self) -> dict[str, int]:
        assert isinstance(self.local, S3Store)
        return self.local.sizes("packs")  # one listing: names and sizes

    def _store_pack(self, key: str, parts: Sequence[bytes | memoryview]) -> None:
        self.local.put(key, parts)

    def _stored_pack(self, key: str, entries: list[tuple[bytes, Entry]]) -> None:
        if self.packs is not None:
            self.packs.add(key, entries)
        if isinstance(self.local, RemoteStore):
            self.local.note_stored(d for d, _ in entries)

    def get_chunk(self, digest: bytes) -> bytes:
        """Return a chunk's plain bytes, verified against its digest."""
        waiting = self.packer.waiting(digest)
        if waiting is not None:  # stored by this process, on its way into a pack
            return decode_chunk(self.open_piece(digest, waiting), digest, name=self.digest)
        entry = None if self.packs is None else self.packs.locate(digest)
        if entry is None:
            try:
                return decode_chunk(self.store.get(chunk_key(digest)), digest, name=self.digest)
            except ObjectMissing:
                if self.packs is None:
                    raise
                entry = self.packs.refresh().get(digest)  # packed by another process since
                if entry is None:
                    raise
        return decode_chunk(self.read_piece(digest, entry), digest, name=self.digest)

    def read_piece(self, digest: bytes, entry: Entry) -> bytes:
        """Return the stored bytes of a packed chunk, opened in an encrypted repository."""
        assert self.packs is not None
        raw = self.packs.store.get_range(entry.key, entry.offset, entry.length)
        if len(raw) != entry.length:
            raise DamagedObject(f"{entry.key} is damaged: shorter than its index says")
        return self.open_piece(digest, raw)

    def open_piece(self, digest: bytes, raw: bytes) -> bytes:
        """Return a packed chunk's stored bytes as a chunk object's (opened when sealed)."""
        return raw if self.keys is None else self.keys.open(chunk_key(digest), raw)

    # --- manifests: images and increments ----------------------------------------------
    # Both kinds live under a folder of their own, named by id; a manifest is stored
    # last and durably, after its chunks, so a visible manifest never lacks a chunk.

    def _put_manifest(
        self, folder: str, object_id: str, data: bytes, refs: Iterable[bytes]
    ) -> None:
        self.flush()
        self.store.commit(f"{folder}/{object_id}", data, refs)

    def _ids(self, folder: str) -> list[str]:
        return sorted(k.split("/", 1)[1] for k in self.store.list(folder))

    def _readable(self, folder: str, load: Callable[[str], T]) -> list[T]:
        """Return every manifest of ``folder`` that reads; note the others in :attr:`damaged`."""
        for key in [k for k in self.damaged if k.startswith(folder + "/")]:
            del self.damaged[key]
        out = []
        for object_id in self._ids(folder):
            try:
                out.append(load(object_id))
            except DamagedObject as e:
                self.damaged[f"{folder}/{object_id}"] = e
            except NoSuchManifest:
                continue  # deleted since it was listed (an unreachable store fails the call)
        return out

    def _get_manifest(self, folder: str, object_id: str, decode: Callable[[bytes, str], T]) -> T:
        key = f"{folder}/{object_id}"
        try:
            return decode(self.store.get(key), key)
        except ObjectMissing:
            what = folder.removesuffix("s")
            raise NoSuchManifest(
                f"no {what} {object_id} in {self.location}; see 'blockvault query image'"
            ) from None

    def put_image(self, manifest: ImageManifest) -> None:
        """Make every chunk durable, then store the manifest: the image becomes visible."""
        self._put_manifest(
            "images", manifest.id, encode_manifest(manifest), manifest.stored_digests()
        )

    def image_ids(self) -> list[str]:
        """Return the ids of every image (ids sort by time)."""
        return self._ids("images")

    def image(self, image_id: str) -> ImageManifest:
        """Return one image's manifest."""
        return self._get_manifest("images", image_id, decode_manifest)

    def images(self) -> list[ImageManifest]:
        """Return every readable image's manifest, oldest first (see :attr:`damaged`)."""
        return self._readable("images", self.image)

    def delete_image(self, image_id: str) -> None:
        """Remove an image's manifest; its chunks stay until ``repo prune``."""
        self.store.delete(f"images/{image_id}")

    def put_increment(self, manifest: FileManifest) -> None:
        """Make every chunk durable, then store the file manifest: the increment is visible."""
        self._put_manifest(
            "increments", manifest.id, encode_file_manifest(manifest), manifest.stored_digests()
        )

    def increment_ids(self) -> list[str]:
        """Return the ids of every increment (ids sort by time)."""
        return self._ids("increments")

    def increment(self, increment_id: str) -> FileManifest:
        """Return one increment's file manifest."""
        return self._get_manifest("increments", increment_id, decode_file_manifest)

    def increments(self) -> list[FileManifest]:
        """Return every readable increment's file manifest, oldest first (see :attr:`damaged`)."""
        return self._readable("increments", self.increment)

    def delete_increment(self, increment_id: str) -> None:
        """Remove an increment's manifest; its chunks stay until ``repo prune``."""
        self.store.delete(f"increments/{increment_id}")


@dataclass(frozen=True)
class RepoStatus:
    """Where the repository is, in words, and whether it answered when last asked."""

    where: str
    """"repo /var/lib/blockvault/repo", "server host:port, node web1" or "bucket b/prefix"."""
    answers: bool
    problem: str | None = None
    """The one-line reason it did not answer (None when it did)."""


def repository_status(location: str | None) -> RepoStatus:
    """Return where ``location`` (None: the default) is and whether it answers now.

    A directory answers when it holds a repository (or is the embedded default, made on
    first use); a server when it accepts this node's token and serves its config. Never
    raises: a front end shows the result, it does not act on it.
    """
    location = location or default_location()
    if not is_remote(location) and not is_s3(location):
        path = os.path.abspath(location)
        if os.path.exists(os.path.join(path, CONFIG_NAME)) or location == default_location():
            return RepoStatus(f"repo {path}", True)
        return RepoStatus(f"repo {path}", False, f"{path} is not a blockvault repository")
    kind = "bucket" if is_s3(location) else "server"
    where = f"{kind} {location.split('://', 1)[1].rstrip('/')}"
    try:
        store = S3Store(location) if is_s3(location) else connect(location)
    except RepositoryError as e:
        return RepoStatus(where, False, e.message)
    try:
        holder = store.root
        if isinstance(store, RemoteStore):
            where = f"server {store.url.split('://', 1)[1]}, node {store.node}"
            holder = f"the server {store.url}"
        if store.config_bytes() is None:
            return RepoStatus(where, False, f"{holder} holds no repository yet")
        return RepoStatus(where, True)
    except RepositoryError as e:
        return RepoStatus(where, False, e.message)
    finally:
        store.close()
