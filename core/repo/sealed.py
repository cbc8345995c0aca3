"""An encrypted repository's objects, and opening it: the sealed store and the unlock.

:class:`SealedStore` wraps the store that holds the bytes: every ``put`` seals the
object under its key (name) and every ``get`` opens it, so ``Repository`` and all
above it handle plain objects while the disk, a server or a bucket see only sealed
ones. :func:`unlock` finds the keys: a key file (``$BLOCKVAULT_KEY_FILE``), the
passphrase from ``$BLOCKVAULT_PASSPHRASE_FILE`` or ``$BLOCKVAULT_PASSPHRASE_COMMAND``,
or the prompt a front end set (:func:`set_prompt`) — never a command-line argument.
Unwrapped keys stay in this process's memory, one entry per repository, so a
process asks once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from core.repo.crypto import (
    KEY_FILE_ENV,
    PASSPHRASE_COMMAND_ENV,
    PASSPHRASE_FILE_ENV,
    Keys,
    LockedRepository,
    Prompt,
    import_keys,
    passphrase_from_env,
    unwrap,
)
from core.repo.store import Buffers, LocalStore

if TYPE_CHECKING:
    from core.repo.remote import RemoteStore
    from core.repo.repository import RepoConfig
    from core.repo.s3 import S3Store

unlocked: dict[str, Keys] = {}
_unlocking = threading.Lock()
"""The keys this process unwrapped, by repository id."""
_prompt: Prompt | None = None


def set_prompt(prompt: Prompt | None) -> None:
    """Let :func:`unlock` ask a person (a terminal's masked input, the console's dialog)."""
    global _prompt
    _prompt = prompt


def secret_given() -> bool:
    """True when the environment names a key file or a passphrase source."""
    return any(
        os.environ.get(v) for v in (KEY_FILE_ENV, PASSPHRASE_FILE_ENV, PASSPHRASE_COMMAND_ENV)
    )


def unlock(location: str, config: RepoConfig) -> Keys:
    """Return the keys of the encrypted repository ``config`` describes.

    Raises:
        LockedRepository: nothing given opens one of its key slots (one line naming
            the repository and where a passphrase can come from).
    """
    sealed = config.encryption
    assert sealed is not None
    cached = unlocked.get(config.id)
    if cached is not None:
        return cached
    with _unlocking:  # one question at a time: a second thread then finds the keys
        cached = unlocked.get(config.id)
        return cached if cached is not None else _unlock(location, config, sealed)


def _unlock(location: str, config: RepoConfig, sealed: dict[str, object]) -> Keys:
    cipher = str(sealed.get("cipher"))
    key_file = os.environ.get(KEY_FILE_ENV)
    if key_file:
        try:
            with open(key_file, encoding="utf-8") as f:
                text = f.read(8192)
        except OSError as e:
            raise LockedRepository(
                f"cannot read {KEY_FILE_ENV} ({key_file}): {e.strerror}"
            ) from None
        keys = import_keys(text, config.id, cipher)
        if keys.key_id != sealed.get("key_id"):
            raise LockedRepository(f"the key file {key_file} does not hold {location}'s keys")
        unlocked[config.id] = keys
        return keys
    passphrase = passphrase_from_env()
    asked = passphrase is None
    if passphrase is None and _prompt is not None:
        passphrase = _prompt(f"passphrase of {location}")
    if passphrase is None:
        raise LockedRepository(
            f"{location} is encrypted: give its passphrase with {PASSPHRASE_FILE_ENV} or "
            f"{PASSPHRASE_COMMAND_ENV} (or run on a terminal to be asked); nothing was done"
        )
    opened = open_slot(config, passphrase)
    if opened is None:
        where = "typed" if asked else "given"
        raise LockedRepository(
            f"the passphrase {where} opens none of the keys of {location}; nothing was done"
        )
    unlocked[config.id] = opened
    return opened


def unlock_with(location: str, config: RepoConfig, passphrase: bytes) -> Keys | None:
    """Return (and keep in memory) the keys ``passphrase`` opens, else None.

    For a process that is handed the passphrase (the agent, by the console that asked
    for it) rather than reading it from its environment.
    """
    with _unlocking:
        keys = open_slot(config, passphrase)
        if keys is not None:
            unlocked[config.id] = keys
        return keys


def open_slot(config: RepoConfig, passphrase: bytes) -> Keys | None:
    """Return the keys when ``passphrase`` opens one of ``config``'s slots, else None."""
    sealed = config.encryption
    assert sealed is not None
    for slot in sealed.get("slots") or []:
        keys = unwrap(slot, passphrase, str(sealed.get("cipher")), config.id)
        if keys is not None and keys.key_id == sealed.get("key_id"):
            return keys
    return None


def forget_keys(repo_id: str) -> None:
    """Drop the keys this process holds for repository ``repo_id`` (a slot was removed)."""
    unlocked.pop(repo_id, None)


class SealedStore:
    """The object API over another store, sealing on ``put`` and opening on ``get``."""

    def __init__(self, inner: LocalStore | RemoteStore | S3Store, keys: Keys) -> None:
        self.inner = inner
        self.keys = keys
        self.readers = inner.readers

    def put(self, key: str, data: Buffers, *, durable: bool = False) -> None:
        """Seal ``data`` as object ``key`` and store it."""
        parts: Sequence[bytes | bytearray | memoryview] = (
            [data] if isinstance(data, bytes | bytearray | memoryview) else data
        )
        self.inner.put(key, self.keys.seal(key, parts), durable=durable)

    def get(self, key: str) -> bytes:
        """Return the plain bytes of object ``key`` (DamagedObject when it does not open)."""
        return self.keys.open(key, self.inner.get(key))

    def exists_many(self, keys: Iterable[str]) -> set[str]:
        return self.inner.exists_many(keys)

    def list(self, kind: str) -> Iterator[str]:
        return self.inner.list(kind)

    def strays(self, kind: str) -> Iterator[tuple[str, str]]:
        return self.inner.strays(kind)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def size_of(self, key: str) -> int:
        return self.inner.size_of(key)

    def sync(self) -> None:
        self.inner.sync()

    def commit(self, key: str, data: Buffers, refs: Iterable[bytes]) -> None:
        """Seal manifest ``data`` and commit it (the refs travel as they are: digests are keyed)."""
        parts: Sequence[bytes | bytearray | memoryview] = (
            [data] if isinstance(data, bytes | bytearray | memoryview) else data
        )
        self.inner.commit(key, self.keys.seal(key, parts), refs)


__all__ = [
    "SealedStore", "forget_keys", "open_slot", "set_prompt", "unlock", "unlock_with"
]
