"""The agent: a job queue that outlives the console, answering HTTP/1.1 on a Unix socket.

Only a process of the agent's own user (root) may use it: the socket is 0600 in a
0700 directory, and every connection is checked against the peer's credentials
(``SO_PEERCRED``) as well, so a socket made world-writable by mistake still
refuses everyone else.

Endpoints (JSON; an error is ``{"error": "one line", "return_code": 12}``):

- ``GET /v1/health``: pid, repository, socket, API version, number of jobs
- ``GET /v1/jobs``: every job, each with its newest sample only
- ``GET /v1/jobs/ID``: one job with its whole throughput history
- ``POST /v1/jobs`` (a spec): queue a job; 201 ``{"id"}``, answered once it is stored
- ``POST /v1/jobs/ID/cancel``: ``{"cancelled": bool}``
- ``POST /v1/jobs/ID/rerun``: 201 ``{"id"}``
- ``POST /v1/unlock`` (``{"passphrase"}``): open the encrypted repository's keys
- ``GET /v1/events``: newline-delimited JSON, chunked: ``{"id", "view"}`` for every
  job, then ``{"synced": true}``, then one line per change; an empty line every
  second while nothing changes

Everything a request brings is hostile until checked: a body needs a plain
``Content-Length`` of at most :data:`MAX_BODY` (checked with the head, before a byte
of the body is read) and must arrive within :data:`BODY_TIMEOUT`; a spec is checked
field by field (:func:`core.jobs.wire.spec_from_dict`). A malformed request of any
kind gets a 4xx with the one-line error, never a 500.

The HTTP is uvicorn's (h11) under a starlette app. What the agent adds to uvicorn is
in :class:`_AgentProtocol`, the one place that sees the connection: the peer check,
the limits on a request head and the JSON answer to one refused, and the answer to a
sender that shut its side.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import re
import signal
import socket
import stat
import struct
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from http import HTTPStatus
from typing import Any

import h11
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import Server, ServerState

from core.agent import DEFAULT_SOCKET
from core.agent.store import SqliteJobStore, default_db_path
from core.errors import BlockvaultError
from core.findings import ReturnCode
from core.jobs import JobQueue, JobView, spec_from_dict, view_to_dict
from core.repo.repository import canonical_location

log = logging.getLogger(__name__)

API_VERSION = 1
HEARTBEAT = 1.0
"""Seconds between empty lines on a quiet event stream: a client sees a live agent."""
MAX_BODY = 64 << 10
"""The largest request body read: a job spec is a few hundred bytes."""
BODY_TIMEOUT = 5.0
"""Seconds a request's body may take to arrive once its head has (it is one small write)."""
MAX_HEAD = 64 << 10
"""The largest request head (request line and headers) read: longer is 414 or 431."""
MAX_HEADERS = 100
"""Header lines a request may have: a client of the agent sends a handful."""
IDLE_TIMEOUT = 300.0
"""Seconds a connection may wait before or within a request head, or leave its answer
unread, before it is dropped. Longer than an HTTP client keeps an idle connection (httpx:
5 s), so a client never reuses one the agent is closing."""
STOP_GRACE = 2.0
"""Seconds the event streams, then the HTTP server, get to end on the way out."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""SIGHUP too: an agent run in the foreground of an SSH session that drops must still
undo its remounts and snapshots, which dying at once would skip."""

_PEERCRED = struct.Struct("3i")
_NO_BODY = object()
"""What :func:`_body` returns for a request without a body (``null`` is a body)."""
_END_OF_HEAD = re.compile(rb"\n\r?\n")
"""Where a request head ends, as h11 finds it."""


class _HttpError(Exception):
    """A request refused with ``status``; ``close`` when what follows it cannot be trusted."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class _Json(JSONResponse):
    """JSON as the agent always wrote it: ASCII, so a path that is not UTF-8 still goes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def _error(
    status: int, message: str, rc: int = ReturnCode.FAILED, *, close: bool = False
) -> Response:
    headers = {"Connection": "close"} if close else None
    return _Json(_error_doc(message, rc), status, headers=headers)


# --- the connection: who, and what a request head may be -------------------------------------


class _JudgedConnection(h11.Connection):
    """h11's server side, with each request head judged by :func:`_judge_head` first.

    h11 parses a head only once it is whole and knows no limit on header lines; it takes
    ``Content-Length: 10, 10`` as 10 and hands on a normalised value, so the agent's
    rules on the length are applied to the raw head here.
    """

    refusal: tuple[int, str] | None = None
    """The status and error line of the last head refused (by the agent or by h11)."""

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        if self.their_state is h11.IDLE:
            data = self.trailing_data[0]
            self.refusal = _judge_head(data) if data else None
            if self.refusal is not None:
                raise h11.RemoteProtocolError(self.refusal[1], error_status_hint=self.refusal[0])
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.refusal = self.refusal or (400, f"bad request: {_first_words(e)}")
            raise


class _AgentProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the agent's door; each connection is one of these.

    - The peer's uid is read (``SO_PEERCRED``) when the connection is made; a connection
      of another uid answers 403 to whatever it sends, and the agent's app never runs
      for it. uvicorn puts no socket in the ASGI scope: this is the place that sees it.
    - Each request head is judged before h11 parses it (:class:`_JudgedConnection`);
      one refused there or by h11 is answered in one JSON line and the connection closed.
    - A sender that shuts its side after its request (``SHUT_WR``) still gets its answer.
    - A connection that waits :data:`IDLE_TIMEOUT` before or within a head, or leaves its
      answer unread as long (an event stream nobody reads), is dropped.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn: _JudgedConnection = _JudgedConnection(h11.SERVER, MAX_HEAD)
        self.stranger: str | None = None
        """Why this connection is refused whatever it asks (another uid), else None."""
        self._unread_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = _peer_of(transport)
        if peer is None:  # fail closed: no credentials, no answer
            log.warning("dropped a connection whose peer credentials could not be read")
            transport.abort()
            return
        pid, uid = peer
        if uid != os.geteuid():
            log.warning("refused a connection of uid %d (pid %d)", uid, pid)
            self.stranger = (
                f"only uid {os.geteuid()} may use the blockvault agent; "
                f"this connection is uid {uid}"
            )
            # Its body, if any, stays unread: the answer closes the connection.
            self.app = _error(403, self.stranger, close=True)  # a Response is an ASGI app
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and self.timeout_keep_alive_task is None:
            self._arm_idle_timer()  # part of a head came; uvicorn would wait for the rest forever

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio's signature
        """Keep a half-closed connection open to answer its request; close an idle one.

        uvicorn closes at once, so a client that sends its request and then shuts its
        sending side would get no answer. A body that ends here, short of its
        Content-Length, is handed on as it came, and the app says how much arrived.
        """
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return None
        cycle.keep_alive = False
        if cycle.more_body:
            cycle.more_body = False
            cycle.message_event.set()
        return True

    def send_400_response(self, msg: str) -> None:
        """Answer a head refused by h11 or by :func:`_judge_head` in one JSON line; close."""
        status, line = self.conn.refusal or (400, f"bad request: {msg}")
        if self.stranger is not None:
            status, line = 403, self.stranger
        log.debug("refused a request head: %d %s", status, line)
        body = json.dumps(_error_doc(line), separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        reason = HTTPStatus(status).phrase.encode()
        for event in (
            h11.Response(status_code=status, headers=headers, reason=reason),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._unread_timer is None:  # abort: close would wait for the unread data to go
            self._unread_timer = self.loop.call_later(IDLE_TIMEOUT, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_waiting_for_reader()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting_for_reader()
        super().connection_lost(exc)

    def _arm_idle_timer(self) -> None:
        # uvicorn's keep-alive timer, which it arms only once a response is complete.
        if not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _stop_waiting_for_reader(self) -> None:
        if self._unread_timer is not None:
            self._unread_timer.cancel()
            self._unread_timer = None


def _peer_of(transport: asyncio.BaseTransport) -> tuple[int, int] | None:
    """Return the pid and uid of the process that connected, None when they cannot be read."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    pid, uid, _gid = _PEERCRED.unpack(raw)
    return pid, uid


def _judge_head(data: bytes) -> tuple[int, str] | None:
    """Return the status and error line of a request head refused, None to parse it.

    ``data`` is what arrived of the head (and maybe what follows it). Its size and its
    number of lines are judged before it is whole, so a sender cannot make the agent
    keep more; its ``Content-Length`` and ``Transfer-Encoding`` once it is.
    """
    end = _END_OF_HEAD.search(data)
    head = data if end is None else data[: end.start()]
    if len(head) > MAX_HEAD:
        if b"\n" not in head:
            return 414, f"bad request: the request line is longer than {MAX_HEAD} bytes"
        return 431, f"bad request: the request head is longer than {MAX_HEAD} bytes"
    if head.count(b"\n") > MAX_HEADERS:
        return 431, f"bad request: more than {MAX_HEADERS} header lines"
    if end is None:
        return None
    lengths: set[bytes] = set()
    for line in head.split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return 411, "send the request body with a Content-Length"
        if name == b"content-length":
            lengths.add(value.strip())
    return _judge_length(lengths)


def _judge_length(lengths: set[bytes]) -> tuple[int, str] | None:
    """Judge the Content-Length values of a head: plain ASCII digits, one value, bounded.

    ``int`` would also take ``-5``, ``1_0`` or other scripts' digits; ``bytes.isdigit``
    takes ASCII digits only.
    """
    if not lengths:
        return None
    if len(lengths) > 1:
        return 400, f"bad Content-Length: {len(lengths)} different values"
    (length,) = lengths
    shown = length[:40].decode("latin-1")
    if not length:
        return 411, "send the request body with a Content-Length"
    if not length.isdigit():
        return 400, f"bad Content-Length {shown!r}: send a number of bytes"
    if len(length) > 18 or int(length) > MAX_BODY:
        return 413, (
            f"Content-Length {shown} is too large; a request body is at most {MAX_BODY} bytes"
        )
    return None


# --- the app: routes, the event stream ---------------------------------------------------------


class _Door:
    """Refuse what is no request of this API before it is routed: another HTTP version or
    method. A path's trailing slashes are ignored (``/v1/jobs/`` is ``/v1/jobs``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            refused = None
            if scope["http_version"] not in ("1.0", "1.1"):
                refused = _error(400, "bad request: the agent speaks HTTP/1.1 only", close=True)
            elif method not in ("GET", "POST"):
                refused = _error(405, f"no {method} {path}; the agent answers GET and POST")
            if refused is not None:
                await refused(scope, receive, send)
                return
            scope = {**scope, "path": path.rstrip("/") or "/"}
        await self.app(scope, receive, send)


async def _refused(request: Request, exc: Exception) -> Response:
    """Answer an exception of an endpoint (or of routing) in one JSON line."""
    if isinstance(exc, _HttpError):
        return _error(exc.status, exc.message, close=exc.close)
    if isinstance(exc, BlockvaultError):
        return _error(400, exc.message, exc.return_code)
    method, path = request.method, request.scope["path"]
    if isinstance(exc, HTTPException) and exc.status_code in (404, 405):  # no route
        if path.split("/")[1:2] != ["v1"]:
            return _error(404, f"no such endpoint {path}; the API is under /v1")
        return _error(404, f"no {method} {path}")
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, f"bad request: {exc.detail}")
    # A bug answers 500 in one line and the agent goes on (uvicorn logs the traceback).
    log.error("%s %s failed: %r", method, path, exc)
    return _error(500, f"internal error in the agent: {exc!r}", close=True)


async def _body(request: Request) -> Any:
    """Return the request's JSON body (:data:`_NO_BODY` without one), arrived in time.

    Its Content-Length was judged with the head (:func:`_judge_length`), so what is read
    here is at most :data:`MAX_BODY`; it must arrive within :data:`BODY_TIMEOUT`.
    """
    size = int(request.headers.get("content-length") or 0)
    if size == 0:
        return _NO_BODY
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await request.body()
    except TimeoutError:
        raise _HttpError(
            408, f"the request body did not arrive within {BODY_TIMEOUT:g} s", close=True
        ) from None
    except ClientDisconnect:
        raise _HttpError(400, "the connection closed before the request body came") from None
    if len(raw) < size:
        raise _HttpError(
            400,
            f"the request body ended after {len(raw)} of {size} bytes (Content-Length)",
            close=True,
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise _HttpError(400, f"the request body is not JSON: {_first_words(e)}") from None


class _Agent:
    """The agent's API over its job queue: the routes, the event streams and their end.

    Reads answer on the event loop (they only copy views); whatever writes the database,
    resolves a device or derives a key runs in a worker thread.
    """

    def __init__(self, socket_path: str, repo: str, queue: JobQueue) -> None:
        self.socket_path = socket_path
        self.repo = repo
        self.queue = queue
        self.stopping = threading.Event()
        self._streams: set[_Changes] = set()
        self._streams_lock = threading.Lock()
        self._streams_idle = threading.Condition(self._streams_lock)

    def app(self) -> Starlette:
        """Return the starlette app answering the agent's endpoints."""
        routes = [
            Route("/v1/health", self._health, methods=["GET"]),
            Route("/v1/events", self._events, methods=["GET"]),
            Route("/v1/unlock", self._unlock, methods=["POST"]),
            Route("/v1/jobs", self._jobs, methods=["GET"]),
            Route("/v1/jobs", self._submit, methods=["POST"]),
            Route("/v1/jobs/{job_id}", self._job, methods=["GET"]),
            Route("/v1/jobs/{job_id}/cancel", self._cancel, methods=["POST"]),
            Route("/v1/jobs/{job_id}/rerun", self._rerun, methods=["POST"]),
        ]
        handlers = {e: _refused for e in (_HttpError, BlockvaultError, HTTPException, Exception)}
        return Starlette(routes=routes, middleware=[Middleware(_Door)], exception_handlers=handlers)

    # --- endpoints ---------------------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        return _Json(
            {
                "pid": os.getpid(),
                "repo": self.repo,
                "socket": self.socket_path,
                "version": API_VERSION,
                "jobs": len(self.queue.views()),
            }
        )

    async def _jobs(self, request: Request) -> Response:
        return _Json({"jobs": [view_to_dict(v, samples=False) for v in self.queue.views()]})

    async def _job(self, request: Request) -> Response:
        return _Json(view_to_dict(self._view(request)))

    async def _submit(self, request: Request) -> Response:
        body = await _body(request)
        if body is _NO_BODY:  # a body sent without a length would be read as the next request
            raise _HttpError(
                411, "send the job spec as the body, with its Content-Length", close=True
            )
        return _Json({"id": await run_in_threadpool(self._store_job, body)}, 201)

    def _store_job(self, doc: Any) -> str:
        job_id = self.queue.submit(spec_from_dict(doc))
        self.queue.flush()  # answered once stored: a crash after this cannot lose it
        return job_id

    async def _cancel(self, request: Request) -> Response:
        job_id = self._view(request).id
        return _Json({"cancelled": await run_in_threadpool(self.queue.cancel, job_id)})

    async def _rerun(self, request: Request) -> Response:
        job_id = self._view(request).id
        return _Json({"id": await run_in_threadpool(self._store_rerun, job_id)}, 201)

    def _store_rerun(self, job_id: str) -> str:
        new_id = self.queue.rerun(job_id)
        self.queue.flush()
        return new_id

    async def _unlock(self, request: Request) -> Response:
        body = await _body(request)
        return _Json(await run_in_threadpool(self._open_keys, body))

    def _open_keys(self, body: Any) -> dict[str, Any]:
        """Take the passphrase of the agent's encrypted repository; keep only its keys.

        The console that asked a person for it hands it on, so jobs need no passphrase
        file. Only the keys stay, in this process's memory; the passphrase is never
        logged or stored.
        """
        from core.repo.repository import Repository
        from core.repo.sealed import unlock_with

        passphrase = body.get("passphrase") if isinstance(body, dict) else None
        if not isinstance(passphrase, str) or not 0 < len(passphrase) <= 4096:
            raise _HttpError(400, "send {\"passphrase\": \"…\"} (1 to 4096 characters)")
        repo = Repository.open(self.repo, create=False, locked=True)
        if not repo.encrypted:
            return {"unlocked": False, "encrypted": False}
        if unlock_with(repo.location, repo.config, passphrase.encode()) is None:
            raise _HttpError(403, f"the passphrase opens none of the keys of {repo.location}")
        return {"unlocked": True, "encrypted": True}

    async def _events(self, request: Request) -> Response:
        return _EventStream(self)

    def _view(self, request: Request) -> JobView:
        job_id = request.path_params["job_id"]
        try:
            return self.queue.view(job_id)
        except KeyError:
            raise _HttpError(404, f"there is no job {job_id}; see 'blockvault jobs'") from None

    # --- event streams -----------------------------------------------------------------------

    @contextlib.contextmanager
    def stream(self) -> Iterator[_Changes]:
        """Follow the queue's changes for one event stream (on the event loop's thread)."""
        changes = _Changes(asyncio.get_running_loop())
        with self._streams_lock:
            self._streams.add(changes)
        unsubscribe = self.queue.subscribe(changes.changed)
        try:
            yield changes
        finally:
            unsubscribe()
            with self._streams_lock:
                self._streams.discard(changes)
                self._streams_idle.notify_all()

    def end_streams(self, timeout: float) -> None:
        """Tell every event stream to write what is left and end; wait for them a while."""
        self.stopping.set()
        with self._streams_lock:
            for changes in self._streams:
                changes.wake()
            self._streams_idle.wait_for(lambda: not self._streams, timeout)


class _Changes:
    """The jobs that changed since an event stream last wrote: a set, so changes coalesce.

    The queue calls :meth:`changed` from a job's own thread; it adds an id under a lock
    and wakes the stream's event loop only for the first id since the stream last took
    them, so a client that reads slowly (or not at all) never slows a backup, and a busy
    job costs the loop one wake-up per write, not one per progress tick.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._ready = asyncio.Event()

    def changed(self, job_id: str) -> None:
        with self._lock:
            first = not self._ids
            self._ids.add(job_id)
        if first:
            self.wake()

    def wake(self) -> None:
        """Wake the stream, from any thread."""
        with contextlib.suppress(RuntimeError):  # its loop has closed: no stream to wake
            self._loop.call_soon_threadsafe(self._ready.set)

    async def wait(self, timeout: float) -> bool:
        """Wait until woken, at most ``timeout`` seconds; return True when woken."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def take(self) -> list[str]:
        self._ready.clear()
        with self._lock:
            ids, self._ids = self._ids, set()
        return sorted(ids, key=lambda i: (len(i), i))


class _EventStream(StreamingResponse):
    """One client's event stream, following the queue exactly while it is being sent."""

    def __init__(self, agent: _Agent) -> None:
        self._agent = agent
        self._lines = self._follow()
        headers = {"Cache-Control": "no-store", "Connection": "close"}
        super().__init__(self._lines, media_type="application/x-ndjson", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Closed here, not when collected: a client gone mid-write ends its subscription now.
            await self._lines.aclose()

    async def _follow(self) -> AsyncGenerator[bytes, None]:
        agent, queue = self._agent, self._agent.queue
        with agent.stream() as changes:  # first, so that no change is missed
            yield b"".join(_event_line(v.id, v) for v in queue.views()) + b'{"synced":true}\n'
            while True:
                woken = await changes.wait(HEARTBEAT)
                stopping = agent.stopping.is_set()
                if woken or stopping:
                    lines = b"".join(_event_line(i, queue.view(i)) for i in changes.take())
                    if lines:  # never empty: an empty chunk would end the stream
                        yield lines
                else:
                    yield b"\n"
                if stopping:
                    return  # the last chunk follows: a clean end


def _event_line(job_id: str, view: JobView) -> bytes:
    doc = {"id": job_id, "view": view_to_dict(view, samples=False)}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _first_words(error: BaseException) -> str:
    """Return the start of ``error``'s message on one line (a parser may quote the input)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


MAX_ERROR = 300
"""Characters of an error line: a message may quote what a sender sent (a long path)."""


def _error_doc(message: str, rc: int = ReturnCode.FAILED) -> dict[str, Any]:
    line = message.splitlines()[0] if message else "error"
    if len(line) > MAX_ERROR:
        line = line[: MAX_ERROR - 3] + "..."
    return {"error": line, "return_code": int(rc)}


# --- serving ----------------------------------------------------------------------------------


class _Http:
    """uvicorn serving the agent's app on its listening socket, in a thread of its own.

    Not in the main thread, so that uvicorn installs no signal handlers of its own: the
    agent's (:func:`_stop_on_signals`, SIGHUP too) stay the only ones, and serve() stops
    in its own order, cancelling the jobs (and undoing their remounts and snapshots)
    while the event streams still tell their clients. uvicorn's handlers take SIGINT and
    SIGTERM only, would end the HTTP server before the jobs, and raise the signal again
    once it has stopped.
    """

    def __init__(self, app: ASGIApp, sock: socket.socket) -> None:
        config = Config(
            app,
            http=_AgentProtocol,
            ws="none",
            lifespan="off",
            interface="asgi3",
            loop="asyncio",
            log_config=None,  # the agent's logging, untouched
            log_level="error",  # not a warning per malformed request
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=int(IDLE_TIMEOUT),
        )
        config.load()  # here: a bad configuration fails serve(), not the thread
        self._server = Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="agent-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop_accepting(self) -> None:
        """Begin uvicorn's graceful stop: it closes the socket and every idle connection,
        and lets requests and event streams go on until they end."""
        self._server.should_exit = True

    def join(self, grace: float) -> None:
        """Wait for uvicorn to stop; after ``grace`` seconds, end what is left (a stream
        whose client stopped reading)."""
        if self._thread.ident is None:
            return
        self._server.should_exit = True
        self._thread.join(grace)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(grace)
        if self._thread.is_alive():
            log.warning("the agent's HTTP server did not stop within %g s", 2 * grace)


def serve(
    socket_path: str | None = None,
    *,
    repo_location: str | None = None,
    db_path: str | None = None,
    max_running: int = 2,
    ready: threading.Event | Callable[[], object] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the agent until SIGTERM, SIGINT or SIGHUP (or ``stop``); return after a clean stop.

    On the way out it stops accepting, cancels every job that has not finished (a
    backup undoes its remount or snapshot and stores no image), stores the jobs and
    removes the socket. Signals are handled only when called in the main thread.

    Args:
        socket_path: where to listen (default :data:`DEFAULT_SOCKET`); its directory is
            created 0700; a socket left by a dead agent is replaced.
        repo_location: the repository every job uses (None: the default location).
        db_path: the job database (default :func:`core.agent.store.default_db_path`).
        max_running: jobs that may run at once.
        ready: set (an Event) or called once the agent accepts connections.
        stop: set it to stop the agent (for a caller that runs it in a thread).

    Raises:
        BlockvaultError: another agent listens on the socket or uses the database, the
            socket or the database cannot be made, or the HTTP server stopped by itself.
    """
    socket_path = os.path.abspath(socket_path or DEFAULT_SOCKET)
    db_path = os.path.abspath(db_path or default_db_path())
    repo_location = canonical_location(repo_location) if repo_location else None
    stop = stop or threading.Event()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    sock, identity = _listen(socket_path)
    # Undone in reverse: stop accepting, cancel and wait for the jobs, end the event
    # streams (their watchers see the jobs end), let uvicorn finish, close the database,
    # remove the socket.
    with contextlib.ExitStack() as undo:
        undo.enter_context(_stop_on_signals(stop))  # held to the end: a second signal waits
        undo.callback(_remove_socket, socket_path, identity)
        undo.callback(sock.close)
        undo.enter_context(_db_lock(db_path))
        store = SqliteJobStore(db_path)
        undo.callback(store.close)
        # A backup killed with its agent may have left a volume read-only or frozen, a
        # restore its replay mount of the restored volume.
        from core.increments.restore import recover_replay_mounts
        from core.snapshots import recover_interrupted

        for finding in [*recover_interrupted(), *recover_replay_mounts()]:
            log.warning("%s: %s", finding.code, finding.message)
        queue = JobQueue(repo_location, max_running=max_running, store=store)
        if repo_location is None:
            repo_location = canonical_location(None)
        agent = _Agent(socket_path, repo_location, queue)
        http = _Http(agent.app(), sock)
        undo.callback(http.join, STOP_GRACE)
        undo.callback(agent.end_streams, STOP_GRACE)
        undo.callback(queue.close)
        http.start()
        undo.callback(http.stop_accepting)  # refuse connections at once, not queue them
        # What was made at start (modules, the app) lives as long as the agent: frozen, a
        # full garbage collection no longer walks it (26 ms once in a while, mid-request).
        gc.freeze()
        log.info(
            "agent %s listening on %s (repository %s, %d jobs stored in %s)",
            os.getpid(),
            socket_path,
            repo_location,
            len(queue.views()),
            db_path,
        )
        if isinstance(ready, threading.Event):
            ready.set()
        elif ready is not None:
            ready()
        while not stop.wait(1.0):  # a timeout, so that signal handlers run promptly
            if not http.running:
                raise BlockvaultError(
                    f"the agent's HTTP server on {socket_path} stopped by itself; see its log"
                )
        log.info(
            "agent %s stopping; cancelling %d unfinished jobs", os.getpid(), len(queue.active())
        )
    log.info("agent %s stopped", os.getpid())


def _listen(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """Bind and listen at ``path`` (replacing a dead agent's socket); return it and its identity.

    The identity (device, inode) lets :func:`_remove_socket` leave alone a socket another
    agent made there meanwhile. BlockvaultError when an agent lives there.
    """
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            os.chmod(parent, 0o700)  # makedirs' mode is filtered by the umask
        except OSError as e:
            raise BlockvaultError(
                f"cannot create {parent} for the agent's socket: {e.strerror}"
            ) from None
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask makes the socket 0600 at birth: no moment when others may connect.
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen()  # from now on a client's connect waits for uvicorn, not fails
        st = os.stat(path)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise BlockvaultError(f"an agent already listens on {path}") from None
        raise BlockvaultError(f"cannot listen on {path}: {e.strerror}") from None
    return sock, (st.st_dev, st.st_ino)


def _remove_socket(path: str, identity: tuple[int, int]) -> None:
    """Remove the socket file, unless another agent has replaced it meanwhile."""
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BlockvaultError(f"{path} exists and is not a socket; remove it or pick another")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:  # nobody listens: a dead agent's socket
        log.info("replacing the stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as e:
        raise BlockvaultError(f"cannot tell whether an agent listens on {path}: {e}") from None
    finally:
        probe.close()
    raise BlockvaultError(f"an agent already listens on {path}")


@contextlib.contextmanager
def _db_lock(db_path: str) -> Iterator[None]:
    """Hold the job database for this agent: two agents on one database would both run it."""
    parent = os.path.dirname(db_path)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
        os.chmod(parent, 0o700)
    fd = os.open(db_path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BlockvaultError(
                f"another agent uses the job database {db_path}; stop it, or give another --db"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: object) -> None:
        log.info("agent %s got %s", os.getpid(), signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Run the agent from ``python -m core.agent.server``; return the exit status."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m core.agent.server", description=__doc__)
    parser.add_argument("--socket", default=None)
    parser.add_argument("--repo", default=None)
    parser.add_argument("--db", default=None)
    parser.add_argument("--max-running", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        serve(args.socket, repo_location=args.repo, db_path=args.db, max_running=args.max_running)
    except BlockvaultError as e:
        print(f"blockvault agent: {e.message}", file=sys.stderr)
        return int(e.return_code)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
