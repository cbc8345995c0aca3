"""Key-press-to-screen latency of the console in a real terminal, idle and during a backup.

    .venv/bin/python bench/console_latency.py [--runs N] [--size-gib G] [--idle-cycles N]
        [--gap-ms MS] [--poll output|busy] [--jobs console|agent] [--no-quiet]
        [--rebuild] [--keep] [--write-results [--results-file PATH]]

The console runs in a tmux pane of 80 × 24 with ``TERM=xterm`` and ``SSH_CONNECTION``
set (what it gets over ``ssh -t``), on a private tmux server. The bench talks to that
server through one tmux control-mode client, so sending a key and reading the screen
cost a line on a pipe rather than a process start. Each measured press is
``send-keys``, then ``capture-pane`` again and again until the screen shows that
key's effect; the latency is from just before ``send-keys`` to the capture that
first shows it. Captures are taken each time tmux reports output from the pane
(``--poll output``, the default; at least every 5 ms regardless) or back to back
(``--poll busy``: as fast as possible, but on two CPUs the poller and tmux then take
one of them from the console and the backup, which shows in the tail). The idle
console's latency, measured the same way in the same run, is the baseline: the
ratios are the backup's cost. After each detected change the bench waits ``--gap-ms``
(a quick typist, not a key repeat) before the next key.

The keys, in a cycle: ``2`` and ``1`` switch the right-hand pane between the job
and the details (pure UI: the effect is the other pane's text), ``j`` and ``k`` move
the device-tree cursor between two volumes of the run (the details show the other
device's identity; the console also starts a volume check and a history read in
workers, as it does for a user). The tree is filtered to the run's two volumes. If
the screen changed under the bench between two keys (a tree rebuild puts the cursor
back on the first line), it is put back with unmeasured keys first and counted; a
key that shows nothing within 2 s counts as lost, at 2 s.

Per run: the backup volume (a cached ext4 image of ``--size-gib``, ~92 % filled with
AES-CTR output: incompressible, so a backup moves every used byte; 16 GiB backs up in
about 16 s here) is attached with direct I/O and mounted. Three backups, each into a
fresh repository with a cold cache, in an order that reverses every other run:
``blockvault backup image DEV --json`` from the command line; the console's (idle
keys timed first, then ``b`` and Enter, then keys timed until the job row says it is
no longer running); and the console's with no key pressed while it runs (its own
cost, apart from the user's; ``--no-quiet`` skips it). Throughput is the engine's own
figure (the image's stats, as the CLI's JSON reports it). With ``--jobs console`` (the
default) the console runs with ``--no-agent``, so the backup shares its interpreter;
``--jobs agent`` starts ``blockvault agent`` on a socket of the run and the console
hands it the job. Every loop device, mount, tmux server, agent and repository of the
run is undone on every exit path; the volume image stays cached in
``/var/tmp/blockvault-bench/`` (``--rebuild`` makes it anew). Not part of the test
suite. Needs root, tmux, and free space for the image and one repository (~35 GB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(PROJECT_DIR))

import volume  # noqa: E402  bench/volume.py: loop devices, mounts, random data, the lock
from run import cpu_counters, drop_caches, machine_line  # noqa: E402  bench/run.py

from core.repo.repository import Repository  # noqa: E402

AGENT_SOCKET_ENV = "BLOCKVAULT_AGENT_SOCKET"
"""Where a console looks for the agent (core.agent.client.SOCKET_ENV)."""

SECTION = {"console": "## Console latency", "agent": "## Console latency, jobs in the agent"}
"""The results section each ``--jobs`` writes (a re-run replaces its own section)."""
IMAGE_NAME = "latency-volume.img"
META_NAME = "latency-volume.json"
RECIPE_VERSION = 1
"""Bump when the recipe changes, so cached images are rebuilt."""
MIB = 1 << 20
GIB = 1 << 30
FILE_SIZE = 256 * MIB
FILL = 0.92
"""Fraction of the file system's free space filled with random files."""
WIDTH, HEIGHT = 80, 24
SSH_ENV = {"TERM": "xterm", "SSH_CONNECTION": "192.0.2.10 50022 192.0.2.1 22"}
TARGET_P95_MS = 100.0
MIN_PRESSES = 100
PHASES = ("idle", "backup")
KEY_TIMEOUT = 2.0
"""Seconds after which a key that showed nothing counts as lost (at this latency)."""
WAIT = 30.0
"""Seconds any set-up screen (start, dialog, job start) may take."""
BACKUP_TIMEOUT = 600.0

IDENTITY = re.compile(r"│\s*(/dev/\S+)  [a-z-]+  \d")
"""The details pane's first line: ``/dev/loop3  loop  16.0 GiB  ext4``."""
FILTER_BOX = re.compile(r"^ ?(\S+) {2,}Details \(1\)", re.M)
DIALOG = re.compile(r"Back up (/dev/\S+)")
SGR = re.compile(r"\x1b\[[0-9;]*m")
SGR_PARAMS = re.compile(r"\x1b\[([0-9;]*)m")
CURSOR_CODES = {7, 48, *range(40, 48), *range(100, 108)}
"""SGR codes of a cell drawn reversed or on a background: the input cursor (the box has none)."""
SAFE_LETTERS = "adefhlmopsu"
"""Letters no console key is bound to (nor the job table's, nor a dialog's), for the filter
text: a letter that reached the wrong widget would do nothing (``c`` would cancel a job)."""
JOB_ROW = re.compile(r"^│ 1 .*?\b(queued|running|cancelling|done|failed|cancelled)\b", re.M)


# --------------------------------------------------------------------------- screen facts


def shown_device(screen: str) -> str | None:
    """Return the device whose identity the details pane shows (None: not showing)."""
    m = IDENTITY.search(screen)
    return m.group(1) if m else None


def job_tab(screen: str) -> bool:
    """True when the right-hand pane shows the job (graph and report), not the details."""
    return shown_device(screen) is None and any(
        w in screen for w in ("peak", "no job selected", "MiB/s")
    )


def job_state(screen: str) -> str | None:
    """Return job 1's state as the job table shows it (None: no such row yet)."""
    m = JOB_ROW.search(screen)
    return m.group(1) if m else None


def filter_text(screen: str) -> str | None:
    """Return the filter box's text (None: hidden or empty)."""
    m = FILTER_BOX.search(screen)
    return m.group(1) if m else None


# --------------------------------------------------------------------------- tmux


class ConsoleStuck(RuntimeError):
    """A screen the bench waited for did not come."""


class Tmux:
    """A private tmux server with one session, driven through a control-mode client."""

    def __init__(self, workdir: Path, session: str) -> None:
        self.socket = workdir / "tmux.sock"
        self.session = session
        self.client: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._output_seen = False
        self.capture_times: list[float] = []
        """Seconds each ``capture-pane`` round trip took (the polling overhead)."""

    def _argv(self, *args: str) -> list[str]:
        return ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args]

    def start(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        """Start ``argv`` in a detached WIDTH × HEIGHT session and attach the control client."""
        command = ["env", "-u", "COLORTERM", *(f"{k}={v}" for k, v in env.items()), *argv]
        subprocess.run(
            self._argv(
                "new-session",
                "-d",
                "-s",
                self.session,
                "-x",
                str(WIDTH),
                "-y",
                str(HEIGHT),
                "-c",
                str(cwd),
                *command,
                ";",
                "set-option",
                "-t",
                self.session,
                "remain-on-exit",
                "on",
                ";",
                "set-option",
                "-t",
                self.session,
                "window-size",
                "manual",
            ),
            check=True,
            capture_output=True,
        )
        self.client = subprocess.Popen(
            self._argv("-C", "attach-session", "-t", self.session, "-f", "ignore-size"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        self._read_block()  # the attach's own (empty) reply

    def _line(self, timeout: float | None) -> bytes | None:
        """Return the next line from the control client (None when ``timeout`` passed)."""
        assert self.client is not None and self.client.stdout is not None
        fd = self.client.stdout.fileno()
        deadline = None if timeout is None else time.perf_counter() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.perf_counter())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise ConsoleStuck("the tmux control client exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _read_block(self) -> list[str]:
        out: list[str] = []
        inside = False
        while True:
            line = self._line(WAIT)
            if line is None:
                raise ConsoleStuck("tmux did not answer a command")
            if not inside:
                if line.startswith(b"%begin"):
                    inside = True
                elif line.startswith(b"%output"):
                    self._output_seen = True
                elif line.startswith(b"%exit"):
                    raise ConsoleStuck("the tmux control client was told to exit")
                continue
            if line.startswith((b"%end", b"%error")):
                if line.startswith(b"%error"):
                    raise RuntimeError("tmux: " + " ".join(out))
                return out
            out.append(line.decode(errors="replace"))

    def cmd(self, command: str) -> list[str]:
        """Run one tmux command through the control client; return its output lines."""
        assert self.client is not None and self.client.stdin is not None
        self.client.stdin.write(command.encode() + b"\n")
        return self._read_block()

    def keys(self, *keys: str, literal: bool = False) -> None:
        """Send ``keys`` (tmux key names, or text with ``literal``) to the pane."""
        flag = "-l " if literal else ""
        self.cmd(f"send-keys -t {self.session} {flag}" + " ".join(shlex.quote(k) for k in keys))

    def screen(self) -> str:
        """Return the pane's text now (and record how long the round trip took)."""
        self._output_seen = False
        t0 = time.perf_counter()
        lines = self.cmd(f"capture-pane -p -t {self.session}")
        self.capture_times.append(time.perf_counter() - t0)
        return "\n".join(lines)

    def styled(self) -> list[str]:
        """Return the pane's lines with their colours (SGR escapes)."""
        return self.cmd(f"capture-pane -p -e -t {self.session}")

    def devices_border(self) -> tuple[str, ...]:
        """Return the colours of the device box's top border (they show the tree's focus)."""
        top = next((ln for ln in self.styled() if "devices" in ln and "╮" in ln), "")
        return tuple(SGR.findall(top[: top.find("╮") + 1]))

    def tree_cursor(self) -> str | None:
        """Return the device name on the tree's cursor line (drawn on a background)."""
        for line in self.styled():
            body = line.split("│", 2)[1] if line.count("│") >= 2 else ""
            name = SGR.sub("", body).split(" ", 1)[0]
            lead = SGR_PARAMS.findall(body[: body.find(name)]) if name else []
            if name.startswith("loop") and any(
                {int(c) for c in p.split(";") if c} & CURSOR_CODES for p in lead
            ):
                return name
        return None

    def filter_cursor(self) -> bool:
        """True when the filter box draws its cursor: it has the focus (the cursor blinks)."""
        row = next((ln for ln in self.styled() if "Details (1)" in ln), "")
        for params in SGR_PARAMS.findall(row[: row.find("Details (1)")]):
            codes = {int(c) for c in params.split(";") if c}
            if codes & CURSOR_CODES:
                return True
        return False

    def wait_output(self, timeout: float) -> None:
        """Return when the pane printed something since the last capture, or after ``timeout``."""
        deadline = time.perf_counter() + timeout
        while not self._output_seen:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            line = self._line(left)
            if line is None:
                return
            if line.startswith(b"%output"):
                self._output_seen = True

    def info(self, fmt: str) -> str:
        """Return a tmux format for the pane (``#{pane_dead}``)."""
        return "\n".join(self.cmd(f"display-message -p -t {self.session} '{fmt}'")).strip()

    def wait_for(
        self, what: str, ok: Callable[[str], bool], timeout: float = WAIT, every: float = 0.0
    ) -> str:
        """Return the first screen for which ``ok`` holds (looking at most every ``every`` s)."""
        deadline = time.perf_counter() + timeout
        while True:
            screen = self.screen()
            if ok(screen):
                return screen
            if time.perf_counter() > deadline:
                raise ConsoleStuck(f"no {what} after {timeout:.0f} s; the screen:\n{screen}")
            if self.info("#{pane_dead}") == "1":
                raise ConsoleStuck(f"the console exited while waiting for {what}:\n{screen}")
            if every:
                time.sleep(every)
            self.wait_output(0.05)

    def wait_exit(self, timeout: float = WAIT) -> str:
        """Return how the pane's process ended (``status 0``) once it has."""
        deadline = time.perf_counter() + timeout
        nudged = 0.0
        while True:
            dead, status, sig, server = self.info(
                "#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}|#{pid}"
            ).split("|")
            if dead == "1" and (status or sig):
                return f"status {status}" if status else f"signal {sig}"
            if time.perf_counter() > deadline:
                raise ConsoleStuck("the console did not exit")
            if dead == "1" and time.perf_counter() - nudged > 0.5:
                # tmux 3.3a on these VMs often misses the SIGCHLD of a pane's process (it
                # stays a zombie, the status empty); another SIGCHLD makes it reap it.
                if nudged:
                    os.kill(int(server), signal.SIGCHLD)
                nudged = time.perf_counter()
            time.sleep(0.02)

    def close(self) -> None:
        """Kill the private server (and with it the console, if it still runs)."""
        subprocess.run(self._argv("kill-server"), capture_output=True, check=False)
        if self.client is not None:
            try:
                self.client.wait(5)
            except subprocess.TimeoutExpired:
                self.client.kill()
                self.client.wait(5)
            self.client = None
        self.socket.unlink(missing_ok=True)


# --------------------------------------------------------------------------- measurements


@dataclass
class Press:
    """One timed key press."""

    key: str
    kind: str  # "tab" | "cursor"
    phase: str  # "idle" | "backup"
    latency: float
    """Seconds from just before send-keys to the first capture showing the effect."""
    captures: int
    """Captures taken until the effect showed (1: the first one already did)."""
    lost: bool = False
    """Nothing showed within KEY_TIMEOUT; ``latency`` is then that timeout (a lower bound)."""


@dataclass(frozen=True)
class Key:
    """A measured key: the screen it needs before, and the screen that shows it took."""

    key: str
    kind: str  # "tab" | "cursor"
    pre: Callable[[str], bool]
    post: Callable[[str], bool]


@dataclass
class BackupRun:
    """One backup of the volume: from the CLI or from the console."""

    run: int
    how: str  # "cli" | "console" (keys pressed meanwhile) | "quiet" (console, no keys)
    duration: float
    """The engine's own duration (the image's stats), seconds."""
    bytes_read: int
    bytes_volume: int
    wall: float
    """Seconds from the start (process start or Enter) to the end seen."""

    @property
    def rate(self) -> float:
        """Bytes read per second of the engine's duration."""
        return self.bytes_read / self.duration


@dataclass
class Results:
    presses: list[Press] = field(default_factory=list)
    backups: list[BackupRun] = field(default_factory=list)
    capture_rt: dict[str, list[float]] = field(default_factory=lambda: {"idle": [], "backup": []})
    steal: dict[str, float] = field(default_factory=lambda: {"idle": 0.0, "backup": 0.0})
    busy_cpu: dict[str, float] = field(default_factory=lambda: {"idle": 0.0, "backup": 0.0})
    seconds: dict[str, float] = field(default_factory=lambda: {"idle": 0.0, "backup": 0.0})
    resyncs: dict[str, int] = field(default_factory=lambda: {"idle": 0, "backup": 0})


def percentile(values: list[float], q: float) -> float:
    """Return the ``q`` percentile (0–100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- the volume


def build_volume(cache_dir: Path, size: int, res: volume.Resources) -> dict:
    """Build the incompressible ext4 image into ``cache_dir`` (a temp name, renamed at the end)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / (IMAGE_NAME + ".building")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        f.truncate(size)
    volume.run("mkfs.ext4", "-q", "-F", "-L", "bvlatency", str(tmp))
    dev = res.attach(tmp, read_only=False)
    mnt = cache_dir / "latency-build-mnt"
    t0 = time.monotonic()
    try:
        res.mount(dev, mnt, "rw,nodiscard")
        st = os.statvfs(mnt)
        files = int(st.f_bavail * st.f_frsize * FILL) // FILE_SIZE
        source = ""
        for i in range(files):
            source = volume.write_random(mnt / f"random-{i:03d}.bin", FILE_SIZE, f"latency{i}")
        os.sync()
        used = volume.used_bytes(mnt)
        res.umount(mnt)
    finally:
        if mnt in res.mounts:
            res.umount(mnt)
        with contextlib.suppress(OSError):
            mnt.rmdir()
        res.detach(dev)
    os.replace(tmp, cache_dir / IMAGE_NAME)
    meta = {
        "recipe_version": RECIPE_VERSION,
        "size": size,
        "files": files,
        "file_size": FILE_SIZE,
        "used_bytes": used,
        "random_source": source,
        "build_seconds": round(time.monotonic() - t0, 1),
        "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    (cache_dir / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def ensure_volume(cache_dir: Path, size: int, rebuild: bool, res: volume.Resources) -> dict:
    """Return the cached image's metadata, building it when missing, stale or asked to."""
    image, meta_path = cache_dir / IMAGE_NAME, cache_dir / META_NAME
    meta: dict = {}
    if meta_path.exists():
        with contextlib.suppress(ValueError):
            meta = json.loads(meta_path.read_text())
    fresh = (
        image.exists()
        and meta.get("recipe_version") == RECIPE_VERSION
        and meta.get("size") == size
        and image.stat().st_size == size
    )
    if rebuild or not fresh:
        free = shutil.disk_usage(cache_dir).free
        if free < size * 1.05:
            raise SystemExit(
                f"{cache_dir}: {free / GIB:.1f} GiB free, the image needs {size / GIB:.0f}"
            )
        print(
            f"building {image} ({size / GIB:.0f} GiB, random files); about 3 s per GiB", flush=True
        )
        meta = build_volume(cache_dir, size, res)
    return meta


# --------------------------------------------------------------------------- the bench


class Bench:
    """Owns the run's devices, mounts, tmux server and repositories; close() undoes all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.res = volume.Resources()
        self.workdir = args.dir / f"latency-run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.tmux: Tmux | None = None
        self.results = Results()
        self.meta: dict = {}
        self.dev = ""
        self.small_dev = ""
        self.elapsed = 0.0
        self.cli_child: subprocess.Popen | None = None
        self.agent: subprocess.Popen | None = None
        self.agent_socket = ""
        self.focused_border: tuple[str, ...] = ()
        self.token = "zzvol" + "".join(SAFE_LETTERS[int(d)] for d in str(os.getpid()))
        """The filter text: unique to the run, typed safely (see SAFE_LETTERS)."""

    # ---- set-up and tear-down

    def setup(self) -> None:
        self.meta = ensure_volume(
            self.args.dir, self.args.size_gib * GIB, self.args.rebuild, self.res
        )
        self.workdir.mkdir(parents=True)
        need = self.meta["used_bytes"] * 1.1 + GIB
        free = shutil.disk_usage(self.workdir).free
        if free < need:
            raise SystemExit(
                f"{self.workdir}: {free / GIB:.1f} GiB free; one backup's repository needs "
                f"{need / GIB:.1f} GiB"
            )
        self.dev = self.res.attach(self.args.dir / IMAGE_NAME, read_only=False)
        self.res.mount(self.dev, self.workdir / f"{self.token}-big", "rw,nodiscard")
        small = self.workdir / "small.img"
        with open(small, "wb") as f:
            f.truncate(64 * MIB)
        volume.run("mkfs.ext4", "-q", "-F", "-L", "bvsmall", str(small))
        self.small_dev = self.res.attach(small, read_only=False)
        self.res.mount(self.small_dev, self.workdir / f"{self.token}-small", "rw")

    def close(self) -> None:
        if self.cli_child is not None and self.cli_child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.cli_child.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.cli_child.wait(30)
        if self.tmux is not None:
            self.quit_console()
            self.tmux.close()
            self.tmux = None
        self.stop_agent()
        self.res.close()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def quit_console(self) -> None:
        """Quit the console with q (y when it asks: a job still runs); never raise."""
        t = self.tmux
        if t is None or t.client is None:
            return
        try:
            if t.info("#{pane_dead}") == "1":
                return
            t.keys("q")
            screen = t.wait_for(
                "the console quitting or asking",
                lambda s: "Quit and cancel" in s or t.info("#{pane_dead}") == "1",
                10,
            )
            if "Quit and cancel" in screen:
                t.keys("y")
            t.wait_exit(60)
        except (ConsoleStuck, RuntimeError, OSError) as e:
            print(f"  the console did not quit cleanly ({e}); killing its tmux server")

    # ---- the runs

    def run(self) -> None:
        t0 = time.monotonic()
        self.setup()
        print(
            f"volume: {self.dev}, {self.meta['size'] / GIB:.0f} GiB ext4, "
            f"{self.meta['used_bytes'] / GIB:.1f} GiB of random files; second volume "
            f"{self.small_dev}; poll: {self.args.poll}; gap {self.args.gap_ms} ms",
            flush=True,
        )
        for n in range(1, self.args.runs + 1):
            order = ["cli", "keys"] + ([] if self.args.no_quiet else ["quiet"])
            if n % 2 == 0:
                order.reverse()  # host noise and cache history hit each kind alike
            print(f"run {n}/{self.args.runs}: {', '.join(order)}", flush=True)
            for how in order:
                if how == "cli":
                    self.cli_backup(n)
                else:
                    self.console_run(n, keys=how == "keys")
        self.elapsed = time.monotonic() - t0

    def repo_dir(self, how: str, n: int) -> Path:
        return self.workdir / f"repo-{how}-{n}"

    def cli_backup(self, n: int) -> None:
        repo = self.repo_dir("cli", n)
        exe = str(Path(sys.executable).parent / "blockvault")
        argv = [exe, "backup", "image", self.dev, "--repo", str(repo), "--json"]
        drop_caches()
        t0 = time.perf_counter()
        self.cli_child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=PROJECT_DIR,
            start_new_session=True,
        )
        out, err = self.cli_child.communicate(timeout=BACKUP_TIMEOUT)
        wall = time.perf_counter() - t0
        rc = self.cli_child.returncode
        self.cli_child = None
        if rc not in (0, 4, 8):
            raise RuntimeError(f"{shlex.join(argv)}: exit {rc}: {err.strip()[-500:]}")
        doc = json.loads(out)
        run = BackupRun(n, "cli", doc["duration"], doc["bytes_read"], doc["bytes_volume"], wall)
        self.results.backups.append(run)
        print(f"  CLI backup: {run.duration:.1f} s, {run.bytes_read / run.duration / 1e6:.0f} MB/s")
        self.remove_repo(repo)

    def remove_repo(self, repo: Path) -> None:
        if self.args.keep:
            return
        shutil.rmtree(repo, ignore_errors=True)

    def console_run(self, n: int, *, keys: bool) -> None:
        """Open the console, time idle keys, back up from it and time keys meanwhile.

        Without ``keys`` only the backup is taken, nothing is pressed while it runs: the
        console's own cost to the backup, apart from the user's.
        """
        how = "console" if keys else "quiet"
        repo = self.repo_dir(how, n)
        self.tmux = t = Tmux(self.workdir, f"bv-latency-{os.getpid()}-{how}-{n}")
        cli = [sys.executable, "-m", "tui.cli", "--repo", str(repo)]
        env = dict(SSH_ENV)
        if self.args.jobs == "agent":
            # An agent of the bench's own, on the run's socket: the console finds it
            # serving this repository and hands it the job.
            env[AGENT_SOCKET_ENV] = self.start_agent(repo)
        else:
            # The backup runs in the console's own process: what a running backup costs
            # the UI in the same interpreter. (As root, a console without --no-agent
            # starts the machine's agent, which would outlive the bench.)
            cli.append("--no-agent")
        t.start(cli, env, PROJECT_DIR)
        t.wait_for("the console", lambda s: "devices" in s and "Help" in s)
        self.focused_border = t.devices_border()  # the tree has the focus at start
        # Only the run's two volumes: their mount points' names share the run's token.
        self.filter_tree()
        first, second = self.tree_order(t.screen())
        self.cursor_to_first(first, second)
        cycle = self.key_cycle(first, second)

        if keys:  # idle: the same cycle with no job
            rt0 = len(t.capture_times)
            busy0, steal0 = cpu_counters()
            p0 = time.perf_counter()
            for _ in range(self.args.idle_cycles):
                for key in cycle:
                    self.press(key, "idle")
            self.account("idle", rt0, busy0, steal0, p0)

        # The backup, from the console: cursor on the big volume, b, Enter.
        if first != self.dev:
            t.keys("j")
            t.wait_for("the cursor on the big volume", lambda s: shown_device(s) == self.dev)
        t.keys("b")
        t.wait_for("the backup dialog", lambda s: DIALOG.search(s) is not None)
        t.wait_for(
            "the dialog's findings",
            lambda s: "Queue backup" in s and "checking the volume" not in s,
        )
        title = DIALOG.search(t.screen())
        if title is None or title.group(1) != self.dev:
            raise ConsoleStuck(f"the backup dialog is for {title and title.group(1)}")
        drop_caches()
        t.keys("Enter")
        enter = time.perf_counter()
        t.wait_for("the job running", lambda s: job_state(s) in ("running", "done", "failed"))
        if keys:
            # The queued job took the focus to the job table: the filter again puts it
            # back on the tree.
            self.filter_tree()
            self.cursor_to_first(first, second)
            rt0 = len(t.capture_times)
            busy0, steal0 = cpu_counters()
            p0 = time.perf_counter()
            state = "running"
            while state == "running":
                if time.perf_counter() - enter > BACKUP_TIMEOUT:
                    raise ConsoleStuck(f"the backup still runs after {BACKUP_TIMEOUT:.0f} s")
                for key in cycle:
                    state = self.press(key, "backup")
                    if state != "running":
                        break
            self.account("backup", rt0, busy0, steal0, p0)
        screen = t.wait_for(
            "the job's end",
            lambda s: job_state(s) in ("done", "failed", "cancelled"),
            BACKUP_TIMEOUT,
            every=0.5,  # a glance twice a second: no load worth the name on the console
        )
        wall = time.perf_counter() - enter
        if job_state(screen) != "done":
            raise RuntimeError(f"the console's backup ended {job_state(screen)}:\n{screen}")
        images = Repository.open(str(repo), create=False).images()
        if len(images) != 1:
            raise RuntimeError(f"{repo} holds {len(images)} images after one backup")
        stats = images[0].stats
        run = BackupRun(n, how, stats["duration"], stats["bytes_read"], stats["bytes_volume"], wall)
        self.results.backups.append(run)
        idle, during = (sum(1 for p in self.results.presses if p.phase == ph) for ph in PHASES)
        print(
            f"  console backup{', keys pressed' if keys else ', no keys'}: {run.duration:.1f} s, "
            f"{run.bytes_read / run.duration / 1e6:.0f} MB/s; presses so far: {idle} idle, "
            f"{during} during"
        )
        self.quit_console()
        t.close()
        self.tmux = None
        if self.agent is not None:
            self.check_agent_ran_it()
            self.stop_agent()
        self.remove_repo(repo)

    def start_agent(self, repo: Path) -> str:
        """Start ``blockvault agent`` on ``repo`` at a socket of the run; return the socket."""
        # A socket and a job database per console: a job of an earlier run in the list
        # would be "job 1" on the screen.
        name = repo.name.replace("repo-", "agent-")
        sock = self.workdir / f"{name}.sock"
        argv = [sys.executable, "-m", "tui.cli", "agent", "--socket", str(sock)]
        argv += ["--repo", str(repo), "--db", str(self.workdir / f"{name}.db")]
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.agent = subprocess.Popen(
                argv,
                cwd=PROJECT_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        from core.agent.client import agent_running

        deadline = time.perf_counter() + WAIT
        while not agent_running(str(sock)):
            if self.agent.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"the agent did not start; see {self.workdir}/{name}.log")
            time.sleep(0.05)  # a process that gives no other sign of being ready
        self.agent_socket = str(sock)
        return str(sock)

    def check_agent_ran_it(self) -> None:
        """Fail unless the job ran in the bench's agent (not in the console, as a fallback)."""
        from core.agent.client import AgentClient

        client = AgentClient(self.agent_socket)
        try:
            jobs = client.health().get("jobs")
        finally:
            client.close()
        if not jobs:
            raise RuntimeError("the console ran the backup itself, not in the agent")

    def stop_agent(self) -> None:
        """Stop the agent this bench started (SIGTERM, then SIGKILL)."""
        p, self.agent = self.agent, None
        if p is None or p.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                p.wait(30)
                return
            except subprocess.TimeoutExpired:
                continue

    def filter_tree(self) -> None:
        """Filter the tree to the run's two volumes and leave the focus on the tree."""
        t = self.tmux
        assert t is not None
        needle = self.token  # both mount points' names start with it
        t.keys("/")  # shows the box, empty, and focuses it
        # Focus moves a moment after a key asks for it; a key sent before then lands in the
        # old place. The box draws its cursor only once it has the focus.
        deadline = time.perf_counter() + WAIT
        while not t.filter_cursor():
            if time.perf_counter() > deadline:
                raise ConsoleStuck(f"the filter box did not take the focus:\n{t.screen()}")
            t.wait_output(0.05)
        t.keys(needle, literal=True)
        t.wait_for("the filter text", lambda s: filter_text(s) == needle)
        t.keys("Enter")
        big, small = Path(self.dev).name, Path(self.small_dev).name
        t.wait_for("the run's two volumes", lambda s: f"│{big} " in s and f"│{small} " in s)
        self.wait_tree_focus()

    def wait_tree_focus(self) -> None:
        """Return once the device tree has the focus (its border has the focused colours)."""
        t = self.tmux
        assert t is not None
        deadline = time.perf_counter() + WAIT
        while t.devices_border() != self.focused_border:
            if time.perf_counter() > deadline:
                raise ConsoleStuck(f"the device tree did not take the focus:\n{t.screen()}")
            t.wait_output(0.05)

    def tree_order(self, screen: str) -> tuple[str, str]:
        """Return the run's two devices in the order the filtered tree lists them."""
        rows = [ln for ln in screen.splitlines() if ln.startswith("│loop")]
        names = [ln[1:].split()[0] for ln in rows]
        big, small = Path(self.dev).name, Path(self.small_dev).name
        if big not in names or small not in names:
            raise ConsoleStuck(f"the tree does not list {big} and {small}:\n{screen}")
        if names.index(big) < names.index(small):
            return self.dev, self.small_dev
        return self.small_dev, self.dev

    def cursor_to_first(self, first: str, second: str) -> None:
        """Put the tree's cursor on ``first`` with the details showing it.

        After a filter the details can still show a device the filter hid (the cursor
        stayed on line 0, so the tree posted no highlight): j then k make them agree. A
        tree rebuild (a rescan, a job starting) can swallow one of them: then again.
        """
        t = self.tmux
        assert t is not None
        for _ in range(5):
            t.keys("j")
            with contextlib.suppress(ConsoleStuck):
                t.wait_for("the second volume", lambda s: shown_device(s) == second, KEY_TIMEOUT)
            t.keys("k")
            with contextlib.suppress(ConsoleStuck):
                t.wait_for("the first volume", lambda s: shown_device(s) == first, KEY_TIMEOUT)
            if shown_device(t.screen()) == first and t.tree_cursor() == Path(first).name:
                return
        raise ConsoleStuck(f"cannot put the tree's cursor on {first}:\n{t.screen()}")

    def key_cycle(self, first: str, second: str) -> list[Key]:
        """Return one cycle of keys: what each needs on screen before, and shows after."""

        def details(s: str) -> bool:
            return shown_device(s) is not None

        return [
            Key("2", "tab", pre=details, post=job_tab),
            Key("1", "tab", pre=job_tab, post=details),
            Key(
                "j",
                "cursor",
                pre=lambda s: shown_device(s) == first,
                post=lambda s: shown_device(s) == second,
            ),
            Key(
                "k",
                "cursor",
                pre=lambda s: shown_device(s) == second,
                post=lambda s: shown_device(s) == first,
            ),
        ]

    def resync(self, key: Key, screen: str) -> None:
        """Bring the screen to what ``key`` needs before it (unmeasured keys).

        Something other than the bench can change the screen between two keys: a tree
        rebuild (a rescan, a job starting or ending) puts the cursor on the first line.
        """
        t = self.tmux
        assert t is not None
        for _ in range(4):
            if key.pre(screen):
                return
            was = shown_device(screen)
            if key.key == "2":  # needs the details
                fix, done = "1", lambda s: shown_device(s) is not None
            elif key.key == "1":  # needs the job
                fix, done = "2", job_tab
            elif was is None:  # j and k need the details, to see the cursor's device
                fix, done = "1", lambda s: shown_device(s) is not None
            else:  # the cursor is on the other volume
                fix = "k" if key.key == "j" else "j"
                done = lambda s, was=was: shown_device(s) not in (None, was)  # noqa: E731
            t.keys(fix)
            with contextlib.suppress(ConsoleStuck):
                t.wait_for(f"{fix!r} to take", done, KEY_TIMEOUT)
            screen = t.screen()
        if not key.pre(screen):
            raise ConsoleStuck(f"cannot get the screen ready for {key.key!r}:\n{screen}")

    def press(self, key: Key, phase: str) -> str | None:
        """Time one key; return job 1's state on the last screen seen."""
        t = self.tmux
        assert t is not None
        screen = t.screen()
        if not key.pre(screen):
            self.results.resyncs[phase] += 1
            self.resync(key, screen)
        busy = self.args.poll == "busy"
        captures = 0
        lost = False
        t0 = time.perf_counter()
        t.keys(key.key)
        while True:
            screen = t.screen()
            now = time.perf_counter()
            captures += 1
            if key.post(screen):
                break
            if now - t0 > KEY_TIMEOUT:
                lost = True
                print(
                    f"    {phase}: {key.key!r} showed nothing in {KEY_TIMEOUT:.0f} s "
                    f"(job {job_state(screen)}); counted as {KEY_TIMEOUT:.0f} s",
                    flush=True,
                )
                break
            if not busy:
                t.wait_output(0.005)
        self.results.presses.append(Press(key.key, key.kind, phase, now - t0, captures, lost))
        time.sleep(self.args.gap_ms / 1000)
        return job_state(screen)

    def account(self, phase: str, rt0: int, busy0: float, steal0: float, p0: float) -> None:
        assert self.tmux is not None
        busy1, steal1 = cpu_counters()
        self.results.capture_rt[phase] += self.tmux.capture_times[rt0:]
        self.results.busy_cpu[phase] += busy1 - busy0
        self.results.steal[phase] += steal1 - steal0
        self.results.seconds[phase] += time.perf_counter() - p0


# --------------------------------------------------------------------------- the report


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def latency_table(res: Results) -> tuple[str, list[str]]:
    """Return the latency table and the verdicts."""
    lines = [
        "| phase | keys | presses | median ms | p95 ms | max ms | median ÷ idle | p95 ÷ idle |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups = (("tab", "`1`/`2` switch the right pane"), ("cursor", "`j`/`k` move the tree cursor"))
    base: dict[str, tuple[float, float]] = {}
    for phase in ("idle", "backup"):
        for kind, label in (*groups, ("all", "all four")):
            vals = [
                p.latency
                for p in res.presses
                if p.phase == phase and (kind == "all" or p.kind == kind)
            ]
            if not vals:
                continue
            med, p95 = statistics.median(vals), percentile(vals, 95)
            if phase == "idle":
                base[kind] = (med, p95)
                ratio = "1 (itself)", "1 (itself)"
            else:
                b = base.get(kind)
                ratio = (f"{med / b[0]:.2f}", f"{p95 / b[1]:.2f}") if b else ("–", "–")
            name = "idle" if phase == "idle" else "during backup"
            lines.append(
                f"| {name} | {label} | {len(vals)} | {ms(med)} | {ms(p95)} | "
                f"{ms(max(vals))} | {ratio[0]} | {ratio[1]} |"
            )
    verdicts = []
    during = [p.latency for p in res.presses if p.phase == "backup"]
    if during:
        p95 = percentile(during, 95) * 1000
        v = "PASS" if p95 < TARGET_P95_MS else "FAIL"
        verdicts.append(v)
        lines.append("")
        lines.append(
            f"Target: p95 during the backup < {TARGET_P95_MS:.0f} ms, all keys: {p95:.1f} ms: {v}"
        )
    for phase in ("idle", "backup"):
        n = sum(1 for p in res.presses if p.phase == phase)
        if n < MIN_PRESSES:
            verdicts.append("FAIL")
            lines.append(
                f"Too few presses {phase}: {n} < {MIN_PRESSES} (a bigger --size-gib or more --runs)"
            )
    return "\n".join(lines), verdicts


def overhead_lines(res: Results) -> str:
    out = []
    for phase in ("idle", "backup"):
        rts = res.capture_rt[phase]
        presses = [p for p in res.presses if p.phase == phase]
        if not rts or not presses:
            continue
        secs = res.seconds[phase] or 1.0
        lost = sum(1 for p in presses if p.lost)
        out.append(
            f"- {'idle' if phase == 'idle' else 'during backup'}: {lost} of {len(presses)} "
            f"keys showed nothing within {KEY_TIMEOUT:.0f} s (counted at {KEY_TIMEOUT:.0f} s); "
            f"{res.resyncs[phase]} times the screen had changed under the bench before a key "
            "(a tree rebuild) and was put back unmeasured; one capture-pane round trip "
            f"median {ms(statistics.median(rts))} ms, p95 {ms(percentile(rts, 95))} ms; "
            f"{statistics.mean(p.captures for p in presses):.1f} captures per press; "
            f"machine busy {res.busy_cpu[phase] / secs:.2f} CPUs, steal "
            f"{res.steal[phase] / secs:.2f} CPUs over {secs:.0f} s"
        )
    return "\n".join(out)


def throughput_table(res: Results) -> str:
    """Return one row per run: each backup's duration and MB/s, and the console's ratios."""
    kinds = [k for k in ("console", "quiet") if any(b.how == k for b in res.backups)]
    head = ["run", "CLI s", "CLI MB/s"]
    for k in kinds:
        label = "console" if k == "console" else "console, no keys"
        head += [f"{label} s", f"{label} MB/s", f"{label} ÷ CLI"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    ratios: dict[str, list[float]] = {k: [] for k in kinds}
    for n in sorted({b.run for b in res.backups}):
        row = {b.how: b for b in res.backups if b.run == n}
        if "cli" not in row:
            continue
        cli = row["cli"].rate
        cells = [str(n), f"{row['cli'].duration:.2f}", f"{cli / 1e6:.0f}"]
        for k in kinds:
            b = row.get(k)
            if b is None:
                cells += ["–", "–", "–"]
                continue
            ratios[k].append(b.rate / cli)
            cells += [f"{b.duration:.2f}", f"{b.rate / 1e6:.0f}", f"{b.rate / cli:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for k in kinds:
        label = "keys pressed meanwhile" if k == "console" else "no keys pressed"
        if ratios[k]:
            lines.append(
                f"- Console backup ({label}) ÷ CLI throughput, median of the runs: "
                f"{statistics.median(ratios[k]):.3f}"
            )
    return "\n".join(lines)


def report(bench: Bench, command: str) -> str:
    res, meta, args = bench.results, bench.meta, bench.args
    lat, _ = latency_table(res)
    polling = (
        "on every output notification, at least every 5 ms"
        if args.poll == "output"
        else "back to back"
    )
    thr = throughput_table(res)
    return "\n".join(
        [
            f"Date: {time.strftime('%Y-%m-%d')}",
            "",
            f"Machine: {machine_line()}; tmux {volume.run('tmux', '-V').strip()}",
            "",
            f"Command: `{command}` ({args.runs} run(s); {bench.elapsed:.0f} s in all)",
            "",
            f"Volume: ext4, {meta.get('size', 0) / GIB:.0f} GiB, "
            f"{meta.get('used_bytes', 0) / GIB:.1f} GiB used by {meta.get('files')} files of "
            f"{FILE_SIZE // MIB} MiB of {meta.get('random_source', '?')} (incompressible); "
            "loop device with direct I/O, mounted; the backup is `auto` (static: remounted "
            "read-only while copied), cold cache.",
            "",
            f"Console: tmux pane {WIDTH}×{HEIGHT}, TERM=xterm, SSH_CONNECTION set; keys "
            f"through one control-mode client, screen polled with capture-pane ({polling}); "
            f"{args.gap_ms} ms pause after each detected change; idle = the same console "
            "before its backup, with no job.",
            "",
            "Jobs: "
            + (
                "in the console's own process (`--no-agent`): the backup shares the "
                "interpreter with the UI."
                if args.jobs == "console"
                else "in a `blockvault agent` the bench started on a socket of its own "
                "(`BLOCKVAULT_AGENT_SOCKET`): the console only follows the job."
            ),
            "",
            lat,
            "",
            "Polling overhead and machine load:",
            "",
            overhead_lines(res),
            "",
            "Backup throughput: CLI (`blockvault backup image DEV --json`), console (`b`, Enter; "
            "the keys above pressed meanwhile) and console with no keys pressed, each into a "
            "fresh repository, cold cache; s = the engine's own duration (the image's stats), "
            "MB/s = bytes read ÷ that:",
            "",
            thr,
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="runs; CLI and console alternate (2)")
    ap.add_argument(
        "--size-gib", type=int, default=16, help="the volume's size: its backup takes ≥ 15 s (16)"
    )
    ap.add_argument(
        "--idle-cycles", type=int, default=30, help="idle cycles of 4 keys per run (30)"
    )
    ap.add_argument("--gap-ms", type=int, default=100, help="pause after each change seen (100)")
    ap.add_argument(
        "--poll",
        choices=["output", "busy"],
        default="output",
        help="capture on each output notification (default) or back to back",
    )
    ap.add_argument(
        "--jobs",
        choices=["console", "agent"],
        default="console",
        help="run the console's backups in its own process (--no-agent, default) or in an "
        "agent the bench starts on a socket of its own",
    )
    ap.add_argument(
        "--no-quiet",
        action="store_true",
        help="skip the console backup with no keys pressed (the console's own cost)",
    )
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached volume")
    ap.add_argument("--keep", action="store_true", help="keep the run directory and repos")
    ap.add_argument("--write-results", action="store_true", help="write the section")
    ap.add_argument("--results-file", type=Path, default=BENCH_DIR / "RESULTS.md")
    ap.add_argument("--dir", type=Path, default=volume.CACHE_DIR, help="cache directory")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.size_gib < 1 or args.idle_cycles < 1 or args.gap_ms < 0:
        ap.error("--runs, --size-gib and --idle-cycles must be positive, --gap-ms not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (loop devices, mount, drop_caches)", file=sys.stderr)
        return 2
    if shutil.which("tmux") is None:
        print("needs tmux (apt-get install tmux)", file=sys.stderr)
        return 2
    command = shlex.join(
        [".venv/bin/python", "bench/console_latency.py", *(sys.argv[1:] if argv is None else argv)]
    )
    volume.install_signal_handlers()
    bench = Bench(args)
    with volume.lock(args.dir):
        try:
            bench.run()
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
        except SystemExit as e:
            print(f"\nstopped by a signal (exit {e.code}): cleaning up", file=sys.stderr)
            raise
        finally:
            bench.close()
    body = report(bench, command)
    print("\n" + body)
    _, lat_verdicts = latency_table(bench.results)
    if args.write_results:
        volume.write_section(args.results_file, SECTION[args.jobs], body)
        print(f"results written to {args.results_file}")
    return 0 if all(v == "PASS" for v in lat_verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
