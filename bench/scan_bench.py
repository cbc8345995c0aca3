"""Time the increment scan against ``find`` on a 200,000-file ext4 volume, in one run.

    .venv/bin/python bench/scan_bench.py [--runs N] [--rebuild] [--keep] [--write-results]

The volume (built once, cached as ``/var/tmp/blockvault-bench/scan-volume.img``): a
2 GiB ext4 file system holding 200,000 small files in a tree like a server's — a
dozen top directories, three levels, leaf directories of 100 to 1,000 files — plus
symlinks and hard links. Each run attaches it read-only, mounts it, takes a full
image and a first increment into a fresh repository (untimed), then times, round by
round and interleaved:

- ``find ROOT -xdev -printf '%y %m %U %G %s %T@ %C@ %i %n %P\\n' > /dev/null``
  (the same facts an increment records),
- ``scan_tree`` with one and with two threads,
- ``backup_increment`` of the unchanged volume (device scan, previous manifest,
  scan, comparison, manifest written),

each cold (``sync; echo 3 > /proc/sys/vm/drop_caches`` first) and warm. The table
shows medians; the target is ``scan_tree`` within 2× of ``find``, cold and warm.
Every loop device and mount the run makes is undone on every exit path. Not part
of the test suite. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shlex
import shutil
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

import volume  # noqa: E402  bench/volume.py: loop devices, mounts, the cache lock
from run import drop_caches, machine_line  # noqa: E402  bench/run.py

from core.engine.backup import BackupOptions, backup_image  # noqa: E402
from core.increments.backup import backup_increment  # noqa: E402
from core.increments.scan import DEFAULT_WORKERS, gc_paused, scan_tree  # noqa: E402
from core.repo.filemanifest import encode_file_manifest  # noqa: E402
from core.repo.repository import Repository  # noqa: E402
from core.snapshots import ImageType  # noqa: E402

IMAGE_NAME = "scan-volume.img"
META_NAME = "scan-volume.json"
RECIPE_VERSION = 1
"""Bump when the recipe changes, so cached images are rebuilt."""

SEED = 20261126
VOLUME_SIZE = 2 << 30
INODES = 300_000
FILES = 200_000
SYMLINKS = 1_000
HARDLINKS = 500
TOP_DIRS = (
    "etc",
    "home",
    "opt",
    "srv",
    "usr",
    "var",
    "data",
    "build",
    "mail",
    "www",
    "repo",
    "lib",
)
FIND_FORMAT = r"%y %m %U %G %s %T@ %C@ %i %n %P\n"
SECTION = "## Increment scan"


# --------------------------------------------------------------------------- the volume


def plan_tree(rng: random.Random) -> list[tuple[str, int]]:
    """Return (directory, number of files) for every directory, FILES files in all."""
    inner: list[str] = []
    leaves: list[str] = []
    for top in TOP_DIRS:
        inner.append(top)
        for i in range(rng.randint(5, 9)):
            mid = f"{top}/{top[:2]}-{i:02d}"
            inner.append(mid)
            for j in range(rng.randint(2, 6)):
                leaves.append(f"{mid}/part{j}")
    plan = [(d, rng.randint(5, 30)) for d in inner]
    left = FILES - sum(n for _, n in plan)
    weights = [rng.randint(100, 1000) for _ in leaves]
    scale = left / sum(weights)
    counts = [max(1, round(w * scale)) for w in weights]
    counts[-1] += left - sum(counts)
    plan += list(zip(leaves, counts, strict=True))
    return plan


def text_pool(rng: random.Random, size: int = 1 << 20) -> bytes:
    """Return config-like text to cut file contents from."""
    vocab = [
        "".join(
            rng.choice("bcdfghklmnprstvwz") + rng.choice("aeiou") for _ in range(rng.randint(1, 4))
        )
        for _ in range(2000)
    ]
    out: list[str] = []
    n = 0
    while n < size:
        line = f"{rng.choice(vocab)}.{rng.choice(vocab)} = {' '.join(rng.choices(vocab, k=5))}\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def fill(root: Path) -> dict:
    """Write the tree below ``root``; return what was written."""
    rng = random.Random(SEED)
    plan = plan_tree(rng)
    pool = text_pool(rng)
    files: list[Path] = []
    total = 0
    for d, n in plan:
        (root / d).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            size = min(int(rng.lognormvariate(6.5, 1.2)), 256 << 10)
            start = rng.randrange(len(pool) - size) if size < len(pool) else 0
            path = root / d / f"f{k:04d}.conf"
            with open(path, "wb") as f:
                f.write(b"%d\n" % len(files) + pool[start : start + size])
            files.append(path)
            total += size
    for i in range(SYMLINKS):
        src = rng.choice(files)
        link = src.parent / f"link{i:04d}"
        link.symlink_to(src.name)
    for i in range(HARDLINKS):
        src = rng.choice(files)
        os.link(src, src.parent / f"hard{i:04d}")
    os.sync()
    return {"dirs": len(plan), "files": len(files), "bytes": total}


def build(cache_dir: Path, res: volume.Resources) -> dict:
    """Make the image in ``cache_dir`` (a temp name, renamed when complete)."""
    tmp = cache_dir / (IMAGE_NAME + ".building")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        f.truncate(VOLUME_SIZE)
    volume.run("mkfs.ext4", "-q", "-F", "-N", str(INODES), "-L", "bvscan", str(tmp))
    dev = res.attach(tmp, read_only=False)
    mnt = cache_dir / f"scan-build-{os.getpid()}"
    t0 = time.monotonic()
    try:
        res.mount(dev, mnt, "rw")
        info = fill(mnt)
        info["used_bytes"] = volume.used_bytes(mnt)
    finally:
        if mnt in res.mounts:
            res.umount(mnt)
        with contextlib.suppress(OSError):
            mnt.rmdir()
        res.detach(dev)
    info.update(
        {
            "recipe_version": RECIPE_VERSION,
            "seed": SEED,
            "size": VOLUME_SIZE,
            "build_seconds": round(time.monotonic() - t0, 1),
            "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
    )
    os.replace(tmp, cache_dir / IMAGE_NAME)
    (cache_dir / META_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return info


def ensure(cache_dir: Path, rebuild: bool, res: volume.Resources) -> tuple[Path, dict]:
    """Return the cached image and its metadata, building it when missing or asked to."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    image, meta_path = cache_dir / IMAGE_NAME, cache_dir / META_NAME
    meta: dict = {}
    if meta_path.exists():
        with contextlib.suppress(ValueError):
            meta = json.loads(meta_path.read_text())
    if rebuild or not image.exists() or meta.get("recipe_version") != RECIPE_VERSION:
        print(f"building the scan volume in {cache_dir} (about a minute)", flush=True)
        meta = build(cache_dir, res)
    return image, meta


def describe(meta: dict) -> str:
    """Return one line about the volume."""
    return (
        f"ext4, 2 GiB, {meta.get('files', '?'):,} files in {meta.get('dirs', '?')} directories "
        f"(+{SYMLINKS:,} symlinks, {HARDLINKS} hard links), "
        f"{meta.get('bytes', 0) / 1e6:.0f} MB of content, "
        f"{meta.get('used_bytes', 0) / 2**20:.0f} MiB used"
    )


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    """One tool: its cold and warm timings over the rounds."""

    label: str
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    cpu_warm: list[float] = field(default_factory=list)
    note: str = ""

    def med(self, which: str) -> float | None:
        vals = getattr(self, which)
        return statistics.median(vals) if vals else None


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn: Callable[[], object], cold: bool) -> tuple[float, float, object]:
    """Return (wall, CPU, result) of ``fn()``, after dropping the caches when ``cold``."""
    if cold:
        drop_caches()
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    return wall, cpu_seconds() - c0, out


class ScanBench:
    """Owns the devices, mount and work directory of one run; :meth:`close` undoes them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.res = volume.Resources()
        self.workdir = args.dir / f"scan-run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.mnt = self.workdir / "mnt"
        self.meta: dict = {}
        self.rows: dict[str, Row] = {}
        self.entries = 0
        self.increment_scan: dict[str, list[float]] = {"cold": [], "warm": []}
        self.codec: dict[str, float] = {}
        self.setup_line = ""

    def setup(self) -> Repository:
        image, self.meta = ensure(self.args.dir, self.args.rebuild, self.res)
        print(describe(self.meta))
        self.workdir.mkdir(parents=True)
        dev = self.res.attach(image, read_only=True)
        self.res.mount(dev, self.mnt, "ro")
        print(f"mounted {dev} (read-only) at {self.mnt}")
        repo = Repository.init(str(self.workdir / "repo"))
        t0 = time.monotonic()
        backup_image(str(self.mnt), repo, BackupOptions(imagetype=ImageType.STATIC))
        t1 = time.monotonic()
        first = backup_increment(str(self.mnt), repo)
        self.setup_line = (
            f"Untimed setup (warm-ish, once): full image {t1 - t0:.0f} s; first increment "
            f"{first.duration:.0f} s ({first.files_read:,} files, {first.bytes_read / 1e6:.0f} MB "
            f"read, {first.chunks_new:,} pieces stored, {first.bytes_sent / 1e6:.0f} MB sent)."
        )
        print(self.setup_line, flush=True)
        self.entries = first.files_scanned
        return repo

    def find(self) -> None:
        cmd = ["find", str(self.mnt), "-xdev", "-printf", FIND_FORMAT]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)

    def run(self) -> None:
        repo = self.setup()
        tools: list[tuple[str, str, Callable[[], object]]] = [
            ("find", "`find -xdev -printf '%y %m %U %G %s %T@ %C@ %i %n %P\\n'`", self.find),
            ("scan1", "`scan_tree`, 1 thread", lambda: scan_tree(str(self.mnt), workers=1)),
            ("scan2", "`scan_tree`, 2 threads", lambda: scan_tree(str(self.mnt), workers=2)),
            (
                "incr",
                "`backup_increment`, nothing changed",
                lambda: backup_increment(str(self.mnt), repo),
            ),
        ]
        for key, label, _ in tools:
            self.rows[key] = Row(label)
        for rnd in range(1, self.args.runs + 1):
            for cold in (True, False):
                if not cold:
                    self.find()  # warm the caches
                for key, _label, fn in tools:
                    wall, cpu, out = timed(fn, cold)
                    row = self.rows[key]
                    (row.cold if cold else row.warm).append(wall)
                    if not cold:
                        row.cpu_warm.append(cpu)
                    extra = ""
                    if key.startswith("scan"):
                        n = len(out.entries)  # type: ignore[attr-defined]
                        if n != self.entries:
                            raise SystemExit(f"{key} saw {n} entries, not {self.entries}")
                    if key == "incr":
                        r = out
                        if r.bytes_read or r.bytes_sent or r.files_unchanged != self.entries:  # type: ignore[attr-defined]
                            raise SystemExit(f"the unchanged increment did work: {r}")
                        state = "cold" if cold else "warm"
                        self.increment_scan[state].append(r.scan_seconds)  # type: ignore[attr-defined]
                        extra = f" (its scan {r.scan_seconds:.2f} s)"  # type: ignore[attr-defined]
                    state = "cold" if cold else "warm"
                    print(f"  [r{rnd}] {key:5} {state}: {wall:6.2f} s, CPU {cpu:5.2f} s{extra}")
                    del out
        self.time_codec(repo)

    def time_codec(self, repo: Repository) -> None:
        """Time the previous manifest's decode and the new one's encode (warm, medians of 3).

        Not scan time, but most of an unchanged increment's: shown so that it is clear
        where the increment row's seconds go.
        """
        last = repo.increment_ids()[-1]
        with gc_paused():
            decode = [timed(lambda: repo.increment(last), False)[0] for _ in range(3)]
            m = repo.increment(last)
            encode = [timed(lambda: encode_file_manifest(m), False)[0] for _ in range(3)]
        self.codec = {
            "decode": statistics.median(decode),
            "encode": statistics.median(encode),
            "size": len(encode_file_manifest(m)),
        }
        print(
            f"  manifest of {len(m.entries):,} entries ({self.codec['size'] / 1e6:.1f} MB): "
            f"decode {self.codec['decode']:.2f} s, encode {self.codec['encode']:.2f} s"
        )

    def close(self) -> None:
        self.res.close()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def table(rows: dict[str, Row]) -> str:
    find_cold, find_warm = rows["find"].med("cold"), rows["find"].med("warm")
    lines = [
        "| what | cold s | warm s | ÷ find cold | ÷ find warm | CPU s warm |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows.values():
        c, w, cpu = row.med("cold"), row.med("warm"), row.med("cpu_warm")
        lines.append(
            f"| {row.label} | {c:.2f} | {w:.2f} | {c / find_cold:.2f} | {w / find_warm:.2f} "
            f"| {cpu:.2f} |"
        )
    return "\n".join(lines)


def targets(rows: dict[str, Row]) -> tuple[str, list[str]]:
    key = f"scan{DEFAULT_WORKERS if DEFAULT_WORKERS in (1, 2) else 2}"
    out, verdicts = [], []
    for which in ("cold", "warm"):
        scan, find = rows[key].med(which), rows["find"].med(which)
        assert scan is not None and find is not None
        v = "PASS" if scan <= 2 * find else "FAIL"
        verdicts.append(v)
        out.append(
            f"- `scan_tree` (default: {DEFAULT_WORKERS} thread) {which}: {scan:.2f} s ≤ 2 × "
            f"find {find:.2f} s = {2 * find:.2f} s: {v} ({scan / find:.2f}×)"
        )
    return "\n".join(out), verdicts


def report(bench: ScanBench, command: str) -> str:
    tab = table(bench.rows)
    tgt, _ = targets(bench.rows)
    inner = {k: statistics.median(v) if v else 0.0 for k, v in bench.increment_scan.items()}
    codec = bench.codec
    return "\n".join(
        [
            f"Date: {time.strftime('%Y-%m-%d')}",
            "",
            f"Machine: {machine_line()}",
            "",
            f"Command: `{command}` ({bench.args.runs} round(s), medians; cold = "
            "`sync; echo 3 > /proc/sys/vm/drop_caches` before the run; warm = right after a "
            "find; tools interleaved within each round)",
            "",
            f"Volume: {describe(bench.meta)}; mounted read-only from a read-only loop device "
            f"(direct I/O); {bench.entries:,} entries.",
            "",
            tab,
            "",
            "The increment row is a whole `backup_increment` of the unchanged volume: device "
            "scan, previous manifest decoded, scan (median of its own timing: "
            f"{inner['cold']:.2f} s cold, {inner['warm']:.2f} s warm), comparison, new manifest "
            "encoded and written durably. Of the rest, the file manifest's codec "
            f"(`core/repo/filemanifest.py`, {codec.get('size', 0) / 1e6:.1f} MB for these "
            f"entries) takes {codec.get('decode', 0):.2f} s to decode and "
            f"{codec.get('encode', 0):.2f} s to encode, warm. CPU s: user + system of the "
            "process (find: of the child).",
            "",
            bench.setup_line,
            "",
            "Target:",
            "",
            tgt,
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="rounds; the table shows medians (5)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached volume")
    ap.add_argument("--keep", action="store_true", help="keep the run's repository")
    ap.add_argument("--write-results", action="store_true", help="write the section")
    ap.add_argument("--results-file", type=Path, default=BENCH_DIR / "RESULTS.md")
    ap.add_argument("--dir", type=Path, default=volume.CACHE_DIR, help="cache directory")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (loop devices, mount, drop_caches)", file=sys.stderr)
        return 2
    command = shlex.join(
        [".venv/bin/python", "bench/scan_bench.py", *(sys.argv[1:] if argv is None else argv)]
    )
    volume.install_signal_handlers()
    bench = ScanBench(args)
    with volume.lock(args.dir):
        try:
            bench.run()
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
        finally:
            bench.close()
    body = report(bench, command)
    print("\n" + body)
    _, verdicts = targets(bench.rows)
    if args.write_results:
        volume.write_section(args.results_file, SECTION, body)
        print(f"results written to {args.results_file}")
    return 0 if all(v == "PASS" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
