"""Backup throughput through the agent against the same backup in one process, in one run.

    .venv/bin/python bench/agent_throughput.py [--runs N] [--keep] [--rebuild]
                                               [--write-results [--results-file PATH]]

The volume is bench/volume.py's (2 GiB ext4, cached in /var/tmp/blockvault-bench/),
attached read-only with direct I/O. Each round times three full static backups of it,
in an order that alternates between rounds (so drift hits every variant alike):

- **in-process**: ``blockvault backup image DEV --imagetype static --json --no-agent``
  (the engine in the CLI's own process: no queue, no agent);
- **JobQueue**: a Python child that submits the same backup to an in-process
  ``core.jobs.JobQueue`` and reads every changed view, as the console does without
  an agent (the queue's progress hook, sampler and notifications, no HTTP);
- **agent**: the same ``blockvault backup image`` command (``--wait``, the default)
  with an agent running on the repository: the CLI submits and follows the job's
  event stream, and this bench follows the stream too, reading every changed view,
  as a console left open would.

Every run starts cold (``sync; echo 3 > /proc/sys/vm/drop_caches``) and writes into
the same repository path, emptied first: the agent serves one repository for its
whole life, and an empty one makes every run store everything (the heaviest case
for any per-chunk overhead). Wall time is the command's, start to exit; "engine s"
is the report's own ``duration``; CPU is the command's (``RUSAGE_CHILDREN``) plus,
for the agent variant, the agent's (``/proc/PID/stat``). Target: agent wall ÷
in-process wall ≤ 1.05 (medians). Not part of the test suite. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(PROJECT_DIR))
import volume  # noqa: E402  bench/volume.py: the cached volume, loop devices, the lock

from core.agent.client import AgentClient, start_agent  # noqa: E402

SECTION = "## Agent throughput"
TARGET = 1.05
"""Agent wall ÷ in-process wall, medians: the agent may cost at most 5 %."""
BV_OK = (0, 4, 8)
"""blockvault's exit codes of a finished backup (TSM: 4 skipped some, 8 warnings)."""
DEVICE_MB = volume.VOLUME_SIZE / 1e6
VARIANTS = ("in-process", "JobQueue", "agent")
LABELS = {
    "in-process": "in-process (`--no-agent`)",
    "JobQueue": "in-process `JobQueue` + a reader of every view",
    "agent": "agent (CLI `--wait` + a second client following the events)",
}
QUEUE_SCRIPT = """
import json, sys
from core.jobs import BackupSpec, JobQueue
dev, repo = sys.argv[1], sys.argv[2]
queue = JobQueue(repo)
events = []
queue.subscribe(lambda job_id: events.append(queue.view(job_id)))
job = queue.submit(BackupSpec(dev, imagetype="static"))
view = queue.wait(job)
queue.close()
print(json.dumps({"state": view.state.value, "error": view.error, "report": view.report,
                  "events": len(events), "started": view.started, "ended": view.ended}))
"""
"""The JobQueue variant: the queue in a process of its own, started like the CLI."""


@dataclass
class Run:
    """One timed backup."""

    wall: float
    engine: float
    cpu: float
    events: int | None
    """Changes of the job a follower was told of (None: nobody followed)."""
    report: dict
    to_start: float | None = None
    """Seconds from the command's start to the job's (None: no queue, no timestamps)."""
    after_end: float | None = None
    """Seconds from the job's end to the command's exit."""


@dataclass
class Variant:
    """One way of running the backup, over all rounds."""

    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


class BenchFailed(RuntimeError):
    """A backup did not finish, or finished differently from the others."""


def drop_caches() -> None:
    """Flush dirty pages and drop the page cache, dentries and inodes (a cold start)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def process_cpu(pid: int) -> float:
    """Return user + system CPU seconds process ``pid`` (all its threads) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Follower:
    """A second client of the agent: follows its event stream and reads every changed view."""

    def __init__(self, socket_path: str) -> None:
        self.client = AgentClient(socket_path)
        self._lock = threading.Lock()
        self.events: dict[str, int] = {}
        self.client.subscribe(self._changed)

    def _changed(self, job_id: str) -> None:
        self.client.view(job_id)  # what a console's table and graph read on each change
        with self._lock:
            self.events[job_id] = self.events.get(job_id, 0) + 1

    def seen(self, job_id: str) -> int:
        with self._lock:
            return self.events.get(job_id, 0)

    def close(self) -> None:
        self.client.close()


class Bench:
    """Owns the loop device, the agent, its follower and the work directory; close() undoes all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.res = volume.Resources()
        self.workdir = args.dir / f"agent-run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.repo = self.workdir / "repo"
        self.socket = self.workdir / "agent" / "agent.sock"
        self.agent: subprocess.Popen[bytes] | None = None
        self.follower: Follower | None = None
        self.child: subprocess.Popen[str] | None = None
        self.variants = {name: Variant(name) for name in VARIANTS}
        self.dev = ""
        self.launched = self.exited = 0.0
        self.meta: dict = {}
        self.elapsed = 0.0

    # ---- setup

    def setup(self) -> None:
        if os.geteuid() != 0:
            raise SystemExit("bench/agent_throughput.py needs root (loop devices, drop_caches)")
        for dev, back in volume.stale_loops(self.args.dir):
            print(f"detaching a loop device left by an earlier bench run: {dev} ({back})")
            subprocess.run(["umount", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        image, _raw, self.meta = volume.ensure(
            self.args.dir, rebuild=self.args.rebuild, res=self.res
        )
        print(volume.describe(self.meta))
        self.workdir.mkdir(parents=True)
        self.dev = self.res.attach(image, read_only=True)
        print(f"source: {self.dev} (read-only, direct-io={volume.dio_state(self.dev)}) ← {image}")
        # check-volume blocks a file system that is neither mounted nor in fstab: give the
        # bench volume a mount point in an fstab of the run's own (never mounted).
        mount_point = self.workdir / "volume-mount-point"
        mount_point.mkdir()
        (self.workdir / "fstab").write_text(f"{self.dev} {mount_point} ext4 ro,noauto 0 0\n")
        # Inherited by every child, the agent too: nothing here uses the machine's agent.
        os.environ["BLOCKVAULT_FSTAB"] = str(self.workdir / "fstab")
        os.environ["BLOCKVAULT_AGENT_SOCKET"] = str(self.socket)
        os.environ["BLOCKVAULT_AGENT_DB"] = str(self.socket.parent / "jobs.db")
        os.environ.pop("BLOCKVAULT_REPO", None)
        self.agent = start_agent(
            str(self.socket),
            repo_location=str(self.repo),
            db_path=str(self.socket.parent / "jobs.db"),
            timeout=30,
        )
        if self.agent is None:
            raise SystemExit(f"an agent already answers on {self.socket}; not ours to use")
        print(f"agent: pid {self.agent.pid} on {self.socket}, repository {self.repo}")
        self.follower = Follower(str(self.socket))

    # ---- the variants

    def command(self, argv: list[str]) -> tuple[float, float, str, str]:
        """Run ``argv`` cold from the project directory; return wall, CPU, stdout and stderr.

        ``self.launched`` and ``self.exited`` keep the wall-clock times (``time.time()``,
        as the queue stamps a job's start and end) around the command.
        """
        drop_caches()
        cpu0 = children_cpu()
        self.launched = time.time()
        t0 = time.perf_counter()
        self.child = subprocess.Popen(
            argv,
            cwd=PROJECT_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the bench, which stops it in order
        )
        try:
            out, err = self.child.communicate()
        finally:
            self.kill_child()
        wall = time.perf_counter() - t0
        self.exited = time.time()
        rc = self.child.returncode
        self.child = None
        if rc not in BV_OK:
            raise BenchFailed(f"{shlex.join(argv)}: exit {rc}: {err.strip()[-400:]}")
        return wall, children_cpu() - cpu0, out, err

    def cli_backup(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tui.cli",
            "backup",
            "image",
            self.dev,
            "--imagetype",
            "static",
            "--json",
            "--repo",
            str(self.repo),
            *extra,
        ]

    def run_in_process(self) -> Run:
        wall, cpu, out, err = self.command(self.cli_backup("--no-agent"))
        if "queued in the agent" in err:
            raise BenchFailed(f"--no-agent ran the backup in the agent: {err.strip()}")
        report = json.loads(out)
        return Run(wall, report["duration"], cpu, None, report)

    def run_queue(self) -> Run:
        argv = [sys.executable, "-c", QUEUE_SCRIPT, self.dev, str(self.repo)]
        wall, cpu, out, _err = self.command(argv)
        doc = json.loads(out)
        if doc["state"] != "done":
            raise BenchFailed(f"the JobQueue job ended {doc['state']}: {doc['error']}")
        return Run(
            wall,
            doc["report"]["duration"],
            cpu,
            doc["events"],
            doc["report"],
            to_start=doc["started"] - self.launched,
            after_end=self.exited - doc["ended"],
        )

    def run_agent(self) -> Run:
        assert self.agent is not None and self.follower is not None
        agent_cpu = process_cpu(self.agent.pid)
        wall, cpu, out, err = self.command(self.cli_backup())
        cpu += process_cpu(self.agent.pid) - agent_cpu
        queued = re.search(r"job (\d+) queued in the agent", err)
        if queued is None:  # the CLI found no agent on this repository and ran it itself
            raise BenchFailed(f"the CLI did not use the agent: {err.strip()[-400:]}")
        job_id = queued.group(1)
        # The bench's client may be a moment behind the CLI's: wait for it to see the end.
        view = self.follower.client.wait(job_id, timeout=30)
        if not view.state.finished:
            raise BenchFailed(f"the bench's client never saw job {job_id} end")
        report = json.loads(out)
        if view.report != report:
            raise BenchFailed(f"job {job_id}'s report in the agent differs from the CLI's")
        assert view.started is not None and view.ended is not None
        return Run(
            wall,
            report["duration"],
            cpu,
            self.follower.seen(job_id),
            report,
            to_start=view.started - self.launched,
            after_end=self.exited - view.ended,
        )

    def empty_repo(self) -> None:
        """Remove the repository (untimed): the next backup stores every chunk anew."""
        shutil.rmtree(self.repo, ignore_errors=True)

    # ---- the whole run

    def run(self) -> None:
        t0 = time.monotonic()
        self.setup()
        do = {
            "in-process": self.run_in_process,
            "JobQueue": self.run_queue,
            "agent": self.run_agent,
        }
        for rnd in range(1, self.args.runs + 1):
            order = VARIANTS if rnd % 2 else tuple(reversed(VARIANTS))
            print(f"round {rnd}/{self.args.runs}: {', '.join(order)}", flush=True)
            for name in order:
                self.empty_repo()
                r = do[name]()
                self.variants[name].runs.append(r)
                events = "" if r.events is None else f", {r.events} events followed"
                print(
                    f"  {name}: {r.wall:.2f} s wall, engine {r.engine:.2f} s, "
                    f"{r.cpu:.2f} s CPU, stored {r.report['bytes_stored_new'] / 1e6:.0f} MB"
                    f"{events}",
                    flush=True,
                )
        self.check_same_work()
        self.elapsed = time.monotonic() - t0

    def check_same_work(self) -> None:
        """Every run must have read and stored the same: otherwise the times compare nothing."""
        keys = ("bytes_read", "bytes_new", "bytes_stored_new", "chunks_new", "chunks_dedup")
        figures = {tuple(r.report[k] for k in keys) for v in self.variants.values() for r in v.runs}
        if len(figures) != 1:
            raise BenchFailed(f"the runs did different work ({', '.join(keys)}): {figures}")

    def stop_agent(self) -> None:
        """SIGTERM the agent (it cancels what runs and undoes it) and wait; SIGKILL if it hangs."""
        p = self.agent
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            print(f"warning: agent {p.pid} ignored SIGTERM for 30 s; killing it", file=sys.stderr)
            p.kill()
            p.wait(10)

    def kill_child(self) -> None:
        p = self.child
        if p is None or p.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                p.wait(10)
                return
            except subprocess.TimeoutExpired:
                continue

    def close(self) -> None:
        """Undo everything, whatever happened: the child, the agent, the loop device, files."""
        old = {
            s: signal.signal(s, signal.SIG_IGN)
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            self.kill_child()
            if self.follower is not None:
                self.follower.close()
            self.stop_agent()
            self.res.close()
            if self.workdir.exists():
                if self.args.keep:
                    print(f"kept: {self.workdir}")
                else:
                    shutil.rmtree(self.workdir, ignore_errors=True)
            leaks = volume.stale_loops(self.args.dir)
            if leaks:
                print(f"WARNING: loop devices still attached: {leaks}", file=sys.stderr)
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# --------------------------------------------------------------------------- output


def table(bench: Bench) -> str:
    base = bench.variants["in-process"]
    lines = [
        "| variant | wall s | MB/s of device | engine s | wall − engine s | start → job s | "
        "job end → exit s | CPU s | events followed | wall ÷ in-process | engine ÷ in-process |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in VARIANTS:
        v = bench.variants[name]
        if not v.runs:
            continue
        wall, engine = v.median("wall"), v.median("engine")
        outside = statistics.median(r.wall - r.engine for r in v.runs)

        def maybe(attr: str, digits: int = 2, v: Variant = v) -> str:
            return "–" if getattr(v.runs[0], attr) is None else f"{v.median(attr):.{digits}f}"

        lines.append(
            f"| {LABELS[name]} | {wall:.2f} | {DEVICE_MB / wall:.0f} | {engine:.2f} | "
            f"{outside:.2f} | {maybe('to_start')} | {maybe('after_end')} | "
            f"{v.median('cpu'):.2f} | {maybe('events', 0)} | {wall / base.median('wall'):.3f} | "
            f"{engine / base.median('engine'):.3f} |"
        )
    return "\n".join(lines)


def verdict(bench: Bench) -> tuple[str, bool]:
    """Return the target line and whether it passed (on medians; paired ratios shown too)."""
    agent, base = bench.variants["agent"], bench.variants["in-process"]
    ratio = agent.median("wall") / base.median("wall")
    ok = ratio <= TARGET
    engine = agent.median("engine") / base.median("engine")
    paired = statistics.median(a.wall / b.wall for a, b in zip(agent.runs, base.runs, strict=True))
    # Wall − engine is steadier than either: the host's noise lands mostly in the engine.
    fixed = statistics.median(r.wall - r.engine for r in agent.runs) - statistics.median(
        r.wall - r.engine for r in base.runs
    )
    return (
        f"Target: agent wall ÷ in-process wall ≤ {TARGET:.2f} (medians): {ratio:.3f} — "
        f"{'PASS' if ok else 'FAIL'}. Same round paired, median of the ratios: {paired:.3f}; "
        f"the backup's own time (engine s): {engine:.3f}. Outside the backup the agent's "
        f"way costs {fixed * 1000:+.0f} ms per command (median wall − engine, agent minus "
        f"in-process): {100 * fixed / base.median('wall'):.1f} % of this backup's wall.",
        ok,
    )


def report(bench: Bench, command: str) -> str:
    runs = bench.args.runs
    per_run = []
    for name in VARIANTS:
        v = bench.variants[name]
        walls = ", ".join(f"{r.wall:.2f}" for r in v.runs)
        per_run.append(f"- {LABELS[name]}: wall {walls} s")
    first = bench.variants["in-process"].runs[0].report
    text, _ = verdict(bench)
    return "\n".join(
        [
            f"Date: {time.strftime('%Y-%m-%d')}",
            "",
            f"Machine: {machine_line()}",
            "",
            f"Command: `{command}` ({runs} round(s), medians; variants interleaved, order "
            f"alternating; cold cache before every run; {bench.elapsed:.0f} s in all)",
            "",
            f"Volume: {volume.describe(bench.meta).removeprefix('volume: ')}",
            "",
            "Each run: a full `--imagetype static` backup into the same repository path, "
            "emptied first (the agent serves one repository; empty, every run stores "
            f"everything: {first['bytes_read'] / 1e6:.0f} MB read, "
            f"{first['bytes_stored_new'] / 1e6:.0f} MB stored in {first['chunks_new']} new "
            "chunks).",
            "",
            table(bench),
            "",
            "Wall: the command, start to exit (the JobQueue variant is a Python child "
            "started like the CLI). Engine s: the report's `duration` (the backup itself). "
            "Start → job: from the command's start to the job's (its view's `started`); "
            "job end → exit: from the job's `ended` to the command's exit. CPU s: the "
            "command's, plus the agent process's for the agent variant. Events followed: "
            "changes of the job the bench's own client was told of, each followed by a "
            "view read (the CLI follows the same stream).",
            "",
            *per_run,
            "",
            text,
        ]
    )


def machine_line() -> str:
    """Return 'nproc N, RAM X GiB, kernel K, CPU model' for the results."""
    import platform

    mem = cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"nproc {os.cpu_count()}, RAM {mem}, kernel {platform.release()}, CPU {cpu}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds; the table shows medians (3)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached volume")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (agent log)")
    ap.add_argument("--write-results", action="store_true", help="write the section")
    ap.add_argument("--results-file", type=Path, default=BENCH_DIR / "RESULTS.md")
    ap.add_argument("--dir", type=Path, default=volume.CACHE_DIR, help="cache directory")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(
        [".venv/bin/python", "bench/agent_throughput.py", *(sys.argv[1:] if argv is None else argv)]
    )
    volume.install_signal_handlers()
    bench = Bench(args)
    with volume.lock(args.dir):
        try:
            bench.run()
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
        except BenchFailed as e:
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
        finally:
            bench.close()
    body = report(bench, command)
    print("\n" + body)
    if args.write_results:
        volume.write_section(args.results_file, SECTION, body)
        print(f"results written to {args.results_file}")
    return 0 if verdict(bench)[1] else 1


if __name__ == "__main__":
    sys.exit(main())
