"""Encryption at rest: every object sealed on this host, keys wrapped by passphrases.

An encrypted repository has two random 32-byte keys, made at ``repo init``: the data
key, which seals objects, and the id key, which names chunks (keyed BLAKE3 of the
plain content), so the store cannot confirm a guess of a chunk's content and dedup
stays within the keys' domain. Both are kept in the repository's config only wrapped,
in one or more *slots*: AES-256-GCM under a key derived from a passphrase with
Argon2id (or under a key file's key). Changing a passphrase rewraps; no data moves.

A sealed object is ``BVE1 | cipher | salt(16) | nonce(12) | ciphertext+tag |
BLAKE3(all before)``. Opening checks the AEAD tag (which covers every byte but the
checksum), not the checksum again. Each object gets its own key, the keyed BLAKE3 of its random
salt under the data key, so no (key, nonce) pair ever repeats however many objects a
repository holds; the object's key (``chunks/…``, ``images/…``) is the associated
data, so an object moved to another name does not open. The trailing BLAKE3 covers
the ciphertext: anyone — the server, ``repo check`` without the passphrase — can
verify an object's integrity, and only the keys' holder can read it.

Primitives are the ``cryptography`` package's (AEAD, Argon2id) and BLAKE3; nothing
here is a cipher or a KDF of its own.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from core.errors import BlockvaultError
from core.repo.format import DamagedObject

SEALED_MAGIC = b"BVE1"
CIPHERS: dict[str, tuple[int, type[AESGCM] | type[ChaCha20Poly1305]]] = {
    "aes-256-gcm": (1, AESGCM),
    "chacha20-poly1305": (2, ChaCha20Poly1305),
}
BY_NUMBER = {number: (name, cls) for name, (number, cls) in CIPHERS.items()}
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
TRAILER_BYTES = 32
HEAD_BYTES = len(SEALED_MAGIC) + 1 + SALT_BYTES + NONCE_BYTES
OVERHEAD = HEAD_BYTES + TAG_BYTES + TRAILER_BYTES
ARGON2 = {"iterations": 3, "memory_kib": 65536, "lanes": 4}
"""RFC 9106's low-memory profile: about 0.15 s here."""
PASSPHRASE_FILE_ENV = "BLOCKVAULT_PASSPHRASE_FILE"
PASSPHRASE_COMMAND_ENV = "BLOCKVAULT_PASSPHRASE_COMMAND"
NEW_PASSPHRASE_FILE_ENV = "BLOCKVAULT_NEW_PASSPHRASE_FILE"
KEY_FILE_ENV = "BLOCKVAULT_KEY_FILE"
MAX_SECRET = 4096
"""Bytes read of a passphrase file or command at most."""


class LockedRepository(BlockvaultError):
    """The repository is encrypted and no passphrase or key file opens it."""


@dataclass(frozen=True)
class Keys:
    """An encrypted repository's keys, unwrapped: they live in memory only."""

    cipher: str
    data_key: bytes
    id_key: bytes

    @property
    def key_id(self) -> str:
        """A short public name of these keys (which keys a slot wraps)."""
        return blake3.blake3(self.data_key + self.id_key, derive_key_context=_CTX_ID).hexdigest(8)

    def digest(self, data: bytes | memoryview) -> bytes:
        """Return a chunk's id: the BLAKE3 of its plain content keyed with the id key."""
        return blake3.blake3(data, key=self.id_key).digest()

    def seal(self, name: str, parts: Sequence[bytes | bytearray | memoryview]) -> list[bytes]:
        """Return the sealed form of the object ``name`` whose plain bytes are ``parts``."""
        number, cls = CIPHERS[self.cipher]
        salt = secrets.token_bytes(SALT_BYTES)
        nonce = secrets.token_bytes(NONCE_BYTES)
        head = SEALED_MAGIC + bytes((number,)) + salt + nonce
        plain = parts[0] if len(parts) == 1 else b"".join(parts)
        sealed = cls(self._object_key(salt)).encrypt(nonce, plain, _aad(name, head))
        # Three parts, stored one after the other: no copy of the ciphertext behind the head.
        checksum = blake3.blake3(head)
        checksum.update(sealed)
        return [head, sealed, checksum.digest()]

    def open(self, name: str, stored: bytes) -> bytes:
        """Return the plain bytes of the sealed object ``name``.

        Raises:
            DamagedObject: the object is damaged (its BLAKE3), or does not open with
                these keys under this name (forged, moved, or another repository's).
        """
        # The AEAD tag authenticates every byte that matters: the trailing checksum (for
        # those without the key) need not be computed again here.
        if len(stored) < OVERHEAD or stored[: len(SEALED_MAGIC)] != SEALED_MAGIC:
            raise DamagedObject(f"{name} is damaged: not a sealed object")
        body = memoryview(stored)[:-TRAILER_BYTES]
        number = body[len(SEALED_MAGIC)]
        if number not in BY_NUMBER:
            raise DamagedObject(f"{name} is damaged: unknown cipher {number}")
        cls = BY_NUMBER[number][1]
        head = bytes(body[:HEAD_BYTES])
        salt = head[len(SEALED_MAGIC) + 1 : len(SEALED_MAGIC) + 1 + SALT_BYTES]
        nonce = head[-NONCE_BYTES:]
        try:
            return cls(self._object_key(salt)).decrypt(nonce, body[HEAD_BYTES:], _aad(name, head))
        except InvalidTag:
            raise DamagedObject(
                f"{name} is damaged, forged or moved from another name: it does not open "
                "with this repository's keys"
            ) from None

    def _object_key(self, salt: bytes) -> bytes:
        return blake3.blake3(salt, key=self.data_key).digest()


_CTX_ID = "blockvault 2026-12 key id"
_CTX_WRAP = b"blockvault key slot v1"


def _aad(name: str, head: bytes) -> bytes:
    return head + name.encode()


def check_sealed(name: str, stored: bytes) -> bytes:
    """Return the body of sealed object ``name`` once its BLAKE3 checks; no key needed."""
    if len(stored) < OVERHEAD or stored[: len(SEALED_MAGIC)] != SEALED_MAGIC:
        raise DamagedObject(f"{name} is damaged: not a sealed object")
    body, trailer = stored[:-TRAILER_BYTES], stored[-TRAILER_BYTES:]
    if blake3.blake3(body).digest() != trailer:
        raise DamagedObject(f"{name} is damaged: its bytes do not match their checksum")
    return body


def new_keys(cipher: str) -> Keys:
    """Return fresh random keys for a new repository sealed with ``cipher``."""
    if cipher not in CIPHERS:
        raise BlockvaultError(f"unknown --encryption {cipher!r}; use {', '.join(CIPHERS)} or none")
    return Keys(cipher, secrets.token_bytes(32), secrets.token_bytes(32))


# --- slots: the keys wrapped by a passphrase --------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return base64.b64decode(text, validate=True)


def _kek(passphrase: bytes, salt: bytes, kdf: dict[str, Any]) -> bytes:
    return Argon2id(
        salt=salt,
        length=32,
        iterations=int(kdf["iterations"]),
        lanes=int(kdf["lanes"]),
        memory_cost=int(kdf["memory_kib"]),
    ).derive(passphrase)


def wrap(keys: Keys, passphrase: bytes, name: str, repo_id: str, created: str) -> dict[str, Any]:
    """Return a slot: ``keys`` wrapped by ``passphrase`` (Argon2id, then AES-256-GCM)."""
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(NONCE_BYTES)
    kdf = {"alg": "argon2id", **ARGON2}
    wrapped = AESGCM(_kek(passphrase, salt, kdf)).encrypt(
        nonce, keys.data_key + keys.id_key, _CTX_WRAP + repo_id.encode()
    )
    return {
        "name": name,
        "created": created,
        "kdf": kdf,
        "salt": _b64(salt),
        "nonce": _b64(nonce),
        "wrapped": _b64(wrapped),
    }


def unwrap(slot: dict[str, Any], passphrase: bytes, cipher: str, repo_id: str) -> Keys | None:
    """Return the keys ``slot`` wraps when ``passphrase`` opens it, else None."""
    try:
        kdf = slot["kdf"]
        if kdf.get("alg") != "argon2id" or int(kdf["memory_kib"]) > 4 << 20:
            return None
        kek = _kek(passphrase, _unb64(slot["salt"]), kdf)
        both = AESGCM(kek).decrypt(
            _unb64(slot["nonce"]), _unb64(slot["wrapped"]), _CTX_WRAP + repo_id.encode()
        )
    except (InvalidTag, KeyError, TypeError, ValueError, AttributeError):
        return None
    if len(both) != 64:
        return None
    return Keys(cipher, both[:32], both[32:])


def export_keys(keys: Keys, repo_id: str) -> str:
    """Return the keys as a key file's text: a copy to keep offline, opening the repository."""
    return (
        "BLOCKVAULT KEY FILE: whoever holds this reads the repository; keep it offline\n"
        f"repository {repo_id}\ncipher {keys.cipher}\n"
        f"data {_b64(keys.data_key)}\nid {_b64(keys.id_key)}\n"
    )


def import_keys(text: str, repo_id: str, cipher: str) -> Keys:
    """Return the keys of a key file (:func:`export_keys`) made for repository ``repo_id``."""
    fields = dict(line.split(" ", 1) for line in text.splitlines()[1:] if " " in line)
    if fields.get("repository") != repo_id:
        raise LockedRepository(
            f"the key file is for repository {fields.get('repository', '?')}, not {repo_id}"
        )
    try:
        keys = Keys(cipher, _unb64(fields["data"]), _unb64(fields["id"]))
    except (KeyError, ValueError):
        raise LockedRepository("the key file is damaged: it holds no data and id key") from None
    if len(keys.data_key) != 32 or len(keys.id_key) != 32:
        raise LockedRepository("the key file is damaged: its keys are not 32 bytes each")
    return keys


# --- where a passphrase comes from ----------------------------------------------------


def _read_limited(data: bytes, where: str) -> bytes:
    if len(data) > MAX_SECRET:
        raise LockedRepository(f"{where} gives more than {MAX_SECRET} bytes; give the passphrase")
    secret = data.rstrip(b"\r\n")
    if not secret:
        raise LockedRepository(f"{where} gives an empty passphrase")
    return secret


def passphrase_from_env(file_env: str = PASSPHRASE_FILE_ENV) -> bytes | None:
    """Return the passphrase ``$BLOCKVAULT_PASSPHRASE_FILE`` or ``_COMMAND`` gives, if set."""
    path = os.environ.get(file_env)
    if path:
        try:
            with open(path, "rb") as f:
                return _read_limited(f.read(MAX_SECRET + 1), f"{file_env} ({path})")
        except OSError as e:
            raise LockedRepository(f"cannot read {file_env} ({path}): {e.strerror}") from None
    command = os.environ.get(PASSPHRASE_COMMAND_ENV) if file_env == PASSPHRASE_FILE_ENV else None
    if command:
        try:
            done = subprocess.run(
                shlex.split(command), capture_output=True, timeout=60, check=False
            )
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            raise LockedRepository(f"{PASSPHRASE_COMMAND_ENV} could not run: {e}") from None
        if done.returncode != 0:
            raise LockedRepository(
                f"{PASSPHRASE_COMMAND_ENV} failed (exit status {done.returncode})"
            )
        return _read_limited(done.stdout, PASSPHRASE_COMMAND_ENV)
    return None


Prompt = Callable[[str], bytes | None]
"""Asks a person for a passphrase (the text says what for); None: nobody to ask."""
