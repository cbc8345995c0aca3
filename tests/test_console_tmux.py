"""The real console in a real terminal, as an operator gets it over ``ssh -t``.

A tmux pane of 80 × 24 with ``TERM=xterm`` (and ``SSH_CONNECTION`` set, as sshd sets
it) runs ``blockvault --repo REPO --no-agent`` from this checkout; the test types keys with
``tmux send-keys`` and reads the screen with ``tmux capture-pane``, waiting on the
screen with a deadline, never on a bare sleep. Unlike the Pilot tests this goes
through a real pty: terminal detection, key decoding, the driver and the exit code.

The tmux server is a private one (its own socket in a directory of its own, no user
configuration), killed in a ``finally`` whatever happens.
"""

from __future__ import annotations

import os
import re
import shutil
import signal as signal_module
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loopkit import REQUIRE_ENV

from core.repo.repository import Repository

pytestmark = pytest.mark.loop

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 80, 24
WAIT = 10.0
"""Seconds any one screen may take to appear before the test gives up."""
POLL = 0.02
SSH_ENV = {"TERM": "xterm", "SSH_CONNECTION": "192.0.2.10 50022 192.0.2.1 22"}
"""What the console sees over ``ssh -t`` from a plain terminal (a documentation address)."""


class Pane:
    """One tmux pane on a private tmux server: keys in, screen text out."""

    def __init__(self, socket: Path, session: str) -> None:
        self.socket = socket
        self.session = session

    def tmux(self, *args: str) -> str:
        """Run a tmux command on this server; return its stdout."""
        p = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if p.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def start(self, argv: list[str], env: dict[str, str]) -> None:
        """Start ``argv`` in a new detached WIDTH × HEIGHT session; keep the pane once it exits."""
        command = ["env", "-u", "COLORTERM", *(f"{k}={v}" for k, v in env.items()), *argv]
        # One tmux command list: the pane is kept even if the console dies at once.
        self.tmux(
            "new-session", "-d", "-s", self.session, "-x", str(WIDTH), "-y", str(HEIGHT),
            "-c", str(ROOT), *command,
            ";", "set-option", "-t", self.session, "remain-on-exit", "on",
            ";", "set-option", "-t", self.session, "window-size", "manual",
        )  # fmt: skip

    def keys(self, *keys: str, literal: bool = False) -> None:
        """Send ``keys`` (tmux key names, or text with ``literal``)."""
        self.tmux("send-keys", "-t", self.session, *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        """Return the pane's text as it is now."""
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def info(self, fmt: str) -> str:
        """Return a tmux format (``#{pane_dead}``) for the pane."""
        return self.tmux("display-message", "-p", "-t", self.session, fmt).strip()

    def wait_for(self, what: str, ok: Callable[[str], bool], timeout: float = WAIT) -> str:
        """Return the first screen for which ``ok(screen)`` holds; fail with the last screen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if ok(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout:.0f} s; the screen:\n{screen}")
            if self.info("#{pane_dead}") == "1":
                pytest.fail(
                    f"the console exited (status {self.info('#{pane_dead_status}')}) "
                    f"while waiting for {what}; the screen:\n{screen}"
                )
            time.sleep(POLL)

    def wait_text(self, text: str, timeout: float = WAIT) -> str:
        """Return the first screen showing ``text``."""
        return self.wait_for(repr(text), lambda s: text in s, timeout)

    def wait_exit(self, timeout: float = WAIT) -> str:
        """Return how the pane's process ended (``status 0``, ``signal 9``) once it has."""
        deadline = time.monotonic() + timeout
        nudged = 0.0
        while True:
            dead, status, signal, server = self.info(
                "#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}|#{pid}"
            ).split("|")
            if dead == "1" and (status or signal):
                return f"status {status}" if status else f"signal {signal}"
            if time.monotonic() > deadline:
                pytest.fail(f"the console did not exit in {timeout:.0f} s:\n{self.screen()}")
            if dead == "1" and time.monotonic() - nudged > 0.5:
                # The pty's end is seen before the exit status is collected (tmux #4841),
                # and on the Firecracker VMs we run on, tmux 3.3a often never gets the
                # SIGCHLD: the console stays a zombie and the status empty for good.
                # Another SIGCHLD makes the server reap it and record the status itself.
                if nudged:
                    os.kill(int(server), signal_module.SIGCHLD)
                nudged = time.monotonic()
            time.sleep(POLL)


@pytest.fixture
def console(tmp_path: Path, blockvault_cli: list[str]) -> Iterator[Callable[[str], Pane]]:
    """Return a function that opens the console on a repository in a fresh tmux pane."""
    if shutil.which("tmux") is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail("tmux is not installed (tests/run installs it)")
        pytest.skip("tmux is not installed")
    # A short directory of its own: a unix socket path must stay under 108 bytes.
    sock_dir = Path(f"/tmp/bvtmux-{uuid.uuid4().hex[:12]}")
    sock_dir.mkdir(mode=0o700)
    pane = Pane(sock_dir / "sock", f"bv-console-{os.getpid()}-{uuid.uuid4().hex[:8]}")

    def open_console(repo: str) -> Pane:
        # --no-agent: the jobs run in this console. Without it, a console run as root
        # starts the machine's agent (/run/blockvault/agent.sock) in the background,
        # which outlives the test and keeps serving the test's repository.
        pane.start([*blockvault_cli, "--repo", repo, "--no-agent"], SSH_ENV)
        return pane

    try:
        yield open_console
    finally:
        subprocess.run(
            ["tmux", "-S", str(pane.socket), "kill-server"], capture_output=True, check=False
        )
        shutil.rmtree(sock_dir, ignore_errors=True)


def footer(screen: str) -> str:
    return screen.rstrip("\n").splitlines()[-1]


def started(screen: str) -> bool:
    """True once the console has drawn its panes and its footer."""
    return "devices" in screen and "jobs" in screen and "Help" in footer(screen)


IDENTITY = re.compile(r"│\s*(/dev/\S+)  [a-z-]+  \d")
"""The first line of the details pane: ``/dev/loop3  loop  64.0 MiB  ext4``."""
DIALOG = re.compile(r"Back up (/dev/\S+)")
FILTER_BOX = re.compile(r"^ ?(\S+) {2,}Details \(1\)", re.M)
"""The filter box's row: its text left of the tabs of the right-hand pane."""


def filter_text(screen: str) -> str | None:
    """Return what the filter box holds (None: the box is hidden or empty)."""
    m = FILTER_BOX.search(screen)
    return m.group(1) if m else None


def shown_device(screen: str) -> str | None:
    """Return the device whose identity the details pane shows (its first line)."""
    m = IDENTITY.search(screen)
    return m.group(1) if m else None


def dialog_target(screen: str) -> str | None:
    """Return the device the open backup dialog names (None: no dialog is open)."""
    m = DIALOG.search(screen)
    return m.group(1) if m else None


JOB_ROW = re.compile(r"^│ 1 .*?\b(queued|running|cancelling|done|failed|cancelled)\b", re.M)


def job_state(screen: str) -> str | None:
    """Return the state of job 1 in the job table, as the screen shows it."""
    m = JOB_ROW.search(screen)
    return m.group(1) if m else None


def test_console_backs_up_a_volume_by_keys_and_quits_cleanly(loopkit, console, tmp_path):
    """Filter, help, backup dialog, a queued backup reaching done, and q exiting with 0."""
    vol = loopkit.volume("64M", "ext4")
    loopkit.fill(vol, files=8)
    name = Path(vol.device).name
    repo = str(tmp_path / "repo")
    pane = console(repo)

    screen = pane.wait_for("console with its footer", started)
    for key in ("Help", "Backup", "Restore", "Quit"):
        assert key in footer(screen), footer(screen)

    # "/" opens the filter box; typing the name narrows the tree; Enter returns to the tree.
    pane.keys("/")
    pane.wait_text("filter devices")  # the empty box's placeholder: the cursor is in it
    pane.keys(name, literal=True)
    pane.wait_for(f"{name!r} in the filter box", lambda s: filter_text(s) == name)
    pane.keys("Enter")
    ours = re.compile(rf"│{re.escape(name)} 64(\.0)?( MiB|M) ext4\b")
    pane.wait_for(f"{name} in the filtered device tree", lambda s: bool(ours.search(s)))
    pane.keys("?")  # the help overlay
    pane.wait_text("image backups of this machine's volumes")
    pane.keys("Escape")  # closes it
    pane.wait_for("help closed", lambda s: "image backups of this machine" not in s)

    # "b" opens the backup dialog for the highlighted volume. Other devices can match the
    # name (loop1 → loop10): until the dialog names ours, back out and move down.
    for _ in range(8):
        pane.keys("b")
        title = pane.wait_for("the backup dialog", dialog_target)
        if dialog_target(title) == vol.device:
            break
        pane.keys("Escape")
        pane.wait_for("the dialog closed", lambda s: dialog_target(s) is None)
        pane.keys("j")
    assert dialog_target(pane.screen()) == vol.device
    pane.wait_for(
        "the dialog's findings", lambda s: "Queue backup" in s and "checking the volume" not in s
    )
    pane.keys("Enter")  # queues the backup
    screen = pane.wait_for(
        "job 1 finished", lambda s: job_state(s) in ("done", "failed", "cancelled"), 30
    )
    assert job_state(screen) == "done", screen
    # The data, not only the screen: the repository holds one image of this device.
    images = Repository.open(repo, create=False).images()
    assert [m.volume.device for m in images] == [vol.device]

    pane.keys("q")  # no job runs: quits without asking
    assert pane.wait_exit() == "status 0", pane.screen()


def test_filter_keeps_every_key_of_a_fast_typist(loopkit, console, tmp_path):
    """'/' and a device name arriving in one burst filter by the whole name."""
    vol = loopkit.volume("64M", "ext4")
    name = Path(vol.device).name
    pane = console(str(tmp_path / "repo"))
    pane.wait_for("console with its footer", started)
    pane.keys(f"/{name}", literal=True)  # one write to the pty, as a paste or a packet
    pane.wait_for(f"{name!r} in the filter box", lambda s: filter_text(s) == name, 3)


def test_details_follow_the_filter(loopkit, console, tmp_path):
    """After filtering, the details pane shows the device the cursor is on."""
    vols = [loopkit.volume("64M", "ext4"), loopkit.volume("64M", "ext4")]
    pane = console(str(tmp_path / "repo"))
    pane.wait_for("console with its footer", started)
    first = shown_device(pane.wait_for("the highlighted device's details", shown_device))
    target = next(v.device for v in vols if v.device != first)
    name = Path(target).name
    pane.keys("/")
    pane.wait_text("filter devices")
    pane.keys(name, literal=True)
    pane.wait_for(f"{name!r} in the filter box", lambda s: filter_text(s) == name)
    pane.keys("Enter")
    pane.wait_for(f"the details of {target}", lambda s: shown_device(s) == target, 3)


def test_letters_typed_on_the_tree_never_become_filter_text(loopkit, console, tmp_path):
    """Letters typed without '/' leave the filter shut and the tree whole; '/' opens it."""
    vol = loopkit.volume("64M", "ext4")
    name = Path(vol.device).name
    pane = console(str(tmp_path / "repo"))
    pane.wait_for("console with its footer", started)
    pane.keys("lop", literal=True)  # letters no key is bound to, straight on the tree
    pane.keys("?")  # then the help: once it shows, the letters before it were handled
    pane.wait_text("image backups of this machine's volumes")
    pane.keys("Escape")
    screen = pane.wait_for("help closed", lambda s: "image backups of this machine" not in s)
    assert filter_text(screen) is None and "filter devices" not in screen, screen
    pane.keys(f"/{name}", literal=True)
    pane.wait_for(f"{name!r} in the filter box", lambda s: filter_text(s) == name, 3)


def test_a_target_name_typed_ahead_reaches_the_confirmation_whole(
    loopkit, console, tmp_path, blockvault_cli
):
    """Enter on the findings, the target's name and Enter in one write: the restore runs.

    Over a slow link the name arrives in the same packet as the Enter that opens the
    confirmation; before, the letters reached the findings pane and were lost.
    """
    from imagekit import tree_digest

    vol = loopkit.volume("64M", "ext4")
    loopkit.fill(vol, files=8)
    expected = tree_digest(vol.mount_point)
    dest = loopkit.attach(loopkit.image("64M"))
    repo = str(tmp_path / "repo")
    backup = subprocess.run(
        [*blockvault_cli, "backup", "image", vol.device, "--repo", repo],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert backup.returncode == 0, backup.stdout + backup.stderr
    pane = console(repo)
    pane.wait_for("console with its footer", started)
    pane.keys(f"/{Path(vol.device).name}", literal=True)
    pane.keys("Enter")
    for _ in range(8):  # other devices can match the name (loop1 → loop10)
        shown = shown_device(pane.wait_for("a device's details", shown_device))
        if shown == vol.device:
            break
        pane.keys("j")  # the next match
        pane.wait_for(
            "the next device's details",
            lambda s, before=shown: shown_device(s) not in (None, before),
        )
    assert shown_device(pane.screen()) == vol.device
    pane.keys("R")  # the restore wizard; each step's list is read in a worker
    pane.wait_for("the volumes listed", lambda s: "1/6 volume" in s and f"({vol.device}," in s)
    pane.keys("Enter")  # this volume
    pane.wait_for("the versions listed", lambda s: "2/6 version" in s and "■ image" in s)
    pane.keys("Enter")  # its newest version
    pane.wait_for("the targets listed", lambda s: "3/6 target" in s and dest in s)
    # Which line is highlighted does not show in text: try each target in turn until
    # the findings name ours, backing out to the list from the others.
    for downs in range(20):
        pane.keys("Home", *["Down"] * downs, "Enter")  # the first target, then further down
        pane.wait_text("4/6 options")
        pane.keys("Enter")  # the options as they are: on to the findings
        screen = pane.wait_for(
            "the findings", lambda s: "5/6 findings" in s and "checking" not in s
        )
        if f"→ {dest}" in " ".join(screen.replace("█", " ").split()):
            break
        # One Escape at a time: two in one write read as Alt+Escape.
        pane.keys("Escape")  # back to the options
        pane.wait_text("4/6 options")
        pane.keys("Escape")  # back to the targets
        pane.wait_for("the targets listed", lambda s: "3/6 target" in s and dest in s)
    else:
        pytest.fail(f"no target showed {dest}'s findings")
    # An empty target has a few findings and no blocker: they fit, and count as read.
    assert "BLOCKER" not in screen, screen
    pane.keys("Enter", dest, "Enter")  # one write: on, the name, and restore
    screen = pane.wait_for(
        "job 1 finished", lambda s: job_state(s) in ("done", "failed", "cancelled"), 60
    )
    assert job_state(screen) == "done", screen
    mp = loopkit.mount(dest, None, "ro")
    assert tree_digest(mp) == expected
