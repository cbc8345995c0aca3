"""Time blockvault against its peers on the PERFORMANCE-NOTES volume, in one run.

    .venv/bin/python bench/run.py [--runs N] [--keep] [--only full,unchanged,restore]
                                  [--write-results [--results-file PATH]] [--rebuild]

Every timed command runs cold (``sync; echo 3 > /proc/sys/vm/drop_caches`` first)
under GNU ``/usr/bin/time``; the table shows medians over ``--runs`` rounds (the
tools are interleaved within a round, so host noise hits them all alike). The
ratios are peer wall ÷ blockvault wall for the same operation. Not part of the
test suite: nothing imports it and CI never runs it. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import volume  # bench/volume.py, beside this file

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
DEVICE_MB = volume.VOLUME_SIZE / 1e6
TIME = "/usr/bin/time"
OPS = ("full", "unchanged", "restore")
PEER_PACKAGES = {  # command → Debian package
    "partclone.ext4": "partclone",
    "restic": "restic",
    "borg": "borgbackup",
    "zstd": "zstd",
    TIME: "time",
}
BV_OK = (0, 4, 8)
"""blockvault's exit codes that still mean a finished run (TSM: 4 skipped some, 8 warnings)."""
BORG_COMPRESSION = "zstd,1"
"""borg's compression by default: zstd level 1, like blockvault's and the other rows' zstd -1
(the notes do not say which they used; borg's own default is lz4)."""


# --------------------------------------------------------------------------- measurements


@dataclass
class Run:
    """One timed command: wall (perf_counter), CPU (user+sys) and max RSS from GNU time."""

    wall: float
    cpu: float
    rss_kib: int
    stored: int | None = None
    """Bytes written (output file or repository); for unchanged re-runs, the growth."""
    other_cpu: float = 0.0
    """CPU seconds the machine spent outside the command meanwhile (other processes,
    kernel threads such as the loop workers): host noise, from /proc/stat."""
    steal: float = 0.0
    """CPU seconds the hypervisor withheld from this VM meanwhile (/proc/stat steal)."""


@dataclass
class Row:
    """One line of the table: a tool doing one operation, over all rounds."""

    key: str
    label: str
    op: str  # full | unchanged | restore
    runs: list[Run] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None
    reports: list[dict] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        vals = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.median(vals) if vals else None


class CommandFailed(RuntimeError):
    """A timed command exited non-zero."""


def drop_caches() -> None:
    """Flush dirty pages and drop the page cache, dentries and inodes (a cold start)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def cpu_counters() -> tuple[float, float]:
    """Return (busy, steal) CPU seconds of the whole machine since boot (/proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


def tree_size(path: Path) -> int:
    """Return the apparent size in bytes of a file or of all files under a directory."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, name)).st_size
    return total


def first_line(*cmd: str) -> str:
    """Return the first non-empty line a version command prints (stdout or stderr)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"
    for line in (p.stdout + "\n" + p.stderr).splitlines():
        if line.strip():
            return line.strip()
    return "?"


def machine_line() -> str:
    """Return 'nproc N, RAM X GiB, kernel K, CPU model' for the results."""
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"nproc {os.cpu_count()}, RAM {mem}, kernel {platform.release()}, CPU {cpu}"


# --------------------------------------------------------------------------- the bench


class Bench:
    """Owns the devices, the work directory and the running child; undoes all in close()."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.res = volume.Resources()
        self.child: subprocess.Popen | None = None
        self.workdir: Path = args.dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.round_dir: Path = self.workdir
        self.rows: dict[str, Row] = {}
        self.dev = ""
        self.target = ""
        self.target_image: Path | None = None
        self.rawcopy: Path | None = None
        self.meta: dict = {}
        self.bv = args.blockvault
        self.bv_backup = False
        self.bv_restore = False
        self.bv_init = False
        self.bv_skip_reason = ""
        self.versions: dict[str, str] = {}
        self.log = self.workdir / "stderr.log"

    # ---- plumbing

    def row(self, key: str, label: str, op: str) -> Row:
        return self.rows.setdefault(key, Row(key, label, op))

    def kill_child(self) -> None:
        """Stop the timed command (and its pipeline) this bench started, if one is running."""
        p = self.child
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)  # its own session: the group is exactly its pipeline
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def timed(
        self,
        argv: list[str],
        *,
        env: dict | None = None,
        capture: bool = False,
        what: str = "",
        ok_codes: tuple[int, ...] = (0,),
    ) -> tuple[Run, str]:
        """Run ``argv`` cold under GNU time; return the measurement and captured stdout."""
        time_out = self.workdir / "time.out"
        time_out.unlink(missing_ok=True)
        drop_caches()
        with open(self.log, "a") as err:
            err.write(f"\n==> {what or shlex.join(argv)}\n")
            err.flush()
            busy0, steal0 = cpu_counters()
            t0 = time.perf_counter()
            self.child = subprocess.Popen(
                [TIME, "-f", "%e %U %S %M", "-o", str(time_out), *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                stderr=err,
                env=env,
                start_new_session=True,
                text=True,
            )
            try:
                out, _ = self.child.communicate()
            finally:
                self.kill_child()
            wall = time.perf_counter() - t0
            busy1, steal1 = cpu_counters()
            rc = self.child.returncode
            self.child = None
        lines = time_out.read_text().strip().splitlines() if time_out.exists() else []
        if rc not in ok_codes or not lines:
            raise CommandFailed(f"{what or shlex.join(argv)}: exit {rc}; {self.stderr_tail()}")
        if rc != 0:
            print(
                f"    {what}: exit {rc} (TSM: 4 = some objects skipped, 8 = warnings): "
                f"{self.stderr_tail(3)}"
            )
        _e, user, sys_, rss = lines[-1].split()
        cpu = float(user) + float(sys_)
        return Run(
            wall=wall,
            cpu=cpu,
            rss_kib=int(rss),
            other_cpu=max(0.0, busy1 - busy0 - cpu),
            steal=steal1 - steal0,
        ), out or ""

    def stderr_tail(self, n: int = 6) -> str:
        """Return the last lines the commands wrote to stderr (for failure messages)."""
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        tail = []
        for line in reversed(lines):
            if line.startswith("==> "):
                break
            tail.append(line)
        return " | ".join(reversed(tail[:n]))

    def quiet(self, argv: list[str], env: dict | None = None) -> str:
        """Run an untimed setup command; raise with its stderr on failure."""
        p = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise CommandFailed(f"{shlex.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def record(self, row: Row, fn, rnd: int) -> Run | None:
        """Run ``fn()`` → Run for ``row``; print and keep it, or keep the failure."""
        try:
            r = fn()
        except CommandFailed as e:
            row.failures.append(str(e))
            print(f"  [r{rnd}] {row.label}: FAILED: {e}", flush=True)
            return None
        row.runs.append(r)
        stored = ""
        if r.stored is not None:
            stored = f", stored {fmt_stored(r.stored, row.op == 'unchanged')}"
        noise = f"; {r.other_cpu:.1f} s CPU elsewhere" if r.other_cpu >= 0.1 * r.wall else ""
        noise += f", steal {r.steal:.1f} s" if r.steal >= 0.05 else ""
        print(
            f"  [r{rnd}] {row.label}: {r.wall:.2f} s wall, {r.cpu:.2f} s CPU, "
            f"{r.rss_kib / 1024:.0f} MiB{stored}{noise}",
            flush=True,
        )
        return r

    # ---- setup

    def preflight(self) -> None:
        if os.geteuid() != 0:
            raise SystemExit("bench/run.py needs root (loop devices, drop_caches)")
        missing = [
            pkg
            for cmd, pkg in PEER_PACKAGES.items()
            if shutil.which(cmd) is None and not Path(cmd).exists()
        ]
        if missing:
            raise SystemExit(
                "missing peers; install them with:\n  apt-get update && "
                f"apt-get install -y {' '.join(sorted(set(missing)))}"
            )
        for dev, back in volume.stale_loops(self.args.dir):
            print(f"detaching a loop device left by an earlier bench run: {dev} ({back})")
            subprocess.run(["umount", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)

    def detect_blockvault(self) -> None:
        if self.args.no_blockvault:
            self.bv_skip_reason = "--no-blockvault"
            return
        if not Path(self.bv).exists():
            self.bv_skip_reason = f"{self.bv} does not exist"
            return

        def ok(*sub: str) -> bool:
            p = subprocess.run(
                [self.bv, *sub, "--help"], capture_output=True, stdin=subprocess.DEVNULL
            )
            return p.returncode == 0

        self.bv_backup = ok("backup")
        self.bv_restore = self.bv_backup and ok("restore")
        self.bv_init = ok("repo")
        if not self.bv_backup:
            self.bv_skip_reason = "`blockvault backup --help` fails: no backup command yet"
        elif not self.bv_restore:
            self.bv_skip_reason = "`blockvault restore --help` fails: no restore command yet"

    def collect_versions(self) -> None:
        bv = "?"
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            bv = importlib.metadata.version("blockvault")
        head = subprocess.run(
            ["git", "-C", str(PROJECT_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        tver = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "time"], capture_output=True, text=True
        ).stdout.strip()
        self.versions = {
            "blockvault": f"{bv} (git {head or '?'})"
            + ("" if self.bv_backup else f" — not benchmarked: {self.bv_skip_reason}"),
            "dd": first_line("dd", "--version"),
            "zstd": first_line("zstd", "-V").strip("* "),
            "partclone": first_line("partclone.ext4", "-v"),
            "restic": first_line("restic", "version"),
            "borg": first_line("borg", "--version"),
            "GNU time": f"time {tver or '?'} (Debian)",
            "volume": (
                f"{self.meta.get('mkfs', 'mke2fs ?')}; random data: "
                f"{self.meta.get('random_source', '?')}"
                + (
                    f" ({first_line('openssl', 'version')})"
                    if "openssl" in self.meta.get("random_source", "")
                    else ""
                )
            ),
        }

    def setup_devices(self) -> None:
        image, self.rawcopy, self.meta = volume.ensure(
            self.args.dir, rebuild=self.args.rebuild, res=self.res
        )
        print(volume.describe(self.meta))
        self.workdir.mkdir(parents=True)
        self.dev = self.res.attach(image, read_only=True)
        print(f"source: {self.dev} (read-only, direct-io={volume.dio_state(self.dev)}) ← {image}")
        if "restore" in self.args.only:
            self.target_image = self.workdir / "restore-target.img"
            with open(self.target_image, "wb") as f:
                f.truncate(volume.VOLUME_SIZE)
            self.target = self.res.attach(self.target_image, read_only=False)
            print(
                f"restore target: {self.target} (direct-io={volume.dio_state(self.target)}) "
                f"← {self.target_image} (sparse, made by this run)"
            )

    # ---- the operations

    def out(self, name: str) -> Path:
        p = self.round_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        return p

    def peers_full(self, rnd: int) -> None:
        dev = self.dev

        def dd_read() -> Run:
            return self.timed(["dd", f"if={dev}", "of=/dev/null", "bs=4M", "iflag=direct"])[0]

        def zstd_dev() -> Run:
            o = self.out("device.zst")
            # --force: zstd refuses a block device as input without it
            r = self.timed(
                ["bash", "-c", f"zstd -q -f -1 -T2 -c {dev} > {o}"], what="zstd -1 -T2 whole device"
            )[0]
            r.stored = tree_size(o)
            o.unlink()
            return r

        def partclone_img() -> Run:
            o = self.out("partclone.img")
            r = self.timed(
                [
                    "partclone.ext4",
                    "-c",
                    "-q",
                    "-s",
                    dev,
                    "-o",
                    str(o),
                    "-L",
                    str(self.workdir / "partclone.log"),
                ]
            )[0]
            r.stored = tree_size(o)
            o.unlink()
            return r

        def partclone_zstd() -> Run:
            o = self.out("partclone.img.zst")
            pc = f"partclone.ext4 -c -q -s {dev} -L {self.workdir / 'partclone.log'}"
            r = self.timed(
                ["bash", "-c", f"set -o pipefail; {pc} | zstd -q -1 -T2 -c > {o}"],
                what="partclone.ext4 -c | zstd -1 -T2",
            )[0]
            r.stored = tree_size(o)
            o.unlink()
            return r

        self.record(self.row("dd-read", "`dd bs=4M iflag=direct` (raw read)", "full"), dd_read, rnd)
        self.record(self.row("zstd", "`zstd -1 -T2` whole device", "full"), zstd_dev, rnd)
        self.record(
            self.row("partclone", "partclone.ext4 -c (used blocks)", "full"), partclone_img, rnd
        )
        self.record(
            self.row("partclone-zstd", "partclone.ext4 + `zstd -1 -T2`", "full"),
            partclone_zstd,
            rnd,
        )

    def restic(self, rnd: int) -> None:
        repo = self.out("restic-repo")
        cache = self.out("restic-cache")
        env = dict(
            os.environ,
            RESTIC_PASSWORD="blockvault-bench",
            RESTIC_REPOSITORY=str(repo),
            RESTIC_CACHE_DIR=str(cache),
        )
        # stdin is the device itself (a redirect, so no extra `cat` copy is charged to restic)
        backup = [
            "bash",
            "-c",
            f"restic backup --quiet --host bench --stdin --stdin-filename vol.img < {self.dev}",
        ]
        full = self.row("restic-full", f"restic {restic_short()} `--stdin`, full", "full")
        unch = self.row("restic-unchanged", "restic, unchanged re-run", "unchanged")
        try:
            self.quiet(["restic", "init", "--quiet"], env)
        except CommandFailed as e:
            full.failures.append(str(e))
            print(f"  [r{rnd}] restic init FAILED: {e}")
            return

        def run_full() -> Run:
            r = self.timed(backup, env=env, what="restic backup --stdin (full)")[0]
            r.stored = tree_size(repo)
            return r

        if "full" in self.args.only:
            ok = self.record(full, run_full, rnd)
        else:
            ok = self.untimed_setup(backup, env, "restic full (setup)")
        if ok and "unchanged" in self.args.only:
            self.record(unch, lambda: self.grown(repo, backup, env, "restic unchanged"), rnd)

    def borg(self, rnd: int, kind: str) -> None:
        repo = self.out(f"borg-{kind}-repo")
        base = self.out(f"borg-{kind}-base")
        env = dict(
            os.environ,
            BORG_BASE_DIR=str(base),
            BORG_REPO=str(repo),
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        )
        chunker = ["--chunker-params", "fixed,4194304"] if kind == "fixed" else []
        label = "borg fixed 4 MiB" if kind == "fixed" else "borg buzhash (default chunker)"
        full = self.row(f"borg-{kind}-full", f"{label}, full", "full")
        unch = self.row(f"borg-{kind}-unchanged", f"{label}, unchanged re-run", "unchanged")
        try:
            self.quiet(["borg", "init", "--encryption", "none"], env)
        except CommandFailed as e:
            full.failures.append(str(e))
            print(f"  [r{rnd}] borg init FAILED: {e}")
            return
        n = 0

        def create() -> list[str]:
            nonlocal n
            n += 1
            return [
                "borg",
                "create",
                "--read-special",
                *chunker,
                "--compression",
                self.args.borg_compression,
                f"::vol-{n}",
                self.dev,
            ]

        def run_full() -> Run:
            r = self.timed(create(), env=env, what=f"{label} full")[0]
            r.stored = tree_size(repo)
            return r

        if "full" in self.args.only:
            ok = self.record(full, run_full, rnd)
        else:
            ok = self.untimed_setup(create(), env, f"{label} full (setup)")
        if ok and "unchanged" in self.args.only:
            self.record(unch, lambda: self.grown(repo, create(), env, f"{label} unchanged"), rnd)

    def grown(self, repo: Path, argv: list[str], env: dict, what: str) -> Run:
        """Time an unchanged re-run into ``repo``; stored = how much the repository grew."""
        before = tree_size(repo)
        r = self.timed(argv, env=env, what=what)[0]
        r.stored = tree_size(repo) - before
        return r

    def untimed_setup(self, argv: list[str], env: dict, what: str) -> bool:
        """Run a setup backup (for --only unchanged/restore); False and a note on failure."""
        try:
            self.quiet(argv, env)
            return True
        except CommandFailed as e:
            print(f"  {what} FAILED: {e}")
            return False

    # ---- blockvault

    def bv_env(self, repo: Path) -> dict:
        env = dict(os.environ, BLOCKVAULT_REPO=str(repo))
        if not self.args.no_bench_fstab:
            env["BLOCKVAULT_FSTAB"] = str(self.workdir / "fstab")
        return env

    def write_bench_fstab(self) -> None:
        """Give the (unmounted) volume a mount point in an fstab of the bench's own.

        check-volume reports FS_NO_MOUNT_POINT (a blocker) for a file system that is
        neither mounted nor in fstab; the bench volume is such a file system. The
        mount point is never mounted; BLOCKVAULT_FSTAB points blockvault at this file.
        """
        mnt = self.workdir / "volume-mount-point"
        mnt.mkdir(exist_ok=True)
        (self.workdir / "fstab").write_text(f"{self.dev} {mnt} ext4 ro,noauto 0 0\n")

    def blockvault(self, rnd: int) -> str | None:
        """Time blockvault's full and unchanged backups; return the repository used."""
        full = self.row("bv-full", "**blockvault** full", "full")
        unch = self.row("bv-unchanged", "**blockvault** unchanged re-run", "unchanged")
        if not self.bv_backup:
            for r in (full, unch):
                r.skipped = self.bv_skip_reason
            return None
        repo = self.out("blockvault-repo")
        env = self.bv_env(repo)
        if self.bv_init:
            try:
                self.quiet([self.bv, "repo", "init"], env)
            except CommandFailed as e:
                print(f"  [r{rnd}] blockvault repo init: {e} (going on: backup may create it)")
        else:
            repo.mkdir()
        argv = [self.bv, "backup", "image", self.dev, "--imagetype", "static", "--json"]

        def once(row: Row) -> Run:
            before = tree_size(repo) if repo.exists() else 0
            r, out = self.timed(
                argv, env=env, capture=True, what=f"blockvault backup ({row.op})", ok_codes=BV_OK
            )
            r.stored = tree_size(repo) - (before if row.op == "unchanged" else 0)
            row.reports.append(self.keep_report(out, f"bv-backup-{row.op}-r{rnd}.json"))
            return r

        if "full" in self.args.only:
            ok = self.record(full, lambda: once(full), rnd)
        else:
            ok = self.untimed_setup(argv, env, "blockvault full (setup)")
        if ok and "unchanged" in self.args.only:
            self.record(unch, lambda: once(unch), rnd)
        return str(repo) if ok else None

    def keep_report(self, out: str, name: str) -> dict:
        """Save blockvault's --json report; return it parsed ({} if it was not JSON)."""
        (self.workdir / name).write_text(out)
        try:
            doc = json.loads(out)
        except ValueError:
            print(f"    (blockvault printed no JSON document on stdout: {out[:120]!r})")
            return {}
        return doc if isinstance(doc, dict) else {"report": doc}

    # ---- restore

    def prepare_target(self) -> None:
        """Overwrite the whole target with a non-zero pattern (untimed).

        A restore must write every byte of the image, zeros included; a pattern makes
        any range it skipped show up in the comparison. dd and blockvault start alike.
        """
        pattern = (b"blockvault-bench target garbage\n" * (volume.CHUNK // 32))[: volume.CHUNK]
        fd = os.open(self.target, os.O_WRONLY)
        try:
            for _ in range(volume.VOLUME_SIZE // volume.CHUNK):
                os.write(fd, pattern)
            os.fsync(fd)
        finally:
            os.close(fd)

    def verify_target(self, who: str) -> str:
        """Compare the restored target with the source; return a one-word verdict."""
        drop_caches()
        p = subprocess.run(["cmp", self.dev, self.target], capture_output=True, text=True)
        if p.returncode == 0:
            return "identical"
        first = (p.stdout + p.stderr).strip()
        used_ok, detail = used_blocks_match(self.dev, self.target)
        banner = "!" * 72
        if used_ok:
            print(
                f"    {who}: cmp: {first} — every USED block matches (ext4 bitmap); "
                f"only unneeded blocks differ ({detail})"
            )
            return "used blocks identical, free blocks and clean journal log differ, fsck clean"
        print(
            f"{banner}\n    RESTORE MISMATCH ({who}): cmp: {first}\n    {detail}\n{banner}",
            flush=True,
        )
        return "MISMATCH"

    def restores(self, rnd: int, bv_repo: str | None) -> None:
        dd = self.row("dd-write", "`dd bs=4M oflag=direct` raw copy → target", "restore")
        ddd = self.row(
            "dd-write-direct", "`dd bs=4M iflag=direct oflag=direct` raw copy → target", "restore"
        )
        bv = self.row("bv-restore", "**blockvault** restore", "restore")

        def dd_write(row: Row, iflags: list[str]) -> Run:
            self.prepare_target()
            r = self.timed(
                ["dd", f"if={self.rawcopy}", f"of={self.target}", "bs=4M", "oflag=direct", *iflags],
                what=row.label,
            )[0]
            row.reports.append({"verify": self.verify_target("dd")})
            return r

        # The plain command reads the raw copy through the page cache, which costs this VM
        # 0.4–6 s of system CPU per 2 GiB, erratically; with iflag=direct too, dd measures the
        # write side alone (about 0.1 s of CPU, steady).
        self.record(dd, lambda: dd_write(dd, []), rnd)
        self.record(ddd, lambda: dd_write(ddd, ["iflag=direct"]), rnd)
        if not self.bv_restore:
            bv.skipped = self.bv_skip_reason
            return
        if bv_repo is None:
            bv.failures.append("no blockvault backup to restore from")
            return
        env = self.bv_env(Path(bv_repo))
        argv = [
            self.bv,
            "restore",
            "image",
            self.dev,
            self.target,
            "--confirm",
            self.target,
            "--json",
        ]

        def bv_write() -> Run:
            self.prepare_target()
            r, out = self.timed(
                argv, env=env, capture=True, what="blockvault restore", ok_codes=BV_OK
            )
            rep = self.keep_report(out, f"bv-restore-r{rnd}.json")
            rep["verify"] = self.verify_target("blockvault")
            bv.reports.append(rep)
            return r

        self.record(bv, bv_write, rnd)

    # ---- the whole run

    def run(self) -> None:
        t0 = time.monotonic()
        self.preflight()
        self.detect_blockvault()
        self.setup_devices()
        self.collect_versions()
        for name, v in self.versions.items():
            print(f"  {name}: {v}")
        if self.bv_skip_reason:
            print(f"SKIPPING blockvault rows: {self.bv_skip_reason}")
        else:
            self.write_bench_fstab()
            p = subprocess.run(
                [self.bv, "check-volume", self.dev, "--json"],
                env=self.bv_env(self.workdir / "unused"),
                capture_output=True,
                text=True,
            )
            print(
                f"blockvault check-volume {self.dev}: exit {p.returncode} "
                f"{summarize_findings(p.stdout)}"
            )
        load = os.getloadavg()[0]
        if load > 0.5:
            print(
                f"NOTE: 1-minute load average is {load:.2f} before the first run: other work "
                "on this machine will slow the runs (see the 'CPU s elsewhere' column)"
            )
        only = self.args.only
        for rnd in range(1, self.args.runs + 1):
            print(f"round {rnd}/{self.args.runs}", flush=True)
            self.round_dir = self.workdir / f"round-{rnd}"
            self.round_dir.mkdir()
            if "full" in only:
                self.peers_full(rnd)
            if only & {"full", "unchanged"}:
                self.restic(rnd)
                self.borg(rnd, "fixed")
                self.borg(rnd, "buzhash")
            bv_repo = self.blockvault(rnd) if only & {"full", "unchanged", "restore"} else None
            if "restore" in only:
                self.restores(rnd, bv_repo)
            if rnd < self.args.runs or not self.args.keep:
                shutil.rmtree(self.round_dir, ignore_errors=True)
        self.elapsed = time.monotonic() - t0

    def close(self) -> None:
        """Undo everything, whatever happened: child, mounts, loop devices, temp files."""
        old = {
            s: signal.signal(s, signal.SIG_IGN)
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            self.kill_child()
            self.res.close()
            if self.target_image is not None:
                self.target_image.unlink(missing_ok=True)
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


# --------------------------------------------------------------------------- checks


def used_blocks_match(src: str, dst: str) -> tuple[bool, str]:
    """Compare only the blocks ext4 marks used (dumpe2fs); return (equal, detail).

    A clean journal's log (every journal block after its superblock) is not needed:
    blockvault restores it as zeros. Those blocks count apart, and the target must
    pass ``e2fsck -fn`` — the independent check that the zeroed log is sound.
    """
    p = subprocess.run(["dumpe2fs", src], capture_output=True, text=True)
    m = re.search(r"^Block size:\s+(\d+)", p.stdout, re.M)
    if p.returncode != 0 or not m:
        return False, "could not read the ext4 bitmap to compare used blocks"
    bs = int(m.group(1))
    nblocks = volume.VOLUME_SIZE // bs
    free = bytearray(nblocks)
    log = bytearray(nblocks)
    if re.search(r"^Journal start:\s+0$", p.stdout, re.M):
        stat = subprocess.run(
            ["debugfs", "-R", "stat <8>", src], capture_output=True, text=True
        ).stdout
        for lo, hi in re.findall(r"\(\d+-\d+\):(\d+)-(\d+)", stat.split("EXTENTS:")[-1]):
            log[int(lo) + 1 : int(hi) + 1] = b"\x01" * (int(hi) - int(lo))
    fsck = subprocess.run(["e2fsck", "-fn", dst], capture_output=True, text=True)
    if fsck.returncode != 0:
        return False, f"e2fsck -fn of the target failed: {fsck.stdout.strip()[-300:]}"
    for line in re.findall(r"^\s+Free blocks: (.*)$", p.stdout, re.M):
        for part in filter(None, (x.strip() for x in line.split(","))):
            a, _, b = part.partition("-")
            lo, hi = int(a), int(b or a)
            free[lo : hi + 1] = b"\x01" * (hi + 1 - lo)
    bad_used = diff_free = diff_log = 0
    first_bad = None
    with open(src, "rb") as fa, open(dst, "rb") as fb:
        blk = 0
        while True:
            a, b = fa.read(volume.CHUNK), fb.read(volume.CHUNK)
            if not a:
                break
            if a != b:
                for i in range(0, len(a), bs):
                    if a[i : i + bs] != b[i : i + bs]:
                        n = blk + i // bs
                        if free[n]:
                            diff_free += 1
                        elif log[n]:
                            diff_log += 1
                        else:
                            bad_used += 1
                            first_bad = first_bad if first_bad is not None else n
            blk += len(a) // bs
    if bad_used:
        return False, (
            f"{bad_used} USED {bs}-byte blocks differ (first: block {first_bad}); "
            f"{diff_free} free blocks differ"
        )
    return True, (
        f"{diff_free} free and {diff_log} clean-journal-log {bs}-byte blocks differ; "
        "e2fsck -fn clean"
    )


def summarize_findings(out: str) -> str:
    """Return 'CODE(severity), …' from check-volume's JSON, tolerating any shape."""
    try:
        doc = json.loads(out)
    except ValueError:
        return out.strip()[:200]
    found = []

    def walk(x: object) -> None:
        if isinstance(x, dict):
            if "code" in x:
                found.append(f"{x['code']}({x.get('severity', '?')})")
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    return ", ".join(found) or "(no findings)"


def restic_short() -> str:
    m = re.search(r"restic (\S+)", first_line("restic", "version"))
    return m.group(1) if m else ""


REPORT_KEYS = re.compile(
    r"read|stored|written|dedup|zero|chunk|skip|compress|byte|verif|unused", re.I
)


def report_figures(doc: dict) -> str:
    """Return the byte/chunk figures of a blockvault --json report as 'key=value' pairs."""
    pairs = []

    def walk(x: object, prefix: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(x, (int, float, str)) and not isinstance(x, bool):
            key = prefix[:-1]
            if REPORT_KEYS.search(key.rsplit(".", 1)[-1]) and len(str(x)) < 60:
                if isinstance(x, int) and x > 10**6 and "byte" not in key.lower():
                    pairs.append(f"{key}={x} ({x / 1e6:.1f} MB)")
                elif isinstance(x, int) and x > 10**6:
                    pairs.append(f"{key}={x / 1e6:.1f} MB")
                else:
                    pairs.append(f"{key}={x}")

    walk(doc, "")
    return ", ".join(pairs) if pairs else "(no bytes_read / stored figures in the report)"


# --------------------------------------------------------------------------- output


def fmt_stored(b: int | None, delta: bool = False) -> str:
    if b is None:
        return "–"
    if delta:
        return f"+{b / 1e3:.0f} KB" if abs(b) < 10**6 else f"+{b / 1e6:.1f} MB"
    return f"{b / 1e6:.0f} MB"


ROW_ORDER = (
    "dd-read",
    "zstd",
    "partclone",
    "partclone-zstd",
    "restic-full",
    "borg-fixed-full",
    "borg-buzhash-full",
    "bv-full",
    "restic-unchanged",
    "borg-fixed-unchanged",
    "borg-buzhash-unchanged",
    "bv-unchanged",
    "dd-write",
    "dd-write-direct",
    "bv-restore",
)
BV_ROW = {"full": "bv-full", "unchanged": "bv-unchanged", "restore": "bv-restore"}


def table(rows: dict[str, Row], only: set[str]) -> str:
    head = (
        "| tool | op | wall s | MB/s of device | CPU s | peak RSS MiB | stored | "
        "peer wall ÷ blockvault wall | CPU s elsewhere |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    for key in ROW_ORDER:
        row = rows.get(key)
        if row is None or row.op not in only:
            continue
        if not row.runs:
            why = row.skipped or ("; ".join(row.failures)[:160] if row.failures else "no runs")
            state = "skipped" if row.skipped else "FAILED"
            lines.append(f"| {row.label} | {row.op} | {state}: {why} | | | | | | |")
            continue
        wall, cpu, rss = row.median("wall"), row.median("cpu"), row.median("rss_kib")
        stored = row.median("stored")
        bv = rows.get(BV_ROW[row.op])
        ratio = "–"
        if key.startswith("bv-"):
            ratio = "1 (itself)"
        elif bv is not None and bv.runs:
            ratio = f"{wall / bv.median('wall'):.2f}"
        elif bv is not None:
            ratio = "n/a (no blockvault)"
        flags = "" if not row.failures else f" ({len(row.failures)} failed)"
        shown = fmt_stored(None if stored is None else int(stored), row.op == "unchanged")
        lines.append(
            f"| {row.label}{flags} | {row.op} | {wall:.2f} | {DEVICE_MB / wall:.0f} | {cpu:.1f} | "
            f"{rss / 1024:.0f} | {shown} | {ratio} | {row.median('other_cpu'):.1f} |"
        )
    return "\n".join(lines)


def targets(rows: dict[str, Row]) -> tuple[str, list[str]]:
    """Return the targets table and the verdicts (PASS / FAIL / SKIP)."""

    def med(key: str) -> float | None:
        r = rows.get(key)
        return r.median("wall") if r is not None and r.runs else None

    checks = [
        ("full ≤ 0.5 × borg fixed full (wall)", med("bv-full"), med("borg-fixed-full"), 0.5),
        ("full ≤ 0.5 × partclone.ext4 -c (wall)", med("bv-full"), med("partclone"), 0.5),
        (
            "unchanged ≤ 0.5 × borg fixed unchanged (wall)",
            med("bv-unchanged"),
            med("borg-fixed-unchanged"),
            0.5,
        ),
        (
            "restore ≥ 80% of dd's write speed (wall ≤ 1.25 × `dd oflag=direct`)",
            med("bv-restore"),
            med("dd-write"),
            1.25,
        ),
    ]
    informational = [
        (
            "stricter, not counted: restore wall ≤ 1.25 × `dd iflag=direct oflag=direct` "
            "(dd's write side alone)",
            med("bv-restore"),
            med("dd-write-direct"),
            1.25,
        ),
    ]
    lines = ["| target | blockvault | limit | result |", "| --- | --- | --- | --- |"]
    verdicts = []
    for i, (name, bv, peer, factor) in enumerate(checks + informational):
        counted = i < len(checks)
        if bv is None or peer is None:
            missing = "blockvault" if bv is None else "peer"
            lines.append(f"| {name} | – | – | SKIP (no {missing} figure) |")
            if counted:
                verdicts.append("SKIP")
            continue
        limit = factor * peer
        v = "PASS" if bv <= limit else "FAIL"
        if counted:
            verdicts.append(v)
        lines.append(f"| {name} | {bv:.3f} s | ≤ {limit:.3f} s | {v} ({bv / peer:.3f}× the peer) |")
    rss = [r.rss_kib for k in BV_ROW.values() if k in rows for r in rows[k].runs]
    if rss:
        peak = max(rss) / 1024
        v = "PASS" if peak < 200 else "FAIL"
        lines.append(
            f"| peak RSS < 200 MiB (max over all blockvault runs) | {peak:.0f} MiB | "
            f"< 200 MiB | {v} |"
        )
    else:
        v = "SKIP"
        lines.append("| peak RSS < 200 MiB | – | – | SKIP (no blockvault figure) |")
    verdicts.append(v)
    bad = [
        str(rep.get("verify"))
        for k in ("dd-write", "dd-write-direct", "bv-restore")
        if k in rows
        for rep in rows[k].reports
        if rep.get("verify") == "MISMATCH"
    ]
    if bad:
        lines.append(f"| restored target equals the source | {len(bad)} mismatching | – | FAIL |")
        verdicts.append("FAIL")
    return "\n".join(lines), verdicts


def bv_reports(rows: dict[str, Row]) -> str:
    out = []
    for key in ("bv-full", "bv-unchanged", "bv-restore"):
        row = rows.get(key)
        if row is None:
            continue
        for i, rep in enumerate(row.reports, 1):
            out.append(f"- {row.label} run {i}: {report_figures(rep)}")
    return "\n".join(out)


def verify_lines(rows: dict[str, Row]) -> str:
    out = []
    for key in ("dd-write", "dd-write-direct", "bv-restore"):
        row = rows.get(key)
        if row and row.reports:
            out.append(f"- {row.label}: " + "; ".join(str(r.get("verify")) for r in row.reports))
    return "\n".join(out)


def report(bench: Bench, command: str) -> str:
    meta = bench.meta
    tab, _ = targets(bench.rows)
    parts = [
        f"Machine: {machine_line()}",
        "",
        f"Command: `{command}` ({bench.args.runs} run(s) per row, medians; cold cache before "
        f"every run; {getattr(bench, 'elapsed', 0):.0f} s in all)",
        "",
        f"Volume: {volume.describe(meta).removeprefix('volume: ')}",
        "",
        "Tool versions: "
        + "; ".join(f"{k} {v}" if not v.startswith(k) else v for k, v in bench.versions.items()),
        "",
        table(bench.rows, bench.args.only),
        "",
        f"MB/s of device = {DEVICE_MB:.0f} MB ÷ wall. Stored: output file or repository size "
        "(unchanged: how much the repository grew). Peak RSS: the largest single process "
        "of the command (GNU time). CPU s elsewhere: what the rest of the machine used "
        "meanwhile (other processes, kernel threads incl. loop workers) — host noise. "
        f"borg compression: {bench.args.borg_compression}; restic: repository v2, "
        "compression auto.",
        "",
        "Targets:",
        "",
        tab,
    ]
    rep = bv_reports(bench.rows)
    if rep:
        parts += ["", "blockvault --json reports:", "", rep]
    ver = verify_lines(bench.rows)
    if ver:
        parts += ["", "Restore check (cmp target vs source):", "", ver]
    return "\n".join(parts)


def write_results(path: Path, body: str) -> None:
    """Append today's section to ``path``, replacing a section of the same date."""
    volume.write_section(
        path,
        f"## {time.strftime('%Y-%m-%d')}",
        body,
        header=(
            "# blockvault benchmark results\n\nWritten by `bench/run.py --write-results`; "
            "one section per date (a re-run the same day replaces it).\n"
        ),
    )

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark blockvault against dd, zstd, partclone, restic and borg."
    )
    ap.add_argument("--runs", type=int, default=3, help="rounds; the table shows medians (3)")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory: logs, reports and the last round's repos",
    )
    ap.add_argument(
        "--only",
        default="full,unchanged,restore",
        help="comma list of full,unchanged,restore (default: all)",
    )
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached volume image")
    ap.add_argument(
        "--write-results", action="store_true", help="write a dated section into --results-file"
    )
    ap.add_argument(
        "--results-file",
        type=Path,
        default=BENCH_DIR / "RESULTS.md",
        help="where --write-results writes (bench/RESULTS.md)",
    )
    ap.add_argument(
        "--blockvault",
        default=str(Path(sys.executable).parent / "blockvault"),
        help="the blockvault executable (the venv's)",
    )
    ap.add_argument("--no-blockvault", action="store_true", help="time the peers only")
    ap.add_argument(
        "--borg-compression",
        default=BORG_COMPRESSION,
        help=f"borg create --compression ({BORG_COMPRESSION}; borg's default: lz4)",
    )
    ap.add_argument(
        "--no-bench-fstab",
        action="store_true",
        help="do not set BLOCKVAULT_FSTAB to the bench's fstab for the volume",
    )
    ap.add_argument(
        "--dir",
        type=Path,
        default=volume.CACHE_DIR,
        help=f"cache and work directory ({volume.CACHE_DIR})",
    )
    args = ap.parse_args(argv)
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not args.only or args.only - set(OPS):
        ap.error(f"--only takes a comma list of {', '.join(OPS)}")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(
        [".venv/bin/python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]
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
    _tab, verdicts = targets(bench.rows)
    print("\nTargets: " + " ".join(verdicts))
    if args.write_results:
        write_results(args.results_file, body)
        print(f"results written to {args.results_file}")
    failed = any(r.failures for r in bench.rows.values())
    return 1 if failed or "FAIL" in verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
