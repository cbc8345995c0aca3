"""The agent on real sockets: real processes, real HTTP over a Unix socket, real loop volumes.

Every agent here is a child process started with ``start_agent`` on a socket and a
database under tmp_path, and is stopped (SIGTERM, then SIGKILL) when its test ends.
Nothing sleeps: a test waits on a job, on an event a listener sets, or on a process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cliutil import blockvault
from imagekit import device_digest

from core import undo
from core.agent.client import (
    AGENT_LOST_AFTER,
    AgentClient,
    AgentUnavailable,
    agent_running,
    start_agent,
)
from core.engine.restore import plan_restore
from core.errors import BlockvaultError
from core.jobs import BackupSpec, JobState, JobView, RestoreSpec
from core.repo.repository import Repository
from core.undo import undo_dir

MIB = 1 << 20
TIMEOUT = 60.0
"""Seconds any one job may take before a test gives up on it."""
AGENT = [sys.executable, "-m", "core.agent.server"]
"""The agent without the console's command line (``blockvault agent`` runs the same serve())."""
NOBODY = 65534


class Agent:
    """One agent process of a test: its socket, database and repository, and how to stop it."""

    def __init__(
        self, socket_path: Path, db: Path, repo: Path | str, max_running: int = 2,
        cli: bool = False,
    ) -> None:
        self.socket = socket_path
        self.db = db
        self.repo = repo
        self.command = None if cli else [*AGENT, "--max-running", str(max_running)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        proc = start_agent(
            str(self.socket),
            repo_location=str(self.repo),
            db_path=str(self.db),
            timeout=15,
            command=self.command,
        )
        assert proc is not None, f"an agent already answered on {self.socket}"
        self.proc = proc
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: the agent dies at once, undoing nothing."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(TIMEOUT)

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL if it will not end); return its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
            raise AssertionError(f"agent {self.proc.pid} ignored SIGTERM for {TIMEOUT} s") from None


class Agents:
    """Starts agents and clients for one test; stops and closes them all at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.agents: list[Agent] = []
        self.clients: list[AgentClient] = []

    def start(
        self, name: str = "agent", *, socket_dir: Path | None = None,
        repo: Path | str | None = None, **kw,
    ) -> Agent:
        sock = (socket_dir or self.tmp / f"{name}-run") / "agent.sock"
        where = self.tmp / "repo" if repo is None else repo
        agent = Agent(sock, self.tmp / f"{name}-db" / "jobs.db", where, **kw)
        self.agents.append(agent)
        return agent.start()

    def client(self, agent: Agent) -> AgentClient:
        client = AgentClient(str(agent.socket))
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for agent in self.agents:
            agent.stop()


@pytest.fixture
def agents(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Agents]:
    """Agents of this test; stopped before the loop kit undoes the volumes they use."""
    if request.node.get_closest_marker("loop") is not None:
        request.getfixturevalue("loopkit")  # set up first, so torn down after the agents
    made = Agents(tmp_path)
    try:
        yield made
    finally:
        made.close()


class Changes:
    """Lets a test wait until something holds, checked again at every job change."""

    def __init__(self, client: AgentClient) -> None:
        self._changed = threading.Condition()
        client.subscribe(self._notify)

    def _notify(self, _job_id: str) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, TIMEOUT), f"waited {TIMEOUT} s for {what}"


def done(client: AgentClient, job_id: str) -> JobView:
    view = client.wait(job_id, timeout=TIMEOUT)
    assert view.state is JobState.DONE, f"{view.title}: {view.state.value}: {view.error}"
    return view


def image_ids(repo: Path) -> list[str]:
    """The repository's image ids; none when nothing ever created it."""
    if not (repo / "config.json").exists():
        return []
    return [m.id for m in Repository.open(str(repo), create=False).images()]


def raw_volume(loopkit, size_mib: int):
    """A loop device without a file system, filled with random bytes."""
    vol = loopkit.volume(f"{size_mib}M", None)
    with open(vol.device, "r+b") as f:
        f.write(os.urandom(size_mib * MIB))
    return vol


def random_file_volume(loopkit, size: str, data_mib: int):
    """A mounted ext4 volume holding one file of ``data_mib`` MiB of random bytes."""
    vol = loopkit.volume(size, "ext4")
    with open(vol.mount_point / "random.bin", "wb") as f:
        for _ in range(data_mib // 4):
            f.write(os.urandom(4 * MIB))
    os.sync()
    return vol


def kill_at_first_progress(client: AgentClient, agent: Agent, *, reading: bool = False):
    """Subscribe a listener that SIGKILLs ``agent`` at the first progress it sees."""
    killed = threading.Event()

    def listener(job_id: str) -> None:
        p = client.view(job_id).progress
        if p is not None and (p.done > 0 or not reading) and not killed.is_set():
            agent.kill()
            killed.set()

    client.subscribe(listener)
    return killed


@contextlib.contextmanager
def reads_throttled(pid: int, device: str, bytes_per_second: int) -> Iterator[None]:
    """Slow process ``pid``'s reads of ``device`` (a blkio cgroup), so a backup takes a while."""
    root = Path("/sys/fs/cgroup/blkio")
    if not (root / "blkio.throttle.read_bps_device").exists():
        pytest.skip("needs the cgroup v1 blkio controller to make a backup slow")
    home = next(
        line.split(":", 2)[2]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if "blkio" in line.split(":", 2)[1].split(",")
    )
    group = root / f"blockvault-test-{os.getpid()}-{pid}"
    group.mkdir()
    try:
        rdev = os.stat(device).st_rdev
        spec = f"{os.major(rdev)}:{os.minor(rdev)} {bytes_per_second}"
        (group / "blkio.throttle.read_bps_device").write_text(spec)
        (group / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            (root / home.lstrip("/") / "cgroup.procs").write_text(str(pid))
        group.rmdir()


# --- jobs through the agent ---------------------------------------------------------------


@pytest.mark.loop
def test_backups_submitted_through_one_client_reach_done_as_another_client_follows(
    loopkit, agents, tmp_path
):
    one, two = raw_volume(loopkit, 8), raw_volume(loopkit, 8)
    agent = agents.start()
    submitter, watcher = agents.client(agent), agents.client(agent)
    seen: list[tuple[str, JobState]] = []
    watcher.subscribe(lambda job_id: seen.append((job_id, watcher.view(job_id).state)))
    watched = Changes(watcher)
    # A client that asks for the events and never reads them: the jobs must not wait for it.
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(str(agent.socket))
    idle.sendall(b"GET /v1/events HTTP/1.1\r\nHost: agent\r\n\r\n")
    try:
        jobs = [submitter.submit(BackupSpec(v.device)) for v in (one, two)]
        views = [done(submitter, j) for j in jobs]
        watched.wait_for(
            lambda: all((j, JobState.DONE) in seen for j in jobs), "the watcher to see both done"
        )
    finally:
        idle.close()

    assert sorted(image_ids(agent.repo)) == sorted(v.report["image_id"] for v in views)
    for job_id in jobs:
        states = [s for j, s in seen if j == job_id]
        assert states[-1] is JobState.DONE and JobState.RUNNING in states, states
        # The watcher's cache, built from events carrying one sample each, holds the
        # same view (every sample too) as the agent's own record of the finished job.
        assert watcher.view(job_id) == agents.client(agent).view(job_id)
    assert [v.id for v in watcher.views()] == jobs
    health = submitter.health()
    assert health["pid"] == agent.pid and health["jobs"] == 2 and health["version"] == 1
    assert health["repo"] == str(agent.repo) and health["socket"] == str(agent.socket)
    assert submitter.outlives_client is True


@pytest.mark.loop
def test_agent_killed_mid_backup_comes_back_with_the_job_interrupted_and_its_rerun_completes(
    loopkit, agents
):
    # Dynamic: a SIGKILLed agent undoes nothing, and a static backup's read-only remount
    # would stay (see the static test below); dynamic changes nothing it must undo.
    vol = random_file_volume(loopkit, "512M", 256)
    agent = agents.start()
    client = agents.client(agent)
    killed = kill_at_first_progress(client, agent)
    job = client.submit(BackupSpec(str(vol.mount_point), imagetype="dynamic"))
    assert killed.wait(TIMEOUT), "the backup never reported progress"
    assert agent.proc is not None and agent.proc.returncode == -signal.SIGKILL
    assert agent.socket.exists()  # the dead agent's socket stays; the next one replaces it
    assert image_ids(agent.repo) == []  # the manifest is written last: no half image

    agent.start()  # same socket, same database
    view = client.wait(job, timeout=TIMEOUT)
    assert view.state is JobState.INTERRUPTED, f"{view.state.value}: {view.error}"
    assert view.return_code == 12 and view.error and "\n" not in view.error
    assert "interrupted" in view.log[-1]

    rerun = client.rerun(job)
    assert rerun != job
    finished = done(client, rerun)
    assert image_ids(agent.repo) == [finished.report["image_id"]]
    check = blockvault("repo", "check", "--repo", str(agent.repo))
    assert check.rc == 0, check.out + check.err
    (vol.mount_point / "after.txt").write_text("still writable")


@pytest.mark.loop
def test_a_client_waiting_on_a_job_whose_agent_died_gives_up_in_seconds(loopkit, agents):
    """The CLI follows a job this way: a dead agent is an unknown outcome, never a hang."""
    vol = raw_volume(loopkit, 96)
    agent = agents.start()
    killer = agents.client(agent)
    killed = kill_at_first_progress(killer, agent)
    follower = agents.client(agent)  # as the command line that submitted the job
    job = follower.submit(BackupSpec(vol.device, imagetype="dynamic"))
    assert killed.wait(TIMEOUT), "the backup never reported progress"

    started = time.monotonic()
    with pytest.raises(AgentUnavailable) as lost:
        follower.wait(job, timeout=TIMEOUT)

    assert time.monotonic() - started < AGENT_LOST_AFTER + 5
    assert f"job {job}" in lost.value.message and "outcome is unknown" in lost.value.message
    assert lost.value.return_code == 12 and "\n" not in lost.value.message
    agent.start()  # the next agent has it as interrupted
    assert agents.client(agent).wait(job, timeout=TIMEOUT).state is JobState.INTERRUPTED


@pytest.mark.loop
def test_sigterm_mid_static_backup_cancels_it_undoes_the_remount_and_exits_0(loopkit, agents):
    vol = random_file_volume(loopkit, "64M", 32)
    agent = agents.start()
    client = agents.client(agent)
    changes = Changes(client)
    with reads_throttled(agent.pid, vol.device, 8 * MIB):  # so SIGTERM lands mid-copy
        job = client.submit(BackupSpec(str(vol.mount_point), imagetype="static"))
        changes.wait_for(
            lambda: (p := client.view(job).progress) is not None and p.done > 0, "the copy"
        )
        assert agent.stop() == 0
    assert not agent.socket.exists()
    (vol.mount_point / "after.txt").write_text("writable again")  # the remount was undone
    assert image_ids(agent.repo) == []

    agent.start()
    view = agents.client(agent).view(job)
    assert view.state is JobState.CANCELLED, f"{view.state.value}: {view.error}"
    assert any("cancel requested" in line for line in view.log)


@pytest.mark.loop
def test_agent_killed_during_a_static_backup_has_the_volume_writable_after_restart(loopkit, agents):
    """SIGKILL cannot be caught: the undo record makes the next agent remount read-write."""
    vol = random_file_volume(loopkit, "64M", 32)
    agent = agents.start()
    client = agents.client(agent)
    killed = kill_at_first_progress(client, agent, reading=True)
    with reads_throttled(agent.pid, vol.device, 8 * MIB):  # so the kill lands mid-copy
        client.submit(BackupSpec(str(vol.mount_point), imagetype="static"))
        assert killed.wait(TIMEOUT), "the backup never read a byte"
    agent.proc.wait(TIMEOUT)
    with pytest.raises(OSError):  # the killed agent could not undo its remount
        (vol.mount_point / "during.txt").write_text("read-only")
    agent.start()  # the next agent finds the record and completes the undo
    (vol.mount_point / "after.txt").write_text("writable")
    # Only this volume's: another test may keep a record on purpose (an undo that failed).
    assert not [r for r in undo.records() if r.target == str(vol.mount_point)]
    assert not list(undo_dir().glob("*.tmp"))


@pytest.mark.loop
def test_restore_queued_behind_a_backup_is_refused_when_its_target_was_mounted_meanwhile(
    loopkit, agents
):
    small = loopkit.volume("16M", "ext4")
    loopkit.fill(small, files=4)
    slow = raw_volume(loopkit, 64)
    dest = loopkit.attach(loopkit.image("16M"))
    loopkit.mkfs(dest, "ext4")
    agent = agents.start(max_running=1)
    client = agents.client(agent)
    image_id = done(client, client.submit(BackupSpec(small.device))).report["image_id"]
    repo = Repository.open(str(agent.repo), create=False)
    plan = plan_restore(repo.image(image_id), dest, repo)
    assert not plan.blocked, plan.findings

    with reads_throttled(agent.pid, slow.device, 8 * MIB):  # eight seconds: it holds the slot
        changes = Changes(client)
        backup = client.submit(BackupSpec(slow.device))
        changes.wait_for(lambda: client.view(backup).progress is not None, "the slow backup")
        restore = client.submit(
            RestoreSpec(image_id, dest=dest, confirm=dest, expected=plan.identity)
        )
        assert client.view(restore).state is JobState.QUEUED
        # Read-only, so the mounted file system itself writes nothing the digest would see.
        mp = loopkit.mount(dest, None, "ro")
        before = device_digest(dest)
        assert client.view(backup).state is JobState.RUNNING  # the restore still waits
        assert client.cancel(backup) is True
        view = client.wait(restore, timeout=TIMEOUT)

    assert client.view(backup).state is JobState.CANCELLED
    assert view.state is JobState.FAILED, f"{view.state.value}: {view.error}"
    assert view.return_code == 12
    assert view.error and "mounted" in view.error and str(mp) in view.error
    assert view.progress is None  # refused before a byte was written
    assert device_digest(dest) == before


# --- who may use it -----------------------------------------------------------------------


def as_nobody(cwd: Path, action: Callable[[], str]) -> str:
    """Return what ``action`` says when run in a forked child as uid/gid 65534 in ``cwd``.

    The child enters ``cwd`` as root, so it needs only search permission there, not on
    tmp_path's 0700 ancestors; what is tested is the socket's own permission.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            said = action()
        except BaseException as e:
            said = f"child failed: {e!r}"
        os.write(w, said.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        said = f.read()
    os.waitpid(pid, 0)
    return said


def raw_health() -> str:
    """Ask for /v1/health on ./agent.sock; return the errno name or the status and body."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect("agent.sock")
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))
    s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
    chunks = []
    while data := s.recv(65536):
        chunks.append(data)
    s.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode() + "\n" + body.decode()


def test_only_root_can_use_the_socket_and_the_agent_refuses_other_uids_itself(agents, tmp_path):
    public = tmp_path / "public"
    public.mkdir()
    public.chmod(0o711)  # others may pass through, so only the socket's mode stands between
    agent = agents.start(socket_dir=public)
    sock = agent.socket
    assert sock.stat().st_mode & 0o777 == 0o600
    assert agent.db.stat().st_mode & 0o777 == 0o600
    assert agent.db.parent.stat().st_mode & 0o777 == 0o700
    assert agents.client(agent).health()["pid"] == agent.pid  # root is welcome

    assert as_nobody(public, raw_health) == "EACCES"
    refused = as_nobody(public, _client_error)
    assert refused == (
        "AgentUnavailable: permission denied on agent.sock: only root may use the blockvault agent"
    )

    # Were the socket opened to everyone by mistake, the agent still checks the peer's uid.
    sock.chmod(0o666)
    try:
        status, _, body = as_nobody(public, raw_health).partition("\n")
        client_said = as_nobody(public, _client_error)
    finally:
        sock.chmod(0o600)
    assert status.split()[1] == "403", status
    doc = json.loads(body)
    assert doc["return_code"] == 12 and "\n" not in doc["error"]
    assert (
        doc["error"] == f"only uid 0 may use the blockvault agent; this connection is uid {NOBODY}"
    )
    assert client_said == f"BlockvaultError: {doc['error']}"


def _client_error() -> str:
    """Ask ./agent.sock for its health with AgentClient; return the error it raised."""
    try:
        AgentClient("agent.sock").health()
    except BlockvaultError as e:
        return f"{type(e).__name__}: {e.message}"
    return "no error"


def test_the_socket_directory_is_made_private(agents, tmp_path):
    agent = agents.start()
    assert agent.socket.parent.stat().st_mode & 0o777 == 0o700
    assert agent.socket.stat().st_mode & 0o777 == 0o600


# --- history and errors -------------------------------------------------------------------


@pytest.mark.loop
def test_job_history_with_its_samples_survives_an_agent_restart(loopkit, agents, tmp_path):
    vol = raw_volume(loopkit, 8)
    agent = agents.start()
    client = agents.client(agent)
    ok = done(client, client.submit(BackupSpec(vol.device)))
    failed = client.wait(client.submit(BackupSpec(str(tmp_path / "nope"))), timeout=TIMEOUT)
    assert failed.state is JobState.FAILED
    before = [client.view(v.id) for v in client.views()]
    assert ok.samples and [v.id for v in before] == [ok.id, failed.id]

    assert agent.stop() == 0
    assert not agent.socket.exists()  # a clean stop removes its socket
    agent.start()
    again = AgentClient(str(agent.socket))
    after = [again.view(v.id) for v in again.views()]
    again.close()
    assert after == before  # every field, every sample


def test_unknown_jobs_and_bad_specs_get_one_line_errors(agents):
    agent = agents.start()
    client = agents.client(agent)
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(agent.socket)), base_url="http://a")
    with http:
        cases = [
            ("GET", "/v1/jobs/999", None, 404, "there is no job 999"),
            ("POST", "/v1/jobs/999/cancel", None, 404, "there is no job 999"),
            ("POST", "/v1/jobs/999/rerun", None, 404, "there is no job 999"),
            ("POST", "/v1/jobs", {"kind": "format", "target": "/"}, 400, "bad job spec"),
            ("POST", "/v1/jobs", {"kind": "backup", "rm": "-rf"}, 400, "bad job spec"),
            ("POST", "/v1/jobs", [1, 2], 400, "bad job spec"),
            ("GET", "/v1/nothing", None, 404, "no GET /v1/nothing"),
            ("GET", "/health", None, 404, "the API is under /v1"),
        ]
        for method, url, body, status, words in cases:
            r = http.request(method, url, json=body)
            assert r.status_code == status, (method, url, r.text)
            doc = r.json()
            assert words in doc["error"] and "\n" not in doc["error"], doc
            assert doc["return_code"] == 12
        r = http.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "x"})
        assert r.status_code == 400 and "not JSON" in r.json()["error"]
        assert http.get("/v1/jobs").json() == {"jobs": []}  # nothing was queued

    with pytest.raises(KeyError):
        client.view("999")
    assert client.cancel("999") is False
    with pytest.raises(BlockvaultError, match=r"^there is no job 999"):
        client.rerun("999")


def test_a_second_agent_on_a_live_socket_or_database_is_refused(agents, tmp_path):
    agent = agents.start()

    def second(socket_path: Path, db: Path) -> subprocess.CompletedProcess[str]:
        cmd = [*AGENT, "--socket", str(socket_path), "--db", str(db)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)

    same_socket = second(agent.socket, tmp_path / "other-db" / "jobs.db")
    assert same_socket.returncode == 12
    assert same_socket.stderr.strip().endswith(f"an agent already listens on {agent.socket}")
    same_db = second(tmp_path / "other-run" / "agent.sock", agent.db)
    assert same_db.returncode == 12
    assert f"another agent uses the job database {agent.db}" in same_db.stderr
    assert not (tmp_path / "other-run" / "agent.sock").exists()  # it cleaned up after itself
    assert agents.client(agent).health()["pid"] == agent.pid  # the first one is untouched


def test_without_an_agent_the_client_says_how_to_start_one(tmp_path):
    path = str(tmp_path / "none.sock")
    assert agent_running(path) is False
    with AgentClient(path) as client, pytest.raises(AgentUnavailable) as e:
        client.submit(BackupSpec("/dev/null"))
    assert e.value.message == (
        f"no blockvault agent answers on {path}; start one with 'blockvault agent' "
        "or 'systemctl start blockvault-agent'"
    )


def test_a_dead_agents_socket_is_replaced_and_a_clean_stop_exits_0(agents):
    agent = agents.start()
    agent.kill()
    assert agent.socket.exists() and not agent_running(str(agent.socket))
    agent.start()
    assert agent_running(str(agent.socket))
    assert agent.stop() == 0
    assert not agent.socket.exists()


def test_start_agent_runs_the_agent_in_its_own_session_in_the_root_directory(agents):
    agent = agents.start(cli=True)  # the console's way: this interpreter's agent module
    assert agent.proc is not None and agent.proc.args[2:4] == ["core.agent.server", "--socket"]
    assert agents.client(agent).health()["pid"] == agent.pid
    assert os.getsid(agent.pid) == agent.pid  # a new session: an SSH hang-up does not reach it
    assert os.readlink(f"/proc/{agent.pid}/cwd") == "/"  # it keeps no mount point busy
    log = agent.db.parent / "agent.log"
    assert log.stat().st_mode & 0o777 == 0o600
    assert start_agent(str(agent.socket), db_path=str(agent.db)) is None  # one runs already
    assert agent.stop() == 0
    assert f"agent {agent.pid} stopped" in log.read_text()
