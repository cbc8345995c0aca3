"""Talk to the agent: start it, ask whether it runs, and use its queue as if it were local.

:class:`AgentClient` has the methods of :class:`core.jobs.JobQueue` a console uses, so
it can stand in for one; the jobs it submits keep running when the console goes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import httpx

from core.agent import default_socket_path
from core.agent.store import default_db_path
from core.errors import BlockvaultError
from core.findings import ReturnCode
from core.jobs.listeners import Listeners
from core.jobs.model import MAX_SAMPLES, Jobs, JobSpec, JobView, Listener, RestoreSpec
from core.jobs.wire import spec_to_dict, view_from_dict

log = logging.getLogger(__name__)

BASE_URL = "http://agent"
AGENT_LOST_AFTER = 3.0
"""Seconds without the agent (events gone, no answer) after which a waiting client gives up."""
STREAM_READ_TIMEOUT = 10.0
"""The agent writes at least an empty line every second: this much silence means it hangs."""


class AgentUnavailable(BlockvaultError):
    """No agent answers on the socket (not started, stopped, or not ours to use)."""


def _unavailable(path: str, error: BaseException | None = None) -> AgentUnavailable:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, PermissionError) or getattr(cause, "errno", None) == errno.EACCES:
            return AgentUnavailable(
                f"permission denied on {path}: only root may use the blockvault agent"
            )
        cause = cause.__cause__ or cause.__context__
    return AgentUnavailable(
        f"no blockvault agent answers on {path}; start one with 'blockvault agent' "
        "or 'systemctl start blockvault-agent'"
    )


def _http(path: str, timeout: float | httpx.Timeout) -> httpx.Client:
    # verify=False: a Unix socket never speaks TLS, and the default loads the whole CA
    # bundle for every client (40 ms each).
    transport = httpx.HTTPTransport(uds=path, verify=False)
    return httpx.Client(transport=transport, base_url=BASE_URL, timeout=timeout)


def _error_of(response: httpx.Response) -> BlockvaultError:
    """Return the agent's one-line error as a BlockvaultError with its return code."""
    try:
        doc = response.json()
        message = str(doc["error"])
        rc = int(doc.get("return_code", 12))
    except (ValueError, KeyError, TypeError):
        message = f"the agent answered {response.status_code}: {response.text[:200]!r}"
        rc = 12
    error = BlockvaultError(message)
    with contextlib.suppress(ValueError):  # a code this version does not know stays 12
        error.return_code = ReturnCode(rc)
    return error


def agent_running(path: str | None = None, timeout: float = 0.5) -> bool:
    """Return True when an agent answers its health check on ``path`` within ``timeout``."""
    try:
        with _http(path or default_socket_path(), timeout) as http:
            r = http.get("/v1/health")
        return r.status_code == 200 and r.json().get("version") is not None
    except (httpx.HTTPError, OSError, ValueError):
        return False


def agent_command(
    socket_path: str, *, repo_location: str | None = None, db_path: str | None = None
) -> list[str]:
    """Return the command line that runs the agent with this interpreter."""
    cmd = [sys.executable, "-m", "core.agent.server", "--socket", socket_path]
    if repo_location:
        cmd += ["--repo", repo_location]
    if db_path:
        cmd += ["--db", db_path]
    return cmd


def start_agent(
    socket_path: str | None = None,
    *,
    repo_location: str | None = None,
    db_path: str | None = None,
    timeout: float = 10.0,
    command: Sequence[str] | None = None,
) -> subprocess.Popen[bytes] | None:
    """Start an agent in its own session and wait until it answers; return its process.

    The agent is detached from the terminal (a new session, so the SSH session's hang-up
    does not reach it), runs in ``/`` (so it keeps no mount point busy) and writes its
    log to ``agent.log`` beside the job database. Nothing is started when an agent
    already answers on the socket (None is returned).

    Args:
        socket_path: where the agent listens (default :func:`default_socket_path`).
        repo_location: the repository its jobs use (None: the default location).
        db_path: its job database (default :func:`core.agent.store.default_db_path`).
        timeout: seconds to wait for the agent to answer.
        command: the command that runs the agent, without its options (default: this
            interpreter's ``python -m core.agent.server``).

    Raises:
        AgentUnavailable: the agent did not answer in time, or exited at once.
    """
    path = os.path.abspath(socket_path or default_socket_path())
    if agent_running(path):
        return None
    db = os.path.abspath(db_path or default_db_path())
    from core.repo.repository import canonical_location

    repo = canonical_location(repo_location) if repo_location else None
    if command is None:
        cmd = agent_command(path, repo_location=repo, db_path=db)
    else:
        cmd = [*command, "--socket", path, "--db", db] + (["--repo", repo] if repo else [])
    log_dir = os.path.dirname(db)
    if not os.path.isdir(log_dir):
        os.makedirs(log_dir, mode=0o700, exist_ok=True)
        os.chmod(log_dir, 0o700)
    log_path = os.path.join(log_dir, "agent.log")
    # Run from "/" but import this blockvault: a checkout is found through PYTHONPATH.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            cwd="/",
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent_running(path, timeout=0.5):
            return proc
        rc = proc.poll()
        if rc is not None:
            raise AgentUnavailable(
                f"the agent exited at start with status {rc}: {_last_line(log_path)}"
            )
        time.sleep(0.05)  # polling a process that gives no other sign; bounded by deadline
    raise AgentUnavailable(
        f"the agent started (pid {proc.pid}) but did not answer on {path} within "
        f"{timeout:g} s; see {log_path}"
    )


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"see {path}"
    return lines[-1].strip() if lines else f"no message; see {path}"


class AgentClient(Jobs):
    """The agent's job queue, used as if it were a local :class:`core.jobs.JobQueue`.

    Once something subscribes, one background thread follows the agent's event
    stream: it keeps every job's view (with its whole throughput history) in a local
    cache, tells the listeners which job changed, and reconnects if the agent goes
    away and comes back. :meth:`close` only disconnects; the jobs run on.

    Args:
        socket_path: the agent's socket (default :func:`default_socket_path`).
        timeout: seconds a request may take.
    """

    outlives_client = True
    """The jobs keep running when this client (and the console) goes away."""

    def __init__(self, socket_path: str | None = None, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path or default_socket_path()
        self._timeout = timeout
        self._http = _http(self.socket_path, timeout)
        self._lock = threading.Lock()
        self._listeners = Listeners()
        self._cache: dict[str, JobView] = {}
        self._synced = threading.Event()
        """Set while the cache holds every job the agent has (reset when the stream drops)."""
        self._connected = threading.Event()
        self._closed = threading.Event()
        self._follower: threading.Thread | None = None
        self._stream_socket: socket.socket | None = None
        """The event stream's connection: shut down by :meth:`close` to end a waiting read."""
        self._health: dict[str, Any] | None = None

    # --- requests -------------------------------------------------------------------------

    def _request(self, method: str, url: str, body: Any = None) -> httpx.Response:
        if self._closed.is_set():
            raise AgentUnavailable("this agent client is closed")
        try:
            return self._http.request(method, url, json=body)
        except httpx.TransportError as e:
            raise _unavailable(self.socket_path, e) from None

    def _json(self, method: str, url: str, body: Any = None) -> Any:
        r = self._request(method, url, body)
        if r.status_code >= 400:
            raise _error_of(r)
        return r.json()

    def health(self) -> dict[str, Any]:
        """Return the agent's pid, repository, socket, API version and number of jobs."""
        doc = self._json("GET", "/v1/health")
        self._health = doc
        return doc

    @property
    def repo_location(self) -> str:
        """The repository the agent's jobs use."""
        if self._health is None:
            self.health()
        assert self._health is not None
        return str(self._health["repo"])

    @property
    def connected(self) -> bool:
        """True while the event stream is connected (False before anything subscribed)."""
        return self._connected.is_set()

    # --- what a UI calls (as on JobQueue) ---------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(job_id)`` on every change; return the function that stops it."""
        unsubscribe = self._listeners.add(listener)
        with self._lock:
            if self._follower is None and not self._closed.is_set():
                self._follower = threading.Thread(
                    target=self._follow, name="agent-events", daemon=True
                )
                self._follower.start()
        return unsubscribe

    def unlock(self, passphrase: bytes) -> bool:
        """Hand the agent its encrypted repository's passphrase; True when it opened it."""
        doc = self._json("POST", "/v1/unlock", {"passphrase": passphrase.decode()})
        return bool(doc.get("unlocked"))

    def submit(self, spec: JobSpec) -> str:
        """Queue ``spec`` in the agent; return the job's id (the agent has stored it)."""
        return str(self._json("POST", "/v1/jobs", spec_to_dict(spec))["id"])

    def cancel(self, job_id: str) -> bool:
        """Ask job ``job_id`` to stop; return False when it had finished or is unknown."""
        r = self._request("POST", f"/v1/jobs/{job_id}/cancel")
        if r.status_code == 404:
            return False
        if r.status_code >= 400:
            raise _error_of(r)
        return bool(r.json()["cancelled"])

    def rerun(self, job_id: str) -> str:
        """Queue job ``job_id``'s spec again (it must have ended); return the new job's id."""
        return str(self._json("POST", f"/v1/jobs/{job_id}/rerun")["id"])

    def view(self, job_id: str) -> JobView:
        """Return job ``job_id`` as it is now (KeyError when unknown).

        From the local cache while the events are followed, else asked of the agent.
        """
        with self._lock:
            cached = self._cache.get(job_id)
        if cached is not None:
            return cached
        fetched = self._fetch(job_id)
        if self._synced.is_set():
            with self._lock:  # its events may still be on their way: views() has it now
                return self._cache.setdefault(job_id, fetched)
        return fetched

    def _fetch(self, job_id: str) -> JobView:
        r = self._request("GET", f"/v1/jobs/{job_id}")
        if r.status_code == 404:
            raise KeyError(job_id)
        if r.status_code >= 400:
            raise _error_of(r)
        return view_from_dict(r.json())

    def views(self) -> list[JobView]:
        """Return every job, oldest first.

        While the events are followed this is the cache; otherwise each view is asked
        of the agent and holds only its newest throughput sample.
        """
        if self._synced.is_set():
            with self._lock:
                return sorted(self._cache.values(), key=_id_order)
        docs = self._json("GET", "/v1/jobs")["jobs"]
        return [view_from_dict(d) for d in docs]

    def wait(self, job_id: str, timeout: float | None = None) -> JobView:
        """Block until job ``job_id`` finished (or ``timeout``); return its view.

        Raises:
            AgentUnavailable: the agent went away while the job ran and none answered
                within :data:`AGENT_LOST_AFTER` seconds: the job's outcome is unknown
                (an agent started later shows it as interrupted).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        changed = threading.Event()

        def check(changed_id: str) -> None:
            if changed_id == job_id:
                changed.set()

        stop = self.subscribe(check)
        lost_since: float | None = None
        first: JobView | None = None
        try:
            while True:
                try:
                    view = self.view(job_id)
                except AgentUnavailable:  # not in the cache, and no agent to ask
                    raise _lost(job_id, first) from None
                if first is None:
                    first = view
                elif view.submitted != first.submitted:
                    # Another agent (another database) has a job of that id: not ours.
                    raise _lost(job_id, first)
                if view.state.finished:
                    return view
                now = time.monotonic()
                if self._connected.is_set():
                    lost_since = None
                elif lost_since is None:
                    lost_since = now
                elif now - lost_since >= AGENT_LOST_AFTER:
                    view = self._ask_after_loss(view)
                    if view.state.finished:
                        return view
                    lost_since = now  # an agent answers: the events come back
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    return view
                changed.wait(0.5 if left is None else min(0.5, left))
                changed.clear()
        finally:
            stop()

    def _ask_after_loss(self, last: JobView) -> JobView:
        """Ask the agent for ``last``'s job directly; AgentUnavailable when none answers."""
        try:
            now = self._fetch(last.id)
        except (AgentUnavailable, KeyError):
            raise _lost(last.id, last) from None
        if now.submitted != last.submitted:  # an agent with another database answered
            raise _lost(last.id, last)
        return now

    def close(self) -> None:
        """Disconnect from the agent; its jobs keep running."""
        self._closed.set()
        with self._lock:
            follower = self._follower
            _shut_down(self._stream_socket)
        if follower is not None and follower is not threading.current_thread():
            follower.join(STREAM_READ_TIMEOUT)
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- following the events ---------------------------------------------------------------

    def _follow(self) -> None:
        backoff = 0.1
        while not self._closed.is_set():
            stream = _http(self.socket_path, httpx.Timeout(self._timeout, read=STREAM_READ_TIMEOUT))
            try:
                with stream, stream.stream("GET", "/v1/events") as r:
                    if r.status_code != 200:
                        r.read()
                        raise _error_of(r)
                    network = r.extensions.get("network_stream")
                    with self._lock:
                        self._stream_socket = network and network.get_extra_info("socket")
                        if self._closed.is_set():  # closed while connecting
                            return
                    self._connected.set()
                    backoff = 0.1
                    burst: set[str] | None = set()  # the jobs the agent has, sent first
                    for line in r.iter_lines():
                        if self._closed.is_set():
                            return
                        if line.strip():
                            burst = self._take_event(json.loads(line), burst)
            except (httpx.HTTPError, OSError, ValueError, KeyError, TypeError) as e:
                if not self._closed.is_set():
                    log.info("agent event stream on %s dropped: %s", self.socket_path, e)
            except BlockvaultError as e:  # refused (403): retrying later may still help
                if not self._closed.is_set():
                    log.warning("agent event stream on %s: %s", self.socket_path, e.message)
            finally:
                with self._lock:
                    self._stream_socket = None
                self._connected.clear()
                self._synced.clear()
            if self._closed.wait(backoff):
                return
            backoff = min(backoff * 2, 5.0)

    def _take_event(self, doc: dict[str, Any], burst: set[str] | None) -> set[str] | None:
        """Bring one job's view up to date; return the ids of the first burst until it ends."""
        if doc.get("synced"):
            if burst is not None:
                with self._lock:  # jobs of another agent than the one before a reconnect
                    for gone in set(self._cache) - burst:
                        del self._cache[gone]
            self._synced.set()
            return None
        job_id = str(doc["id"])
        if burst is not None:
            burst.add(job_id)
        event = view_from_dict(doc["view"])
        total = int(doc["view"].get("samples_total", len(event.samples)))
        with self._lock:
            known = self._cache.get(job_id)
        merged = None if known is None else _merge_samples(known, event, total)
        if merged is None:  # first sight, or samples were missed: the whole history
            try:
                merged = self._fetch(job_id)
            except KeyError:
                return burst
        with self._lock:
            self._cache[job_id] = merged
        self._listeners.notify(job_id)
        return burst


def _lost(job_id: str, last: JobView | None) -> AgentUnavailable:
    """Return the error of a job whose agent went away before it finished."""
    what = f"job {job_id}"
    partly = ""
    if last is not None:
        what += f" ({last.spec.title}) was {last.state.value}"
        if isinstance(last.spec, RestoreSpec):
            partly = f"; {last.spec.volume} may be partly written"
    else:
        what += " was queued or running"
    return AgentUnavailable(
        f"the agent stopped while {what}: its outcome is unknown{partly}; start the agent "
        "again ('blockvault jobs' then shows the job as interrupted)"
    )


def _shut_down(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by the other side
            sock.shutdown(socket.SHUT_RDWR)


def _merge_samples(known: JobView, event: JobView, total: int) -> JobView | None:
    """Return ``event`` with ``known``'s samples plus its newest; None when some were missed.

    An event carries only the newest sample and the count: one more than known is
    appended; more than one more (a slow reader got coalesced events) needs a fetch.
    """
    if known.submitted != event.submitted:
        return None  # another job under this id: an agent with another database
    have = known.samples
    newest = event.samples[-1] if event.samples else None
    if newest is None or (have and newest == have[-1]):
        samples = have if total == len(have) else None
    elif have and newest.t < have[-1].t:
        samples = None  # older than ours: an agent restarted from its last save
    elif total == len(have) + 1 or (total == len(have) == MAX_SAMPLES):
        samples = (*have, newest)[-MAX_SAMPLES:]
    else:
        samples = None
    return None if samples is None else replace(event, samples=samples)


def _id_order(view: JobView) -> tuple[int, str]:
    return (len(view.id), view.id)
