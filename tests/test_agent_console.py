"""The console and the command line use the agent: jobs outlive the console that watched them.

Every agent here is a real ``blockvault agent`` process on a socket under tmp_path,
serving a real repository under tmp_path; every volume is a loop device of the kit.
``$BLOCKVAULT_AGENT_SOCKET`` names the test's socket in the environment of every child
(the CLI, tmux and the consoles in it), so nothing here talks to an agent of the
machine. Consoles run in tmux panes (80 × 24, ``TERM=xterm``) on a private tmux
server; the test reads their screens with ``capture-pane``, waiting with a deadline.
A backup is made slow, where a test must see it running, by throttling the agent's
reads of the volume (a blkio cgroup), and let go at full speed afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cliutil import ROOT, Result, blockvault
from imagekit import fsck_clean, populate, tree_digest
from loopkit import REQUIRE_ENV
from test_agent import TIMEOUT, Agent, Agents, Changes, image_ids, reads_throttled

from core.agent.client import AgentClient
from core.jobs import JobState, JobView

pytestmark = pytest.mark.loop

MIB = 1 << 20
SLOW = 2 * MIB
"""Bytes per second the agent may read of a throttled volume: a 256 MiB volume then takes
two minutes, far longer than any test looks at it, and the throttle is lifted to finish."""
SCREEN_WAIT = 30.0
"""Seconds a console may take to show something (it imports Textual and scans devices)."""
POLL = 0.05


# --- agents ---------------------------------------------------------------------------------


def agent_processes(under: Path) -> list[int]:
    """Return the pids of live agent processes whose command line names a path below ``under``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # it ended while we looked
            continue
        text = [a.decode(errors="replace") for a in argv]
        if state != "Z" and "agent" in text and any(str(under) in a for a in text):
            found.append(int(proc.name))
    return found


@pytest.fixture
def agents(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Agents]:
    """Agents of this test, stopped (SIGTERM, then wait) before the loop kit undoes the volumes.

    The test's socket is ``$BLOCKVAULT_AGENT_SOCKET`` for every child it starts, and a
    job database of its own ``$BLOCKVAULT_AGENT_DB``: should a console start an agent,
    it starts it here, never on the machine's socket or database.
    """
    request.getfixturevalue("loopkit")  # set up first, so torn down after the agents
    monkeypatch.setenv("BLOCKVAULT_AGENT_SOCKET", str(socket_of(tmp_path)))
    monkeypatch.setenv("BLOCKVAULT_AGENT_DB", str(tmp_path / "agent-db" / "jobs.db"))
    made = Agents(tmp_path)
    try:
        yield made
    finally:
        made.close()
        survivors = agent_processes(tmp_path)
        for pid in survivors:  # started by a console behind the test's back: stop it too
            os.kill(pid, signal.SIGTERM)
        assert not survivors, f"agent processes outlived the test: {survivors}"


def socket_of(tmp_path: Path) -> Path:
    return tmp_path / "agent-run" / "agent.sock"


def start_agent_on(agents: Agents, repo: Path) -> Agent:
    """Start ``blockvault agent --repo REPO`` on the test's socket; return it."""
    tmp = agents.tmp
    agent = Agent(socket_of(tmp), tmp / "agent-db" / "jobs.db", repo, cli=True)
    agents.agents.append(agent)
    return agent.start()


def cli(agent: Agent, *args: str) -> Result:
    """Run ``blockvault ARGS`` with the agent's socket in its environment."""
    return blockvault(*args, env={"BLOCKVAULT_AGENT_SOCKET": str(agent.socket)}, timeout=TIMEOUT)


def jobs_json(agent: Agent) -> list[dict]:
    """Return ``blockvault jobs --json``'s jobs: what a second client of the agent sees."""
    res = cli(agent, "jobs", "--json")
    assert res.rc == 0, res.out + res.err
    return res.json()["jobs"]


def queued_id(res: Result) -> str:
    """Return the id of the job the CLI said it queued in the agent."""
    m = re.search(r"job (\d+) queued in the agent", res.err)
    assert m, f"the CLI queued nothing in the agent: {res.out}{res.err}"
    return m.group(1)


def wait_reading(client: AgentClient, what: str = "the backup to read") -> JobView:
    """Wait until the agent's only job has read something; return its view."""
    changes = Changes(client)

    def reading() -> JobView | None:
        views = client.views()
        p = views[-1].progress if views else None
        return views[-1] if p is not None and p.done > 0 else None

    changes.wait_for(lambda: reading() is not None, what)
    view = reading()
    assert view is not None and view.state is JobState.RUNNING, view
    return view


def done(client: AgentClient, job_id: str) -> JobView:
    view = client.wait(job_id, timeout=TIMEOUT)
    assert view.state is JobState.DONE, f"{view.title}: {view.state.value}: {view.error}"
    return view


def zero_volume(loopkit, size: str = "256M") -> str:
    """Return a loop device of ``size`` zeros, no file system (reading it costs no disk)."""
    return loopkit.volume(size, None).device


def random_volume(loopkit, size_mib: int = 16) -> str:
    """Return a loop device of ``size_mib`` MiB of random bytes (every chunk is new)."""
    vol = loopkit.volume(f"{size_mib}M", None)
    with open(vol.device, "r+b") as f:
        f.write(os.urandom(size_mib * MIB))
    return vol.device


# --- consoles in tmux -------------------------------------------------------------------------


class Consoles:
    """Consoles in tmux panes of a private tmux server; :meth:`close` kills the server."""

    def __init__(self, env: dict[str, str]) -> None:
        # A short directory of its own: a unix socket path must stay under 108 bytes.
        self.dir = Path(f"/tmp/bvac-{uuid.uuid4().hex[:12]}")
        self.dir.mkdir(mode=0o700)
        self.socket = self.dir / "tmux.sock"
        self.env = env
        self._serial = 0

    def tmux(self, *args: str) -> str:
        """Run a tmux command on the private server; return its stdout."""
        p = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, **self.env},
            check=False,
        )
        if p.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def open(self, repo: Path) -> str:
        """Open ``blockvault --repo REPO`` in a new 80 × 24 session; return the session's name."""
        self._serial += 1
        session = f"console-{self._serial}"
        env = {"TERM": "xterm", **self.env}
        command = ["env", "-u", "COLORTERM", *(f"{k}={v}" for k, v in env.items())]
        command += [sys.executable, "-m", "tui.cli", "--repo", str(repo)]
        # One command list: the pane stays (with its last screen) should the console die.
        self.tmux(
            "new-session", "-d", "-s", session, "-x", "80", "-y", "24", "-c", str(ROOT), *command,
            ";", "set-option", "-t", session, "remain-on-exit", "on",
        )  # fmt: skip
        return session

    def screen(self, session: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", session)

    def wait_for(self, session: str, what: str, ok: Callable[[str], bool]) -> str:
        """Return the first screen of ``session`` for which ``ok`` holds; fail with the last."""
        deadline = time.monotonic() + SCREEN_WAIT
        while True:
            screen = self.screen(session)
            if ok(screen):
                return screen
            if self.tmux("display-message", "-p", "-t", session, "#{pane_dead}").strip() == "1":
                pytest.fail(f"the console exited while waiting for {what}:\n{screen}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {SCREEN_WAIT:.0f} s; the screen:\n{screen}")
            time.sleep(POLL)

    def kill(self, session: str) -> None:
        """Kill ``session`` as a dropped SSH link would, and wait until its console is gone."""
        pid = int(self.tmux("display-message", "-p", "-t", session, "#{pane_pid}"))
        self.tmux("kill-session", "-t", session)
        deadline = time.monotonic() + TIMEOUT
        while alive(pid):
            assert time.monotonic() < deadline, f"console {pid} outlived its tmux session"
            time.sleep(POLL)

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-S", str(self.socket), "kill-server"],
            capture_output=True,
            env={**os.environ, **self.env},
            check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def consoles(agents: Agents, tmp_path: Path) -> Iterator[Consoles]:
    """Consoles that find the test's agent; their tmux server is killed at the end."""
    if shutil.which("tmux") is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail("tmux is not installed (tests/run installs it)")
        pytest.skip("tmux is not installed")
    made = Consoles(
        {
            "BLOCKVAULT_AGENT_SOCKET": str(socket_of(tmp_path)),
            "BLOCKVAULT_AGENT_DB": str(tmp_path / "agent-db" / "jobs.db"),
            "BLOCKVAULT_UNDO_DIR": os.environ["BLOCKVAULT_UNDO_DIR"],
        }
    )
    try:
        yield made
    finally:
        made.close()


def job_row(screen: str, job_id: str) -> tuple[str, int] | None:
    """Return (state, percent) of job ``job_id``'s row in the console's job table, if shown."""
    for line in screen.splitlines():
        m = re.match(rf"│\s*{job_id}\s+image \S+ \(\w+\)\s+(\w+)\s+\S*\s*(\d+)%", line)
        if m:
            return m.group(1), int(m.group(2))
    return None


def state_of(screen: str, job_id: str) -> str | None:
    """Return the state the console's job table shows for job ``job_id``, if it shows it."""
    row = job_row(screen, job_id)
    return None if row is None else row[0]


# --- the tests ------------------------------------------------------------------------------


def test_a_backup_keeps_running_when_its_console_dies_and_a_new_console_shows_its_progress(
    loopkit, agents, consoles, tmp_path
):
    """The issue's acceptance test: submit from the CLI, watch, kill the console, watch again."""
    dev = zero_volume(loopkit)
    repo = tmp_path / "repo"
    agent = start_agent_on(agents, repo)
    client = agents.client(agent)
    with reads_throttled(agent.pid, dev, SLOW):
        submitted = cli(agent, "backup", "image", dev, "--repo", str(repo), "--no-wait")
        assert submitted.rc == 0, submitted.out + submitted.err
        job = queued_id(submitted)
        assert wait_reading(client).id == job

        first = consoles.open(repo)
        screen = consoles.wait_for(
            first, f"job {job} running", lambda s: state_of(s, job) == "running"
        )
        assert "jobs run in the agent" in screen.splitlines()[0], screen
        consoles.kill(first)  # the console dies, as when the SSH link drops

        assert agent.proc is not None and agent.proc.poll() is None
        with AgentClient(str(agent.socket)) as fresh:  # asks the agent, no cache of its own
            assert fresh.view(job).state is JobState.RUNNING

        second = consoles.open(repo)

        def running_with_progress(screen: str) -> bool:
            row = job_row(screen, job)
            return row is not None and row[0] == "running" and 0 < row[1] < 100

        consoles.wait_for(second, f"job {job} running with progress", running_with_progress)
        listed = {j["id"]: j for j in jobs_json(agent)}
        assert listed[job]["state"] == "running", listed
        progress = listed[job]["progress"]
        assert 0 < progress["done"] < progress["total"], progress
    # The throttle is lifted: the backup finishes at full speed.
    view = done(client, job)
    assert view.log_total and not any("cancel" in line for line in view.log), view.log
    query = cli(agent, "query", "image", "--repo", str(repo), "--json")
    assert query.rc == 0, query.out + query.err
    assert [i["id"] for i in query.json()["images"]] == [view.report["image_id"]]
    consoles.wait_for(second, f"job {job} done", lambda s: state_of(s, job) == "done")


def test_the_console_quits_with_one_key_after_its_agent_went_away(agents, consoles):
    """The agent stopped under an open console: ``q`` still quits, cleanly (it asked the
    gone agent for its jobs, and died in a traceback)."""
    repo = consoles.dir / "repo"  # a short path: the header names it, and where jobs run
    assert blockvault("repo", "init", "--repo", str(repo)).rc == 0
    agent = start_agent_on(agents, repo)
    session = consoles.open(repo)
    consoles.wait_for(session, "the agent's console", lambda s: "jobs run in the agent" in s)
    assert agent.stop() == 0

    consoles.tmux("send-keys", "-t", session, "q")

    def pane(what: str) -> str:
        return consoles.tmux("display-message", "-p", "-t", session, f"#{{{what}}}").strip()

    deadline = time.monotonic() + SCREEN_WAIT
    while pane("pane_dead") != "1" or not pane("pane_dead_status"):
        assert time.monotonic() < deadline, consoles.screen(session)
        time.sleep(POLL)
    screen = consoles.screen(session)
    assert pane("pane_dead_status") == "0" and "Traceback" not in screen, screen


def normalized(report_text: str, image_id: str) -> str:
    """Return the human report without what differs between two runs: the id and the time."""
    lines = [" ".join(line.split()) for line in report_text.replace(image_id, "IMAGE").splitlines()]
    return "\n".join(line for line in lines if not line.startswith("duration "))


VOLATILE = {"image_id", "duration", "throughput"}
"""Report fields that differ between two backups of the same data (the id is the time)."""


def test_backup_through_the_agent_prints_the_report_a_backup_in_this_process_prints(
    loopkit, agents, tmp_path
):
    dev = random_volume(loopkit)
    repo, here = tmp_path / "repo", tmp_path / "repo-here"
    agent = start_agent_on(agents, repo)

    # Each into an empty repository: both store every chunk, so every figure is equal.
    through = cli(agent, "backup", "image", dev, "--repo", str(repo))
    local = cli(agent, "backup", "image", dev, "--repo", str(here), "--no-agent")
    assert through.rc in (0, 8), through.out + through.err
    assert local.rc == through.rc, local.out + local.err
    job = queued_id(through)
    assert "queued in the agent" not in local.err
    [agent_image], [local_image] = image_ids(repo), image_ids(here)
    assert f"image {agent_image}" in through.out
    assert normalized(through.out, agent_image) == normalized(local.out, local_image)

    # --json: the same report document (both runs now find every chunk stored already).
    through_json = cli(agent, "backup", "image", dev, "--repo", str(repo), "--json")
    local_json = cli(agent, "backup", "image", dev, "--repo", str(here), "--json", "--no-agent")
    assert through_json.rc == local_json.rc == through.rc, through_json.err + local_json.err
    doc, local_doc = through_json.json(), local_json.json()
    assert doc.keys() == local_doc.keys()
    assert {k: v for k, v in doc.items() if k not in VOLATILE} == {
        k: v for k, v in local_doc.items() if k not in VOLATILE
    }
    assert doc["chunks_new"] == 0 and doc["bytes_dedup"] > 0

    listed = jobs_json(agent)
    assert [(j["id"], j["state"]) for j in listed] == [
        (job, "done"),
        (queued_id(through_json), "done"),
    ]
    assert [j["report"]["image_id"] for j in listed] == [agent_image, doc["image_id"]]
    assert sorted(image_ids(repo)) == sorted([agent_image, doc["image_id"]])


def test_ctrl_c_detaches_the_cli_and_the_job_runs_on_to_its_end(loopkit, agents, tmp_path):
    dev = zero_volume(loopkit)
    repo = tmp_path / "repo"
    agent = start_agent_on(agents, repo)
    client = agents.client(agent)
    err_path = tmp_path / "cli.err"
    with reads_throttled(agent.pid, dev, SLOW), open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tui.cli", "backup", "image", dev, "--repo", str(repo)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env={**os.environ, "BLOCKVAULT_AGENT_SOCKET": str(agent.socket)},
        )
        try:
            job = wait_reading(client).id
            assert proc.poll() is None, "the CLI should still follow its job"
            interrupted = time.monotonic()
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            out, _ = proc.communicate(timeout=TIMEOUT)
            took = time.monotonic() - interrupted
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)
        said = err_path.read_text()
        assert proc.returncode == 0, said
        assert took < 5, f"the CLI took {took:.1f} s to detach"
        assert f"detached; job {job} keeps running" in said, said
        assert out == ""  # no report: the job has not ended
        assert client.view(job).state is JobState.RUNNING
    view = done(client, job)  # the throttle is lifted: it completes
    assert not any("cancel" in line for line in view.log), view.log
    assert image_ids(repo) == [view.report["image_id"]]


def test_jobs_cancel_stops_a_running_backup_and_jobs_rerun_runs_it_again(loopkit, agents, tmp_path):
    dev = zero_volume(loopkit)
    repo = tmp_path / "repo"
    agent = start_agent_on(agents, repo)
    client = agents.client(agent)
    with reads_throttled(agent.pid, dev, SLOW):
        submitted = cli(agent, "backup", "image", dev, "--repo", str(repo), "--no-wait", "--json")
        assert submitted.rc == 0, submitted.out + submitted.err
        job = submitted.json()["job"]
        wait_reading(client)
        cancel = cli(agent, "jobs", "cancel", job)
        assert cancel.rc == 0, cancel.out + cancel.err
        assert f"job {job}: cancel requested" in cancel.out
        view = client.wait(job, timeout=TIMEOUT)
    assert view.state is JobState.CANCELLED, f"{view.state.value}: {view.error}"
    assert image_ids(repo) == []  # a cancelled backup stores no image

    again = cli(agent, "jobs", "rerun", job, "--json")
    assert again.rc == 0, again.out + again.err
    rerun = again.json()["rerun"]
    assert rerun != job
    finished = done(client, rerun)
    assert image_ids(repo) == [finished.report["image_id"]]
    states = {j["id"]: j["state"] for j in jobs_json(agent)}
    assert states == {job: "cancelled", rerun: "done"}


def test_restore_from_the_cli_runs_in_the_agent_and_a_wrong_confirmation_submits_nothing(
    loopkit, agents, tmp_path
):
    vol = loopkit.volume("128M", "ext4")
    populate(vol.mount_point)
    expected = tree_digest(vol.mount_point)
    repo = tmp_path / "repo"
    agent = start_agent_on(agents, repo)
    backup = cli(agent, "backup", "image", str(vol.mount_point), "--repo", str(repo))
    assert backup.rc in (0, 8), backup.out + backup.err
    queued_id(backup)
    dest = loopkit.attach(loopkit.image("128M"))

    wrong = cli(
        agent, "restore", "image", vol.device, dest, "--repo", str(repo), "--confirm", "WRONG"
    )
    assert wrong.rc == 12, wrong.out + wrong.err
    assert "does not name" in wrong.err and "queued" not in wrong.err
    assert [j["spec"]["kind"] for j in jobs_json(agent)] == ["backup"]  # nothing submitted

    res = cli(agent, "restore", "image", vol.device, dest, "--repo", str(repo), "--confirm", dest)
    assert res.rc in (0, 8), res.out + res.err
    job = queued_id(res)
    assert "restored" in res.out
    listed = jobs_json(agent)
    assert [(j["spec"]["kind"], j["state"]) for j in listed] == [
        ("backup", "done"),
        ("restore", "done"),
    ]
    assert listed[1]["id"] == job and listed[1]["spec"]["dest"] == dest
    clean, fsck = fsck_clean(dest)
    assert clean, fsck
    mp = loopkit.mount(dest, None, "ro")
    assert tree_digest(mp) == expected
    loopkit.umount(mp)


def test_with_an_agent_of_another_repository_the_cli_runs_the_backup_itself(
    loopkit, agents, tmp_path
):
    dev = random_volume(loopkit, 8)
    repo, other = tmp_path / "repo", tmp_path / "other-repo"
    agent = start_agent_on(agents, other)
    res = cli(agent, "backup", "image", dev, "--repo", str(repo), "--json")
    assert res.rc in (0, 8), res.out + res.err
    assert "queued in the agent" not in res.err
    assert image_ids(repo) == [res.json()["image_id"]]
    assert jobs_json(agent) == []  # the agent ran nothing
    assert agents.client(agent).health()["repo"] == str(other)
    assert not other.exists()  # the agent never opened its repository
