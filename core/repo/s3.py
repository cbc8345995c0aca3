"""The object API on S3-compatible object storage (``--repo s3://BUCKET/PREFIX``).

Endpoint, region and credentials follow the AWS conventions, read by boto3 itself:
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``~/.aws/``. Keys are ``PREFIX/KIND/NN/NAME`` (the name's first two characters: for
chunks, hashed), the config ``PREFIX/config.json``, locks ``PREFIX/locks/…``.

Nothing is ever overwritten: every object is created with ``If-None-Match: *``, so a
chunk that is there already (412) was stored by someone else with the same content,
and a manifest that is there already is refused unless it is the same bytes (a retry
whose answer was lost). An S3 PUT is durable when it answers, so :meth:`sync` has
nothing to do. Throttling and 5xx answers are retried by botocore (standard mode,
with backoff); every request made is counted in :attr:`S3Store.requests`.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from core.repo.format import CONTENT_KINDS, max_stored
from core.repo.store import (
    Buffers,
    ObjectMissing,
    RepositoryError,
    RepositoryWriteFailed,
    UnreadableObject,
    check_key,
)

SCHEME = "s3://"
CONFIG_KEY = "config.json"
READERS = 16
"""Requests in flight: RGW and S3 answer in milliseconds, and each waits for the network."""
LOCK_REFRESH = 300.0
LOCK_RETRY = 30.0
"""Seconds before a failed refresh of a lock is tried again."""
LOCK_STALE = 1800.0
"""A lock not refreshed for this long (by the bucket's clock) belongs to a process that is
gone. A holder whose refreshes failed for half of it stops writing: before anyone could
take its lock for stale, it refuses to commit or delete."""
CREATE_CONFLICTS = 5
"""Times a PUT answered 409 (another PUT of the key is in flight) is sent again."""
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9._/-]*$")


class S3Error(RepositoryError):
    """The bucket cannot be used: unreachable, refused, missing."""


class LockBusy(RepositoryError):
    """Another process holds a lock this one must give way to."""


def is_s3(location: str) -> bool:
    """True when ``location`` names a bucket (``s3://BUCKET/PREFIX``)."""
    return location.startswith(SCHEME)


def parse_location(location: str) -> tuple[str, str]:
    """Return ``(bucket, prefix)`` of ``s3://BUCKET[/PREFIX]``, or raise :class:`S3Error`."""
    rest = location[len(SCHEME) :] if is_s3(location) else ""
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise S3Error(
            f"{location!r} is not a bucket address like s3://BUCKET/PREFIX (a bucket name is "
            "3 to 63 lower-case letters, digits, dots and hyphens)"
        )
    parts = prefix.split("/")
    if not _PREFIX.match(prefix) or (prefix and any(p in ("", ".", "..") for p in parts)):
        raise S3Error(f"{location!r}: the prefix may hold letters, digits and . _ - / only")
    return bucket, prefix


def normalize_location(location: str) -> str:
    """Return ``s3://BUCKET/PREFIX`` as one spelling (no trailing slash)."""
    bucket, prefix = parse_location(location)
    return f"{SCHEME}{bucket}/{prefix}" if prefix else f"{SCHEME}{bucket}"


def _client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 8},
        max_pool_connections=READERS + 4,
        connect_timeout=10,
        read_timeout=60,
        # The payload is checked by its own hash (chunk ids, sealed checksums): a CRC of
        # every body on top is CPU for nothing, and RGW 16 ignores it over HTTP anyway.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client("s3", config=config)


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status(error: Exception) -> int:
    response = getattr(error, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3Store:
    """Objects in one bucket under one prefix, through one boto3 client (thread-safe)."""

    readers = READERS

    def __init__(self, location: str, client: Any = None) -> None:
        self.bucket, self.prefix = parse_location(location)
        self.root = normalize_location(location)
        self.client = client or _client()
        self.endpoint = str(self.client.meta.endpoint_url)
        self.requests: Counter[str] = Counter()
        """HTTP requests sent, by operation (PutObject, GetObject, …), retries included."""
        self._count_lock = threading.Lock()
        self.client.meta.events.register("before-send.s3.*", self._count)
        self._known: set[str] | None = None
        self._known_lock = threading.Lock()
        self._held: dict[int, dict[str, Any]] = {}
        """The locks this process holds here, by id: name, mode, last good refresh."""

    def _count(self, event_name: str = "", **_kw: Any) -> None:
        with self._count_lock:
            self.requests[event_name.rsplit(".", 1)[-1]] += 1

    @property
    def request_total(self) -> int:
        """Every request this store sent."""
        with self._count_lock:
            return sum(self.requests.values())

    # --- keys and errors ---------------------------------------------------------

    def _base(self, rest: str) -> str:
        return f"{self.prefix}/{rest}" if self.prefix else rest

    def _key(self, key: str) -> str:
        kind, name = check_key(key)
        return self._base(f"{kind}/{name[:2]}/{name}")

    def _failed(self, error: Exception, what: str) -> RepositoryError:
        """Return the one-line error for a failed request about ``what``."""
        from botocore.exceptions import BotoCoreError, NoCredentialsError

        code = _code(error)
        if code == "NoSuchBucket":
            return S3Error(
                f"the bucket {self.bucket} does not exist at {self.endpoint}; create it with "
                f"'blockvault repo init --repo {self.root}'"
            )
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return S3Error(
                f"{self.endpoint} refused {what} in bucket {self.bucket} ({code}): check "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and the bucket's policy"
            )
        if isinstance(error, NoCredentialsError):
            return S3Error(
                f"no S3 credentials for {self.root}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (~/.aws/credentials)"
            )
        if isinstance(error, BotoCoreError):
            return S3Error(
                f"cannot reach the S3 endpoint {self.endpoint} for {what}: {error}; is it up, "
                "and is AWS_ENDPOINT_URL right?"
            )
        return S3Error(f"{self.endpoint} could not do {what} in {self.root}: {code or error}")

    def call(self, what: str, method: str, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kw)
        except (ClientError, BotoCoreError) as e:
            raise self._failed(e, what) from None

    # --- objects by their own names (a server's records, :mod:`core.server.meta`) ----

    def raw_key(self, name: str) -> str:
        """Return the S3 key of ``name`` under the prefix (no fan-out)."""
        return self._base(name)

    def raw_get(self, s3key: str) -> tuple[bytes, str] | None:
        """Return ``(data, ETag)`` of ``s3key``, or None when there is none."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=s3key)
            return bytes(response["Body"].read()), str(response["ETag"]).strip('"')
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404"):
                return None
            raise self._failed(e, f"reading {s3key}") from None
        except BotoCoreError as e:
            raise self._failed(e, f"reading {s3key}") from None

    def raw_etag(self, s3key: str) -> str | None:
        """Return the ETag of ``s3key`` (one HEAD), or None when it is not there."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=s3key)
            return str(head["ETag"]).strip('"')
        except ClientError as e:
            if _status(e) == 404:
                return None
            raise self._failed(e, f"looking for {s3key}") from None
        except BotoCoreError as e:
            raise self._failed(e, f"looking for {s3key}") from None

    def raw_create(self, s3key: str, data: bytes) -> bool:
        """PUT ``s3key`` unless it is there (False then)."""
        return self._create(s3key, data)

    def raw_replace(self, s3key: str, data: bytes, etag: str) -> bool:
        """PUT ``s3key`` if its ETag is still ``etag`` (False otherwise)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=s3key, Body=data, IfMatch=etag)
            return True
        except ClientError as e:
            if _status(e) in (412, 404, 409):
                return False
            raise self._failed(e, f"replacing {s3key}") from None
        except BotoCoreError as e:
            raise self._failed(e, f"replacing {s3key}") from None

    def raw_list(self, s3prefix: str) -> builtins.list[dict[str, Any]]:
        """Return every entry (Key, Size, ETag, LastModified) under ``s3prefix``."""
        return builtins.list(self._pages_raw(s3prefix))

    def raw_delete(self, s3keys: Sequence[str]) -> None:
        """Delete ``s3keys`` (those not there are no error)."""
        for start in range(0, len(s3keys), 1000):
            batch = s3keys[start : start + 1000]
            self.call(f"deleting {len(batch)} objects", "delete_objects",
                      Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})

    # --- the repository's config ---------------------------------------------------

    def config_bytes(self) -> bytes | None:
        """Return the repository config, or None when the prefix holds none yet."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._base(CONFIG_KEY))
            return bytes(response["Body"].read())
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404"):
                return None
            raise self._failed(e, "reading the repository config") from None
        except Exception as e:  # a BotoCoreError: unreachable, no credentials
            raise self._failed(e, "reading the repository config") from None

    def create_config(self, data: bytes) -> None:
        """Make the repository (and the bucket, when it is missing); refused when one is there."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if _status(e) != 404:
                raise self._failed(e, "looking for the bucket") from None
            region = self.client.meta.region_name
            where = (
                {"CreateBucketConfiguration": {"LocationConstraint": region}}
                if region and region != "us-east-1"
                else {}
            )
            self.call("creating the bucket", "create_bucket", **where)
        except BotoCoreError as e:
            raise self._failed(e, "looking for the bucket") from None
        if not self._create(self._base(CONFIG_KEY), data):
            raise RepositoryError(f"{self.root} already holds a blockvault repository")

    def replace_config(self, data: bytes, previous: bytes) -> None:
        """Store a config whose key slots changed, if nobody changed it since ``previous``."""
        from botocore.exceptions import ClientError

        key = self._base(CONFIG_KEY)
        head = self.call("reading the repository config", "get_object", Key=key)
        if head["Body"].read() != previous:
            raise RepositoryError(f"the repository's keys in {self.root} changed meanwhile")
        # RGW 16 compares If-Match with the ETag unquoted (AWS takes either spelling).
        etag = str(head["ETag"]).strip('"')
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfMatch=etag)
        except ClientError as e:
            if _status(e) == 412:
                raise RepositoryError(
                    f"the repository's keys in {self.root} changed meanwhile; run the command "
                    "again"
                ) from None
            raise self._failed(e, "changing the repository's keys") from None

    # --- the object API ------------------------------------------------------------

    def _create(self, s3key: str, body: bytes) -> bool:
        """PUT ``body`` unless ``s3key`` exists; return False when it did.

        Two writers of one chunk race when two backups share data: the loser of a PUT in
        flight hears 409 (ConditionalRequestConflict) and asks again, to hear 412 once the
        winner's object is there.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(CREATE_CONFLICTS + 1):
            try:
                self.client.put_object(Bucket=self.bucket, Key=s3key, Body=body, IfNoneMatch="*")
                return True
            except ClientError as e:
                if _status(e) == 412:
                    return False
                if _status(e) == 409 and attempt < CREATE_CONFLICTS:
                    time.sleep(0.05 * 2**attempt)
                    continue
                failed: Exception = e
            except BotoCoreError as e:
                failed = e
            break
        raise RepositoryWriteFailed(
            f"{self._failed(failed, f'storing {s3key}')}; nothing of this backup was recorded"
        ) from None

    def put(self, key: str, data: Buffers, *, durable: bool = False) -> None:
        """Store ``data`` as ``key``; a chunk already there is the same content."""
        named_by_content = key.startswith(CONTENT_KINDS)
        if not named_by_content:
            self._still_locked()
        if not self._create(self._key(key), _joined(data)) and not named_by_content:
            raise RepositoryWriteFailed(f"{key} already exists in {self.root}: not overwritten")
        if key.startswith("chunks/"):
            with self._known_lock:
                if self._known is not None:
                    self._known.add(key)

    def commit(self, key: str, data: Buffers, refs: Iterable[bytes]) -> None:
        """Store manifest ``key``: every chunk it names was acknowledged durable before."""
        self._still_locked()
        body = _joined(data)
        if not self._create(self._key(key), body) and self.get(key) != body:
            raise RepositoryWriteFailed(f"{key} already exists in {self.root}: not overwritten")

    def get(self, key: str) -> bytes:
        """Return object ``key``.

        Raises:
            ObjectMissing: no such object.
            UnreadableObject: it is there but cannot be had (archived, or larger than
                any object of its kind can be: not one of ours).
            S3Error: the bucket cannot be read (unreachable, refused): the call fails,
                and no caller takes the object for gone or damaged.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        limit = max_stored(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            size = int(response.get("ContentLength", 0))
            data = bytes(response["Body"].read(limit + 1)) if size <= limit else b""
            if size > limit or len(data) > limit:
                response["Body"].close()
                raise UnreadableObject(
                    f"object {key} in {self.root} holds {size} bytes, more than any "
                    f"{key.split('/', 1)[0].removesuffix('s')} can: it is not one of ours"
                )
            return data
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404"):
                raise ObjectMissing(f"object {key} is missing from {self.root}") from None
            if _code(e) == "InvalidObjectState":
                raise UnreadableObject(
                    f"object {key} in {self.root} is archived (InvalidObjectState): restore "
                    "it to a readable storage class first"
                ) from None
            raise self._failed(e, f"reading {key}") from None
        except BotoCoreError as e:
            raise self._failed(e, f"reading {key}") from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes of object ``key`` from ``offset``: one ranged GET."""
        from botocore.exceptions import BotoCoreError, ClientError

        if length <= 0:
            return b""
        try:
            last = offset + length - 1
            response = self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={offset}-{last}"
            )
            return bytes(response["Body"].read(length))
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404"):
                raise ObjectMissing(f"object {key} is missing from {self.root}") from None
            if _status(e) == 416:
                return b""
            raise self._failed(e, f"reading {key}") from None
        except BotoCoreError as e:
            raise self._failed(e, f"reading {key}") from None

    def _pages(self, rest: str) -> Iterator[dict[str, Any]]:
        return self._pages_raw(self._base(rest))

    def _pages_raw(self, s3prefix: str) -> Iterator[dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=s3prefix):
                yield from page.get("Contents", [])
        except (ClientError, BotoCoreError) as e:
            raise self._failed(e, f"listing {s3prefix}") from None

    def _walk(self, kind: str) -> Iterator[tuple[str, str | None, int]]:
        """Yield ``(key, None, size)`` per object of ``kind``, ``(s3key, why, size)`` per stray."""
        for entry in self._pages(f"{kind}/"):
            s3key, size = str(entry["Key"]), int(entry.get("Size", 0))
            rest = s3key[len(self._base(f"{kind}/")) :]
            fan, _, name = rest.partition("/")
            try:
                check_key(f"{kind}/{name}")
            except ValueError:
                yield s3key, "has a name no object can have", size
                continue
            if fan != name[:2]:
                right = self._key(f"{kind}/{name}")
                yield s3key, f"is under the wrong prefix (it belongs at {right})", size
            else:
                yield f"{kind}/{name}", None, size

    def list(self, kind: str) -> Iterator[str]:
        for key, why, _size in self._walk(kind):
            if why is None:
                yield key

    def sizes(self, kind: str) -> dict[str, int]:
        """Return every object of ``kind`` with its size, from the listing alone."""
        return {key: size for key, why, size in self._walk(kind) if why is None}

    def strays(self, kind: str) -> Iterator[tuple[str, str]]:
        for where, why, _size in self._walk(kind):
            if why is not None:
                yield f"{SCHEME}{self.bucket}/{where}", why

    def exists_many(self, keys: Iterable[str]) -> set[str]:
        """Return the keys stored: chunks from one listing (kept up to date), others listed."""
        keys = list(keys)
        found: set[str] = set()
        chunks = [k for k in keys if k.startswith("chunks/")]
        if chunks:
            with self._known_lock:
                known = self._known
            if known is None:
                known = set(self.list("chunks"))
                with self._known_lock:
                    if self._known is None:
                        self._known = known
                    known = self._known
            found.update(k for k in chunks if k in known)
        others = [k for k in keys if not k.startswith("chunks/")]
        for kind in {k.split("/", 1)[0] for k in others}:
            names = set(self.list(kind))
            found.update(k for k in others if k in names)
        return found

    def delete(self, key: str) -> None:
        self._still_locked()
        self.call(f"deleting {key}", "delete_object", Key=self._key(key))
        with self._known_lock:
            if self._known is not None:
                self._known.discard(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete objects a thousand per request (DeleteObjects)."""
        batch: builtins.list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == 1000:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: Sequence[str]) -> None:
        self._still_locked()
        response = self.call(
            f"deleting {len(keys)} objects", "delete_objects",
            Delete={"Objects": [{"Key": self._key(k)} for k in keys], "Quiet": True},
        )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise S3Error(
                f"{self.endpoint} did not delete {len(errors)} of {len(keys)} objects in "
                f"{self.root} (first: {first.get('Key')}: {first.get('Code')})"
            )
        with self._known_lock:
            if self._known is not None:
                self._known.difference_update(keys)

    def size_of(self, key: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return int(head["ContentLength"])
        except ClientError as e:
            if _status(e) == 404:
                raise ObjectMissing(f"object {key} is missing from {self.root}") from None
            raise self._failed(e, f"the size of {key}") from None
        except BotoCoreError as e:
            raise self._failed(e, f"the size of {key}") from None

    def sync(self) -> None:
        """Nothing to do: an S3 PUT is durable once it is answered."""

    def release(self) -> None:
        """Nothing to drain: every PUT is answered before the next step."""

    def temp_files(self) -> Iterator[str]:
        return iter(())  # a PUT is atomic: no partial object is ever visible

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    # --- locks ---------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, exclusive: bool = False) -> Iterator[None]:
        """Hold a lock object: shared for backups and restores, exclusive for prune.

        Each holder writes ``locks/TIME-MODE-ID`` and then lists the locks: a shared
        holder that sees an exclusive one, or an exclusive one that sees any other,
        removes its own and gives way (two that race both give way; neither proceeds
        under the other). A holder refreshes its lock every five minutes; one not
        refreshed for half an hour is a process that is gone, and is ignored. Ages are
        the bucket's: another lock's LastModified against this one's, never this host's
        clock.
        """
        mode = "x" if exclusive else "s"
        with self._known_lock:
            if not self._held:
                # The known chunks hold only while a lock is held all along: a prune may
                # have run since they were listed.
                self._known = None
        state: dict[str, Any] = {"name": self._write_lock(mode), "mode": mode}
        state["refreshed"] = time.monotonic()
        try:
            busy = self._conflicts(state["name"], exclusive)
            if busy:
                what = "a backup or restore" if exclusive else "a prune"
                raise LockBusy(
                    f"repository {self.root} is busy ({what} is running: lock {busy}); try "
                    "again later"
                )
            stop = threading.Event()
            refresher = threading.Thread(
                target=self._refresh, args=(state, stop), name="bv-s3-lock", daemon=True
            )
            with self._known_lock:
                self._held[id(state)] = state
            refresher.start()
            try:
                yield
            finally:
                stop.set()
                refresher.join()
                with self._known_lock:
                    self._held.pop(id(state), None)
        finally:
            with contextlib.suppress(RepositoryError):
                self.call("removing this process's lock", "delete_object", Key=state["name"])

    def _still_locked(self) -> None:
        """Refuse to write when a lock of this process went unrefreshed for too long."""
        with self._known_lock:
            held = list(self._held.values())
        for state in held:
            age = time.monotonic() - state["refreshed"]
            if age > LOCK_STALE / 2:
                raise RepositoryWriteFailed(
                    f"the lock on {self.root} could not be refreshed for {age / 60:.0f} "
                    "minutes (the bucket was unreachable), so another process may have taken "
                    "it for stale: nothing more is written; run the command again"
                )

    def _write_lock(self, mode: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name = self._base(f"locks/{stamp}-{mode}-{uuid.uuid4().hex}")
        who = f'{{"host": "{socket.gethostname()}", "pid": {os.getpid()}}}'.encode()
        self.call("writing a lock", "put_object", Key=name, Body=who, IfNoneMatch="*")
        return name

    def _conflicts(self, mine: str, exclusive: bool) -> str | None:
        """Return the name of a live lock that ``mine`` must give way to, if any."""
        entries = list(self._pages("locks/"))
        stamps = {str(e["Key"]): e.get("LastModified") for e in entries}
        now = stamps.get(mine) or max((m for m in stamps.values() if m is not None), default=None)
        for name, modified in stamps.items():
            if name == mine:
                continue
            if now and modified and (now - modified).total_seconds() > LOCK_STALE:
                continue
            other = name.rsplit("/", 1)[-1].split("-")
            if exclusive or (len(other) > 1 and other[1] == "x"):
                return name.rsplit("/", 1)[-1]
        return None

    def _refresh(self, state: dict[str, Any], stop: threading.Event) -> None:
        wait = LOCK_REFRESH
        while not stop.wait(wait):
            try:
                fresh = self._write_lock(state["mode"])
            except RepositoryError:
                wait = LOCK_RETRY
                continue
            old, state["name"] = state["name"], fresh
            state["refreshed"] = time.monotonic()
            wait = LOCK_REFRESH
            with contextlib.suppress(RepositoryError):
                self.call("refreshing this process's lock", "delete_object", Key=old)


def _joined(data: Buffers) -> bytes:
    return bytes(data) if isinstance(data, bytes | bytearray | memoryview) else b"".join(data)
