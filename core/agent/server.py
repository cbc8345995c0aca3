"""The agent: a job queue that outlives the console, answering HTTP/1.1 on a Unix socket.

Only a process of the agent's own user (root) may use it: the socket is 0600 in a
0700 directory, and every request is checked against the peer's credentials
(``SO_PEERCRED``) as well, so a socket made world-writable by mistake still
refuses everyone else.

Endpoints (JSON; an error is ``{"error": "one line", "return_code": 12}``):

- ``GET /v1/health``: pid, repository, socket, API version, number of jobs
- ``GET /v1/jobs``: every job, each with its newest sample only
- ``GET /v1/jobs/ID``: one job with its whole throughput history
- ``POST /v1/jobs`` (a spec): queue a job; 201 ``{"id"}``, answered once it is stored
- ``POST /v1/jobs/ID/cancel``: ``{"cancelled": bool}``
- ``POST /v1/jobs/ID/rerun``: 201 ``{"id"}``
- ``GET /v1/events``: newline-delimited JSON, chunked: ``{"id", "view"}`` for every
  job, then ``{"synced": true}``, then one line per change; an empty line every
  second while nothing changes

Everything a request brings is hostile until checked: a body needs a plain
``Content-Length`` of at most :data:`MAX_BODY` (checked before a byte is read) and
must arrive within :data:`BODY_TIMEOUT`; a spec is checked field by field
(:func:`core.jobs.wire.spec_from_dict`). A malformed request of any kind gets a 4xx
with the one-line error, never a 500.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.server
import json
import logging
import os
import signal
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

from core.agent import DEFAULT_SOCKET
from core.agent.store import SqliteJobStore, default_db_path
from core.errors import BlockvaultError
from core.findings import ReturnCode
from core.jobs import JobQueue, spec_from_dict, view_to_dict

log = logging.getLogger(__name__)

API_VERSION = 1
HEARTBEAT = 1.0
"""Seconds between empty lines on a quiet event stream: a gone client is noticed, and
a client sees a live agent."""
MAX_BODY = 64 << 10
"""The largest request body read: a job spec is a few hundred bytes."""
BODY_TIMEOUT = 5.0
"""Seconds a request's body may take to arrive once its head has (it is one small write)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""SIGHUP too: an agent run in the foreground of an SSH session that drops must still
undo its remounts and snapshots, which dying at once would skip."""

_PEERCRED = struct.Struct("3i")
_NO_BODY = object()
"""What :meth:`_Handler._body` returns for a request without a body (``null`` is a body)."""


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_REFUSED_BY_HTTP: dict[int, int] = {
    HTTPStatus.NOT_IMPLEMENTED: HTTPStatus.METHOD_NOT_ALLOWED,
    HTTPStatus.HTTP_VERSION_NOT_SUPPORTED: HTTPStatus.BAD_REQUEST,
}
"""What the HTTP layer would answer 5xx to is the sender's fault: an unknown method (501)
is 405 here, an HTTP version other than 1.x (505) is 400."""


class _Changes:
    """The jobs that changed since an event stream last wrote: a set, so changes coalesce.

    The queue calls :meth:`changed` from a job's own thread; it only adds an id under a
    lock, so a client that reads slowly (or not at all) never slows a backup. The
    stream's thread then writes the newest view of each changed job.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self.ready = threading.Event()

    def changed(self, job_id: str) -> None:
        with self._lock:
            self._ids.add(job_id)
        self.ready.set()

    def take(self) -> list[str]:
        with self._lock:
            self.ready.clear()
            ids, self._ids = self._ids, set()
        return sorted(ids, key=lambda i: (len(i), i))


class _AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, queue: JobQueue | None = None) -> None:
        self.path = path
        self.queue: JobQueue | None = queue
        self.repo = ""
        self.stopping = threading.Event()
        self._streams: set[_Changes] = set()
        self._streams_lock = threading.Lock()
        self._streams_idle = threading.Condition(self._streams_lock)
        super().__init__(path, _Handler)
        st = os.stat(path)
        self.identity = (st.st_dev, st.st_ino)

    def server_bind(self) -> None:
        # The umask makes the socket 0600 at birth: no moment when others may connect.
        old = os.umask(0o177)
        try:
            self.socket.bind(self.server_address)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    @contextlib.contextmanager
    def stream(self) -> Iterator[_Changes]:
        changes = _Changes()
        with self._streams_lock:
            self._streams.add(changes)
        try:
            yield changes
        finally:
            with self._streams_lock:
                self._streams.discard(changes)
                self._streams_idle.notify_all()

    def end_streams(self, timeout: float) -> None:
        """Tell every event stream to write what is left and end; wait for them a while."""
        self.stopping.set()
        with self._streams_lock:
            for changes in self._streams:
                changes.ready.set()
            self._streams_idle.wait_for(lambda: not self._streams, timeout)

    def remove_socket(self) -> None:
        """Remove the socket file, unless another agent has replaced it meanwhile."""
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self.identity:
                os.unlink(self.path)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _AgentServer
    timeout = 300
    """An idle connection (or a stream nobody reads) is dropped after five minutes."""

    def setup(self) -> None:
        super().setup()
        raw = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        self.peer_pid, self.peer_uid, _ = _PEERCRED.unpack(raw)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("pid %s: " + format, self.peer_pid, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a request the HTTP layer refused (its syntax, its head's size) in one JSON line.

        Also an unknown method: the layer's 501 becomes 405, as for a known method on
        the wrong path. The connection is closed, since what follows cannot be trusted.
        """
        status = _REFUSED_BY_HTTP.get(code, code)
        if code == HTTPStatus.NOT_IMPLEMENTED:
            text = f"no {self.command} {self.path}; the agent answers GET and POST"
        elif code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            text = "bad request: the agent speaks HTTP/1.1 only"
        else:
            text = f"bad request: {message or HTTPStatus(code).phrase}"
        self.log_error("code %d, message %s", code, text)
        self.close_connection = True
        # A request line it could not read leaves the version at HTTP/0.9, which would
        # send the body without a status line: answer as HTTP/1.1 does.
        self.request_version = self.protocol_version
        self._send_json(status, _error_doc(text))

    # --- routing ----------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        try:
            if self.peer_uid != os.geteuid():
                self.close_connection = True  # its body, if any, stays unread
                raise _HttpError(
                    403,
                    f"only uid {os.geteuid()} may use the blockvault agent; "
                    f"this connection is uid {self.peer_uid}",
                )
            body = self._body()
            status, doc = self._route(method, self.path.split("?", 1)[0].rstrip("/"), body)
        except _HttpError as e:
            status, doc = e.status, _error_doc(e.message)
        except BlockvaultError as e:
            status, doc = 400, _error_doc(e.message, e.return_code)
        except Exception as e:  # a bug answers 500 in one line and the agent goes on
            log.exception("%s %s failed", method, self.path)
            status, doc = 500, _error_doc(f"internal error in the agent: {e!r}")
        if doc is not None:
            self._send_json(status, doc)

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        queue = self.server.queue
        assert queue is not None
        parts = path.split("/")[1:]
        if parts[:1] != ["v1"]:
            raise _HttpError(404, f"no such endpoint {path}; the API is under /v1")
        route = parts[1:]
        if route == ["health"] and method == "GET":
            return 200, {
                "pid": os.getpid(),
                "repo": self.server.repo,
                "socket": self.server.path,
                "version": API_VERSION,
                "jobs": len(queue.views()),
            }
        if route == ["events"] and method == "GET":
            self._events(queue)
            return 0, None
        if route == ["unlock"] and method == "POST":
            return 200, self._unlock(body)
        if route == ["jobs"] and method == "GET":
            return 200, {"jobs": [view_to_dict(v, samples=False) for v in queue.views()]}
        if route == ["jobs"] and method == "POST":
            if body is _NO_BODY:
                self.close_connection = True  # a body sent without a length stays unread
                raise _HttpError(411, "send the job spec as the body, with its Content-Length")
            job_id = queue.submit(spec_from_dict(body))
            queue.flush()  # answered once stored: a crash after this cannot lose it
            return 201, {"id": job_id}
        if len(route) in (2, 3) and route[0] == "jobs":
            job_id = route[1]
            try:
                view = queue.view(job_id)
            except KeyError:
                raise _HttpError(404, f"there is no job {job_id}; see 'blockvault jobs'") from None
            action = route[2] if len(route) == 3 else None
            if action is None and method == "GET":
                return 200, view_to_dict(view)
            if action == "cancel" and method == "POST":
                return 200, {"cancelled": queue.cancel(job_id)}
            if action == "rerun" and method == "POST":
                new_id = queue.rerun(job_id)
                queue.flush()
                return 201, {"id": new_id}
        raise _HttpError(404, f"no {method} {path}")

    def _unlock(self, body: Any) -> dict[str, Any]:
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
        repo = Repository.open(self.server.repo, create=False, locked=True)
        if not repo.encrypted:
            return {"unlocked": False, "encrypted": False}
        if unlock_with(repo.location, repo.config, passphrase.encode()) is None:
            raise _HttpError(403, f"the passphrase opens none of the keys of {repo.location}")
        return {"unlocked": True, "encrypted": True}

    def _body(self) -> Any:
        """Return the request's JSON body (:data:`_NO_BODY` without one), read with bounds.

        The length is checked before a byte of the body is read: only plain ASCII digits
        (``int`` would also take ``-5``, ``1_0`` or other scripts' digits), one value, at
        most :data:`MAX_BODY`. The body must arrive within :data:`BODY_TIMEOUT`.
        """
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _HttpError(411, "send the request body with a Content-Length")
        lengths = {v.strip() for v in self.headers.get_all("Content-Length") or ()}
        if not lengths - {""}:
            return _NO_BODY
        if len(lengths) > 1:
            self.close_connection = True
            raise _HttpError(400, f"bad Content-Length: {len(lengths)} different values")
        (length,) = lengths
        if not (length.isascii() and length.isdigit()):
            self.close_connection = True
            raise _HttpError(400, f"bad Content-Length {length[:40]!r}: send a number of bytes")
        if len(length) > 18 or int(length) > MAX_BODY:
            self.close_connection = True
            raise _HttpError(
                413,
                f"Content-Length {length[:40]} is too large; a request body is at most "
                f"{MAX_BODY} bytes",
            )
        size = int(length)
        if size == 0:
            return _NO_BODY
        self.connection.settimeout(BODY_TIMEOUT)
        try:
            raw = self.rfile.read(size)
        except TimeoutError:
            self.close_connection = True
            raise _HttpError(
                408, f"the request body did not arrive within {BODY_TIMEOUT:g} s"
            ) from None
        finally:
            self.connection.settimeout(self.timeout)
        if len(raw) < size:
            self.close_connection = True
            raise _HttpError(
                400, f"the request body ended after {len(raw)} of {size} bytes (Content-Length)"
            )
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
            raise _HttpError(400, f"the request body is not JSON: {_first_words(e)}") from None

    def _send_json(self, status: int, doc: Any) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # --- the event stream -------------------------------------------------------------------

    def _events(self, queue: JobQueue) -> None:
        self.close_connection = True
        with self.server.stream() as changes:
            unsubscribe = queue.subscribe(changes.changed)  # first, so no change is missed
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                for view in queue.views():
                    self._chunk(_event_line(view.id, view))
                self._chunk(b'{"synced":true}\n')
                while True:
                    woken = changes.ready.wait(HEARTBEAT)
                    stopping = self.server.stopping.is_set()
                    if woken or stopping:
                        lines = b"".join(_event_line(i, queue.view(i)) for i in changes.take())
                        if lines:
                            self._chunk(lines)
                    else:
                        self._chunk(b"\n")
                    if stopping:
                        self.wfile.write(b"0\r\n\r\n")  # the last chunk: a clean end
                        return
            except OSError as e:  # BrokenPipe, reset, or a client that stopped reading
                log.debug("event stream of pid %s ended: %s", self.peer_pid, e)
            except Exception:  # the headers are sent: end this stream, not the agent
                log.exception("event stream of pid %s failed", self.peer_pid)
            finally:
                unsubscribe()

    def _chunk(self, data: bytes) -> None:
        # Never empty: an empty chunk would end the stream.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def _event_line(job_id: str, view: Any) -> bytes:
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
        BlockvaultError: another agent listens on the socket or uses the database, or
            the socket or the database cannot be made.
    """
    socket_path = os.path.abspath(socket_path or DEFAULT_SOCKET)
    db_path = os.path.abspath(db_path or default_db_path())
    repo_location = os.path.abspath(repo_location) if repo_location else None
    stop = stop or threading.Event()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    server = _listen(socket_path)
    # Undone in reverse: stop accepting, cancel and wait for the jobs, end the event
    # streams (their watchers see the jobs end), close the database, remove the socket.
    with contextlib.ExitStack() as undo:
        undo.enter_context(_stop_on_signals(stop))  # held to the end: a second signal waits
        undo.callback(server.remove_socket)
        undo.callback(server.server_close)
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
        undo.callback(server.end_streams, 2.0)
        undo.callback(queue.close)
        server.queue = queue
        if repo_location is None:
            from core.repo.repository import default_location

            server.repo = os.path.abspath(default_location())
        else:
            server.repo = repo_location
        loop = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="agent-http",
            daemon=True,
        )
        loop.start()
        undo.callback(server.server_close)  # refuse connections at once, not queue them
        undo.callback(server.shutdown)
        log.info(
            "agent %s listening on %s (repository %s, %d jobs stored in %s)",
            os.getpid(),
            socket_path,
            server.repo,
            len(queue.views()),
            db_path,
        )
        if isinstance(ready, threading.Event):
            ready.set()
        elif ready is not None:
            ready()
        while not stop.wait(1.0):  # a timeout, so that signal handlers run promptly
            pass
        log.info(
            "agent %s stopping; cancelling %d unfinished jobs", os.getpid(), len(queue.active())
        )
    log.info("agent %s stopped", os.getpid())


def _listen(path: str) -> _AgentServer:
    """Bind the socket at ``path`` (replacing a dead agent's); BlockvaultError if one lives."""
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
    try:
        return _AgentServer(path)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise BlockvaultError(f"an agent already listens on {path}") from None
        raise BlockvaultError(f"cannot listen on {path}: {e.strerror}") from None


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
