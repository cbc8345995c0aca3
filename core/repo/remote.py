"""The object API over a repository server (``--repo https://HOST:PORT``), as a node.

Who the client is comes from ``$BLOCKVAULT_NODE`` with ``$BLOCKVAULT_TOKEN_FILE`` (or
``$BLOCKVAULT_TOKEN``) and ``$BLOCKVAULT_FINGERPRINT``, else from the root-only login
file that ``blockvault login`` writes. The server's certificate is pinned by its
SHA-256 fingerprint; without a pin the system's CAs must vouch for it.

Uploads run in a session (:mod:`core.server.datastore`): the node's known chunks
are fetched once, so an unchanged re-backup sends almost nothing, and a manifest
commits the session. A dropped connection or a restarted server is retried with
backoff for ``commrestartduration`` (TSM's option; minutes) before the operation
fails with one line; what the server acknowledged is not sent again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx

from core.repo.format import max_stored, split_digests
from core.repo.store import (
    Buffers,
    ObjectMissing,
    RepositoryError,
    RepositoryWriteFailed,
    UnreadableObject,
    check_key,
)
from core.statedir import state_dir
from core.tls import is_loopback

NODE_ENV = "BLOCKVAULT_NODE"
TOKEN_ENV = "BLOCKVAULT_TOKEN"
TOKEN_FILE_ENV = "BLOCKVAULT_TOKEN_FILE"
FINGERPRINT_ENV = "BLOCKVAULT_FINGERPRINT"
LOGIN_FILE_ENV = "BLOCKVAULT_LOGIN_FILE"
DURATION_ENV = "BLOCKVAULT_COMMRESTARTDURATION"
INTERVAL_ENV = "BLOCKVAULT_COMMRESTARTINTERVAL"
DEFAULT_DURATION_MINUTES = 60.0
DEFAULT_INTERVAL_SECONDS = 15.0
CONNECTIONS = 8


class ServerError(RepositoryError):
    """The repository server cannot be used: unreachable, wrong certificate, refused."""


class Forbidden(ServerError):
    """The server refused this node an object (another node's, or a delete)."""


def is_remote(location: str) -> bool:
    """True when ``location`` names a repository server rather than a directory."""
    return location.startswith(("https://", "http://"))


def login_file() -> str:
    """Return the path of the login file (root-only; ``$BLOCKVAULT_LOGIN_FILE`` for another)."""
    return os.environ.get(LOGIN_FILE_ENV) or os.path.join(state_dir(), "login.json")


def normalize_url(url: str) -> str:
    """Return ``scheme://host:port`` of a server URL, or raise :class:`ServerError`."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/"):
        raise ServerError(f"{url!r} is not a server address like https://HOST:PORT")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ServerError(
            f"{url!r}: plain http would send this node's token in the clear; use "
            "https:// (plain http is for a server on a loopback address only)"
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


@dataclass(frozen=True)
class Credentials:
    """How this client is known to one server."""

    node: str
    token: str
    fingerprint: str | None


def read_logins() -> dict[str, dict[str, str]]:
    """Return the login file's servers by URL (empty when there is none)."""
    path = login_file()
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ServerError(f"the login file {path} is unreadable: {e}") from None
    servers = doc.get("servers") if isinstance(doc, dict) else None
    return servers if isinstance(servers, dict) else {}


def save_login(url: str, credentials: Credentials) -> str:
    """Record ``credentials`` for ``url`` in the login file (0600 in a 0700 directory)."""
    path = login_file()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    servers = read_logins()
    servers[url] = {
        "node": credentials.node,
        "token": credentials.token,
        "fingerprint": credentials.fingerprint or "",
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump({"servers": servers}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    return path


def token_from_env() -> str:
    """Return the token ``$BLOCKVAULT_TOKEN_FILE`` holds, else ``$BLOCKVAULT_TOKEN`` ("": none)."""
    token_file = os.environ.get(TOKEN_FILE_ENV)
    if not token_file:
        return os.environ.get(TOKEN_ENV, "")
    try:
        with open(token_file, encoding="utf-8") as f:
            return f.read(4096).strip()
    except OSError as e:
        raise ServerError(f"cannot read {TOKEN_FILE_ENV} ({token_file}): {e.strerror}") from None


def credentials_for(url: str) -> Credentials:
    """Return this client's credentials for ``url``: the environment first, then the login file."""
    from core.tls import normalize_fingerprint

    saved = read_logins().get(url, {})
    token = token_from_env() or saved.get("token", "")
    node = os.environ.get(NODE_ENV) or saved.get("node", "")
    if not token:
        raise ServerError(
            f"no token for {url}: run 'blockvault login {url} --node NAME', or set "
            f"{TOKEN_FILE_ENV} (and {NODE_ENV}, {FINGERPRINT_ENV})"
        )
    pin = os.environ.get(FINGERPRINT_ENV) or saved.get("fingerprint") or None
    if pin:
        try:
            pin = normalize_fingerprint(pin)
        except ValueError as e:
            raise ServerError(f"{FINGERPRINT_ENV}: {e}") from None
    return Credentials(node, token, pin)


def _number(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ServerError(f"{env}={raw!r} is not a number") from None
    if value < 0:
        raise ServerError(f"{env}={raw!r} must not be negative")
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """TSM's ``commrestartduration`` (minutes) and ``commrestartinterval`` (seconds)."""

    duration: float = DEFAULT_DURATION_MINUTES * 60
    interval: float = DEFAULT_INTERVAL_SECONDS

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """Return the policy ``$BLOCKVAULT_COMMRESTARTDURATION``/``…INTERVAL`` set."""
        return cls(
            _number(DURATION_ENV, DEFAULT_DURATION_MINUTES) * 60,
            _number(INTERVAL_ENV, DEFAULT_INTERVAL_SECONDS),
        )


_RETRY_STATUS = frozenset({502, 503, 504})


def _transport(verify: ssl.SSLContext | bool) -> httpx.HTTPTransport:
    """Return httpx's transport: a keep-alive pool of ``CONNECTIONS``."""
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    return httpx.HTTPTransport(verify=verify, limits=limits)


MAX_HEAD = 64 << 10
_BUFFER = 1 << 20


class _Miss(Exception):
    """The fast path cannot do this request: ask again through httpx (which says why)."""


class _Head:
    """The headers of one response, as httptools reports them (names in lower case)."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value


class _FastPath:
    """Chunk uploads and object reads over keep-alive connections of their own, one per thread.

    Through httpx a body passes httpcore's and h11's buffers and httpx's (four copies of
    every byte read) and each request costs milliseconds of Python under the GIL that
    the engine's hashing and compressing threads wait for. Here a body is sent from the
    caller's buffers and read straight into one buffer of the length the head declares:
    measured on this machine, reading the bench volume's 700 MiB of chunks cost the
    client 1.1 s of user CPU through httpx and 0.4 s here (bench/RESULTS.md). The head
    is checked by httptools, the parser uvicorn uses. Only a success with a
    ``Content-Length`` is taken; anything else (a refusal, a dropped connection) is sent
    again through httpx, which retries for the retry time and explains a refusal, as for
    every other request.
    """

    def __init__(self, url: str, context: ssl.SSLContext | None, token: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        self.address = (parts.hostname, parts.port)
        self.context = context
        self.head = f"Host: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
        self.timeout = 60.0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sockets: dict[int, socket.socket] = {}
        """Every thread's connection, by thread id; a gone thread's is closed with the next."""
        self.closed = False

    def _connection(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is not None:
            return sock
        raw = socket.create_connection(self.address, timeout=10.0)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = (
                self.context.wrap_socket(raw, server_hostname=self.address[0])
                if self.context is not None
                else raw
            )
        except BaseException:
            raw.close()
            raise
        sock.settimeout(self.timeout)
        with self._lock:
            if self.closed:
                sock.close()
                raise _Miss("closed")
            alive = {t.ident for t in threading.enumerate()}
            for ident in [i for i in self._sockets if i not in alive]:
                self._sockets.pop(ident).close()
            self._sockets[threading.get_ident()] = sock
        self._local.sock = sock
        self._local.buffer = bytearray(_BUFFER)
        return sock

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            with self._lock:
                self._sockets.pop(threading.get_ident(), None)
            sock.close()

    def request(
        self,
        method: str,
        path: str,
        body: Sequence[bytes | bytearray | memoryview] = (),
        *,
        limit: int = MAX_HEAD,
    ) -> bytearray:
        """Return the response body of ``method path`` (at most ``limit`` bytes).

        Raises :class:`_Miss` on anything but a 2xx; on any failure the connection is
        dropped, since what it holds of an exchange cut short is unknown.
        """
        try:
            return self._exchange(method, path, body, limit)
        except _Miss:
            self._drop()
            raise
        except (OSError, ValueError, httptools.HttpParserError):
            self._drop()
            raise _Miss(path) from None
        except BaseException:  # KeyboardInterrupt, MemoryError: the stream is mid-message
            self._drop()
            raise

    def _exchange(
        self,
        method: str,
        path: str,
        body: Sequence[bytes | bytearray | memoryview],
        limit: int,
    ) -> bytearray:
        sock = self._connection()
        length = sum(memoryview(part).nbytes for part in body)
        framing = f"Content-Length: {length}\r\n" if body or method != "GET" else ""
        sock.sendall(f"{method} {path} HTTP/1.1\r\n{self.head}{framing}\r\n".encode())
        for part in body:
            sock.sendall(part)
        buffer: bytearray = self._local.buffer
        view = memoryview(buffer)
        got, end = 0, -1
        while end < 0:
            if got >= MAX_HEAD:
                raise _Miss("head too long")
            n = sock.recv_into(view[got:])
            if not n:
                raise _Miss("closed by the server")
            end = buffer.find(b"\r\n\r\n", max(0, got - 3), got + n)
            got += n
        end += 4
        head = _Head()
        parser = httptools.HttpResponseParser(head)
        parser.feed_data(view[:end])
        declared = head.headers.get(b"content-length", b"")
        if (
            not 200 <= parser.get_status_code() < 300
            or b"transfer-encoding" in head.headers
            or not declared.isdigit()
            or int(declared) > limit
        ):
            raise _Miss("not a plain success")
        size = int(declared)
        if got - end > size:
            raise _Miss("more than the body")  # a pipelined surprise: start afresh
        out = bytearray(size)
        have = got - end
        out[:have] = view[end:got]
        received = memoryview(out)
        while have < size:
            n = sock.recv_into(received[have:])
            if not n:
                raise _Miss("closed by the server")
            have += n
        if not parser.should_keep_alive():
            self._drop()
        return out

    def close(self) -> None:
        with self._lock:
            self.closed = True
            sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            with contextlib.suppress(OSError):
                sock.close()


def pinned_ssl(url: str, pin: str) -> ssl.SSLContext:
    """Return a context trusting the certificate ``url`` presents, once it matches ``pin``."""
    from core.tls import fingerprint_of_der, pinned_context, server_certificate

    parts = urlsplit(url)
    assert parts.hostname and parts.port
    try:
        der = server_certificate(parts.hostname, parts.port)
    except (OSError, ssl.SSLError) as e:
        raise unreachable(url, e) from None
    seen = fingerprint_of_der(der)
    if seen != pin:
        raise ServerError(
            f"the server {url} presents certificate {seen}, but this client pins {pin}: "
            "refused (if the server's certificate was replaced on purpose, run "
            f"'blockvault login {url}' again)"
        )
    return pinned_context(ssl.DER_cert_to_PEM_cert(der))


def unreachable(url: str, error: BaseException) -> ServerError:
    """Return the one-line error for a server that cannot be reached."""
    why = str(error) or type(error).__name__
    if isinstance(error, ConnectionRefusedError) or "refused" in why.lower():
        why = "connection refused"
    return ServerError(
        f"cannot reach the repository server {url}: {why}; is 'blockvault serve' running "
        "there, and is the address right?"
    )


class RemoteStore:
    """Objects on a repository server, through one pooled, pinned HTTPS client."""

    readers = CONNECTIONS
    """A get waits for the server and the network: one in flight per pooled connection."""

    def __init__(
        self, url: str, credentials: Credentials, retry: RetryPolicy | None = None
    ) -> None:
        self.url = normalize_url(url)
        self.root = self.url
        self.retry = retry or RetryPolicy.from_env()
        verify: ssl.SSLContext | bool = True
        if self.url.startswith("https://") and credentials.fingerprint:
            verify = pinned_ssl(self.url, credentials.fingerprint)
        context: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
        self.fast = _FastPath(self.url, context, credentials.token)
        self.client = httpx.Client(
            base_url=self.url,
            transport=_transport(verify),
            headers={"authorization": f"Bearer {credentials.token}"},
            timeout=httpx.Timeout(60.0, connect=10.0),
        )
        self._lock = threading.Lock()
        self._begin_lock = threading.Lock()
        self._open: dict[str, str] = {}
        """The open session's id under "sid": shared with the finalizer, which runs when
        this store is gone and so cannot read it from the store."""
        self._known: set[bytes] | None = None
        self.node = credentials.node
        # A backup that failed leaves its session open: abandon it when the store goes
        # (or the process exits), so the server drops it at once.
        self._finalizer = weakref.finalize(self, _close, self.client, self.fast, self._open)

    # --- transport -------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, retry: bool = True, stream: bool = False, **kw: Any
    ) -> httpx.Response:
        """Send one request, retrying transport failures and 502/503/504 for the retry time.

        With ``stream`` the body is left unread (the caller reads and closes it).
        """
        deadline = time.monotonic() + (self.retry.duration if retry else 0)
        pause = min(0.25, self.retry.interval)
        while True:
            try:
                request = self.client.build_request(method, path, **kw)
                response = self.client.send(request, stream=stream)
            except httpx.TransportError as e:
                if isinstance(e.__cause__, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(e):
                    raise ServerError(
                        f"the server {self.url} presents a certificate this client does not "
                        f"trust ({e}); pin it with 'blockvault login {self.url}'"
                    ) from None
                if time.monotonic() + pause > deadline:
                    raise unreachable(self.url, e) from None
            else:
                if response.status_code not in _RETRY_STATUS or time.monotonic() + pause > deadline:
                    return response
                response.close()
            time.sleep(pause)
            pause = min(pause * 2, max(self.retry.interval, 0.25))

    def _check(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code < 300:
            return response
        try:
            message = str(response.json()["error"])
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status_code}"
        if response.status_code == 404:
            raise ObjectMissing(f"{what}: {message}")
        if response.status_code == 403:
            raise Forbidden(f"the server {self.url} refused {what}: {message}")
        if response.status_code == 401:
            raise ServerError(f"the server {self.url} refused node {self.node or '?'}: {message}")
        raise ServerError(f"the server {self.url} could not do {what}: {message}")

    def hello(self) -> dict[str, Any]:
        """Return ``whoami``: the first request, never retried (an unreachable server fails now)."""
        doc = self._check(self._request("GET", "/v1/whoami", retry=False), "who am I").json()
        if self.node and doc.get("node") != self.node:
            raise ServerError(
                f"the token given is node {doc.get('node')}'s, not {self.node}'s "
                f"({self.url}); check {TOKEN_FILE_ENV} and {NODE_ENV}"
            )
        self.node = str(doc.get("node"))
        return dict(doc)

    # --- the repository's config ---------------------------------------------------

    def config_bytes(self) -> bytes | None:
        """Return the server's repository config, or None when it holds none yet."""
        response = self._request("GET", "/v1/config")
        if response.status_code == 404:
            return None
        return self._check(response, "the repository config").content

    def create_config(self, data: bytes) -> None:
        """Make the repository on the server (refused when it has one)."""
        self._check(
            self._request("PUT", "/v1/config", content=data, headers={"if-none-match": "*"}),
            "repo init",
        )

    def replace_config(self, data: bytes, previous: bytes) -> None:
        """Store a config whose key slots changed (the server checks nothing else did)."""
        import hashlib

        match = hashlib.sha256(previous).hexdigest()
        self._check(
            self._request("PUT", "/v1/config", content=data, headers={"if-match": match}),
            "changing the repository's keys",
        )

    # --- the object API ------------------------------------------------------------

    def _begin(self) -> str:
        with self._begin_lock:  # the engine's workers all want one session
            if "sid" not in self._open:
                response = self._request("POST", "/v1/sessions")
                self._open["sid"] = str(self._check(response, "a backup session").json()["session"])
            return self._open["sid"]

    def put(self, key: str, data: Buffers, *, durable: bool = False) -> None:
        kind, name = check_key(key)
        if kind not in ("chunks", "packs"):
            raise RepositoryError(f"{key}: only chunks and packs are put on a server; "
                                  "manifests commit")
        parts = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        sid = self._begin()
        path = f"/v1/sessions/{sid}/{kind}/{name}"
        try:
            self.fast.request("PUT", path, parts)
        except _Miss:
            response = self._request("PUT", path, content=_joined(parts))
            try:
                self._check(response, f"the upload of {key}")
            except ServerError as e:
                raise RepositoryWriteFailed(f"{e}; nothing of this backup was recorded") from None
        if kind == "chunks":
            self.note_stored([bytes.fromhex(name)])

    def note_stored(self, digests: Iterable[bytes]) -> None:
        """Count chunks just acknowledged by the server as stored (no need to ask again)."""
        with self._lock:
            if self._known is not None:
                self._known.update(digests)

    def commit(self, key: str, data: Buffers, refs: Iterable[bytes]) -> None:
        """Commit manifest ``key`` naming chunks ``refs``: the session ends, the object appears."""
        check_key(key)
        manifest = _joined(data)
        sid = self._begin()
        body = manifest + b"".join(sorted(refs))
        response = self._request(
            "POST", f"/v1/sessions/{sid}/commit/{key}", content=body,
            headers={"x-manifest-length": str(len(manifest))},
        )
        self._open.pop("sid", None)
        try:
            self._check(response, f"the commit of {key}")
        except ServerError as e:
            raise RepositoryWriteFailed(f"{e}; nothing of this backup was recorded") from None

    def get(self, key: str) -> bytes:
        check_key(key)
        path = f"/v1/objects/{key}"
        limit = max_stored(key)
        try:
            # A bytearray: bytes to every reader of objects, without copying 4 MiB again.
            return self.fast.request("GET", path, limit=limit)  # type: ignore[return-value]
        except _Miss:
            return self._read_bounded(key, path, limit)

    def _read_bounded(self, key: str, path: str, limit: int) -> bytes:
        """GET ``path`` through httpx, refusing a body past ``limit`` before it is all read."""
        deadline = time.monotonic() + self.retry.duration
        while True:
            response = self._request("GET", path, stream=True)
            try:
                if response.status_code >= 300:
                    response.read()
                    self._check(response, key)
                declared = response.headers.get("content-length", "")
                data = bytearray()
                too_big = declared.isdigit() and int(declared) > limit  # refused unread
                for part in () if too_big else response.iter_bytes():
                    data += part
                    if len(data) > limit:
                        too_big = True
                        break
                if too_big:
                    raise UnreadableObject(
                        f"object {key} on {self.url} is larger than any "
                        f"{key.split('/', 1)[0].removesuffix('s')} can be ({limit} bytes): "
                        "it is not one of ours"
                    )
                return bytes(data)
            except httpx.TransportError as e:  # cut off mid-body
                if time.monotonic() > deadline:
                    raise unreachable(self.url, e) from None
            finally:
                response.close()
            time.sleep(min(self.retry.interval, 1.0))

    def _known_chunks(self) -> set[bytes]:
        with self._lock:
            if self._known is not None:
                return self._known
        data = self._check(self._request("GET", "/v1/known"), "the known chunks").content
        known = set(split_digests(data))
        with self._lock:
            if self._known is None:
                self._known = known
            return self._known

    def exists_many(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        chunks = [k for k in keys if k.startswith("chunks/")]
        found: set[str] = set()
        if chunks:
            known = self._known_chunks()
            found.update(k for k in chunks if bytes.fromhex(k[7:]) in known)
        others = [k for k in keys if not k.startswith("chunks/")]
        for kind in {k.split("/", 1)[0] for k in others}:
            names = set(self.list(kind))
            found.update(k for k in others if k.split("/", 1)[0] == kind and k in names)
        return found

    def list(self, kind: str) -> Iterator[str]:
        names = self._check(self._request("GET", f"/v1/list/{kind}"), f"the list of {kind}").json()
        try:
            if not isinstance(names, list):
                raise TypeError(type(names).__name__)
            keys = [f"{kind}/{n}" for n in names]
            for key in keys:
                check_key(key)
        except (TypeError, ValueError):
            raise ServerError(
                f"the server {self.url} sent a list of {kind} that holds no names"
            ) from None
        return iter(keys)

    def strays(self, kind: str) -> Iterator[tuple[str, str]]:
        return iter(())  # the datastore's own business: 'repo check' on the server host

    def delete(self, key: str) -> None:
        check_key(key)
        response = self._request("DELETE", f"/v1/objects/{key}")
        if response.status_code != 404:
            self._check(response, f"deleting {key}")

    def size_of(self, key: str) -> int:
        check_key(key)
        response = self._check(self._request("HEAD", f"/v1/objects/{key}"), key)
        return int(response.headers.get("content-length", "0"))

    def sync(self) -> None:
        """Nothing to do: the server makes the chunks durable before it commits a manifest."""

    def release(self) -> None:
        """Nothing to drain: uploads are acknowledged one by one."""

    def temp_files(self) -> Iterator[str]:
        return iter(())

    def close(self) -> None:
        """Abandon an open session and close the connections."""
        self._finalizer()


def _joined(data: Buffers) -> bytes:
    return bytes(data) if isinstance(data, bytes | bytearray | memoryview) else b"".join(data)


def _close(client: httpx.Client, fast: _FastPath, open_session: dict[str, str]) -> None:
    """Abandon the open session, if any, and close the connections (once, whoever asks)."""
    sid = open_session.pop("sid", None)
    with contextlib.suppress(httpx.HTTPError):
        if sid:
            client.request("DELETE", f"/v1/sessions/{sid}", timeout=5.0)
    client.close()
    fast.close()


def connect(location: str) -> RemoteStore:
    """Return the store of the server at ``location``, after it answered who this node is."""
    url = normalize_url(location)
    store = RemoteStore(url, credentials_for(url))
    store.hello()
    return store

