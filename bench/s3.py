"""Backups into S3 (a real Ceph RGW on 127.0.0.1) against a local directory, same run.

    .venv/bin/python bench/s3.py [--runs N] [--rebuild]
                                 [--write-results [--results-file PATH]]

The volume is bench/volume.py's (2 GiB ext4, cached in /var/tmp/blockvault-bench/),
attached read-only. A single-node Ceph (mon, bluestore OSD, RADOS Gateway) is started
for the run with tests/ceph-rgw.sh and stopped on every way out. Each round, in an
order that alternates between rounds, times for each kind — a fresh local directory
and a fresh bucket — a full static backup and a restore onto a loop device of a
sparse file, cold cache before each. Both repositories are plain (``--encryption
none``); RGW shares this machine's two cores with the client. The requests the
client sent to the bucket are counted (botocore's own event hook, every retry
included) and printed per GiB of the volume's used data.

Then, once: a fresh ext4 volume of ``--small-files`` files (default 200,000; 1 to 4 KiB
of text each) gets a full image and then an increment into a bucket, and the objects
the increment wrote (PUTs) and its requests are printed: small files go into packs, so
the count is a few hundred at most, not one per file.

Target (medians): full backup and restore within 1.5× of the directory. Not part of
the test suite. Needs root and the Ceph daemons (tests/ceph-rgw.sh install).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import volume  # noqa: E402  bench/volume.py: the cached volume, loop devices, the lock

SECTION = "## Into S3 (a Ceph RGW on 127.0.0.1)"
TARGETS = {"full backup": 1.5, "restore": 1.5}
BV = str(PROJECT_DIR / ".venv" / "bin" / "blockvault")
PYTHON = str(PROJECT_DIR / ".venv" / "bin" / "python")
SCRIPT = PROJECT_DIR / "tests" / "ceph-rgw.sh"
KINDS = ("local", "s3")
COUNTED = """
import atexit, json, sys
import core.repo.s3 as s3
stores = []
init = s3.S3Store.__init__
def counted(self, *a, **kw):
    init(self, *a, **kw)
    stores.append(self)
s3.S3Store.__init__ = counted
def report():
    total = {}
    for store in stores:
        for op, n in store.requests.items():
            total[op] = total.get(op, 0) + n
    sys.stderr.write("REQUESTS " + json.dumps(total) + "\\n")
atexit.register(report)
from tui.cli import main
sys.argv = ["blockvault", *sys.argv[1:]]
raise SystemExit(main())
"""


def counted_command(argv: list[str], env: dict[str, str]) -> dict[str, int]:
    """Run ``blockvault ARGV`` once more, untimed, and return the requests it sent by kind."""
    volume.drop_caches()
    done = subprocess.run([PYTHON, "-c", COUNTED, *argv], env=env, cwd=PROJECT_DIR,
                          capture_output=True, text=True, check=False)
    if done.returncode not in (0, 8):
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    line = [x for x in done.stderr.splitlines() if x.startswith("REQUESTS ")][-1]
    return dict(json.loads(line.removeprefix("REQUESTS ")))


def start_gateway(work: Path) -> dict[str, str]:
    directory = work / "rgw"
    out = volume.run("bash", str(SCRIPT), "start",
                     env={**os.environ, "CEPH_S3_DIR": str(directory)})
    env: dict[str, str] = {}
    for line in out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name.startswith("AWS_"):
            env[name] = shlex.split(value)[0]
    return env


def stop_gateway(work: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop"],
                   env={**os.environ, "CEPH_S3_DIR": str(work / "rgw")},
                   capture_output=True, check=False)


def small_files_increment(
    work: Path, res: volume.Resources, env: dict[str, str], count: int
) -> dict[str, dict[str, int]]:
    """Return the requests of a full image and then an increment of ``count`` small files."""
    import random

    image = work / "small-files.img"
    with open(image, "wb") as f:
        f.truncate(max(1 << 30, count * 12 << 10))
    dev = res.attach(image, read_only=False)
    volume.run("mkfs.ext4", "-q", "-F", "-N", str(count + 1000), dev)
    mp = work / "small-files"
    res.mount(dev, mp, "rw")
    rng = random.Random(7)
    vocab = volume.make_vocabulary(rng)
    started = time.monotonic()
    for i in range(count):
        where = mp / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            where.mkdir()
        (where / f"f{i:06d}.txt").write_bytes(volume.small_text(rng, rng.randint(1024, 4096),
                                                                vocab))
    os.sync()
    print(f"{count} small files written in {time.monotonic() - started:.0f} s", flush=True)
    location = f"s3://bench-small-{int(time.time())}/repo"
    subprocess.run([BV, "repo", "init", "--repo", location, "--encryption", "none"], env=env,
                   check=True, capture_output=True)
    common = ["--repo", location, "--no-agent"]
    out = {"small files: full image": counted_command(["backup", "image", str(mp),
                                                        "--imagetype", "static", *common], env)}
    started = time.monotonic()
    out[f"small files: increment of {count}"] = counted_command(
        ["backup", "image", str(mp), "--mode", "incremental", *common], env
    )
    print(f"increment of {count} small files: {time.monotonic() - started:.0f} s, "
          f"{out[f'small files: increment of {count}'].get('PutObject', 0)} objects written",
          flush=True)
    res.umount(mp)
    res.detach(dev)
    image.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--dir", type=Path, default=volume.CACHE_DIR)
    ap.add_argument("--small-files", type=int, default=200_000)
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--results-file", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/s3.py needs root (loop devices, drop_caches, the Ceph daemons)")
    if shutil.which("radosgw") is None:
        raise SystemExit("bench/s3.py needs Ceph's daemons: run 'bash tests/ceph-rgw.sh install'")
    volume.install_signal_handlers()
    res = volume.Resources()
    work = args.dir / "s3-run"
    ops = tuple(TARGETS)
    times: dict[tuple[str, str], list[float]] = {(k, op): [] for k in KINDS for op in ops}
    counts: dict[str, dict[str, int]] = {}
    with volume.lock(args.dir):
        try:
            image, _raw, meta = volume.ensure(args.dir, rebuild=args.rebuild, res=res)
            print(volume.describe(meta))
            stop_gateway(work)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            dev, target, env = volume.round_trip_devices(image, work, res)
            env["BLOCKVAULT_STATE_DIR"] = str(work / "client-state")
            s3_env = {**env, **start_gateway(work)}
            for rnd in range(args.runs):
                for kind in KINDS if rnd % 2 == 0 else tuple(reversed(KINDS)):
                    run_env = s3_env if kind == "s3" else env
                    location = (f"s3://bench-{rnd}-{int(time.time())}/repo" if kind == "s3"
                                else str(work / f"local-{rnd}" / "repo"))
                    subprocess.run([BV, "repo", "init", "--repo", location, "--encryption",
                                    "none"], env=run_env, check=True, capture_output=True)
                    common = ["--repo", location, "--no-agent"]
                    backup = ["backup", "image", dev, "--imagetype", "static", *common]
                    restore = ["restore", "image", dev, target, "--confirm", target, *common]
                    for op, cli in (("full backup", backup), ("restore", restore)):
                        times[(kind, op)].append(volume.timed_command([BV, *cli], run_env))
                    print(f"round {rnd + 1} {kind}: " + ", ".join(
                        f"{op} {times[(kind, op)][-1]:.2f} s" for op in ops), flush=True)
                    if kind == "s3" and rnd == 0:
                        fresh = location.replace("/repo", "/counted")
                        subprocess.run([BV, "repo", "init", "--repo", fresh, "--encryption",
                                        "none"], env=run_env, check=True, capture_output=True)
                        counted = [a if a != location else fresh for a in backup]
                        counts["full backup"] = counted_command(counted, run_env)
                        counts["unchanged re-backup"] = counted_command(counted, run_env)
                        counted = [a if a != location else fresh for a in restore]
                        counts["restore"] = counted_command(counted, run_env)
                    if kind == "local":
                        shutil.rmtree(work / f"local-{rnd}", ignore_errors=True)
            if args.small_files:
                counts.update(small_files_increment(work, res, s3_env, args.small_files))
        finally:
            stop_gateway(work)
            res.close()
            shutil.rmtree(work, ignore_errors=True)
    used_gib = meta["used_bytes"] / (1 << 30) if "used_bytes" in meta else 1.0
    lines = [
        f"Command: `.venv/bin/python bench/s3.py --runs {args.runs}` (medians of {args.runs}; "
        "cold cache before every run; alternating order; a single-node Ceph RGW on 127.0.0.1 "
        "shares the two cores with the client)",
        "",
    ]
    table, ok = volume.ratio_table(times, "s3", "S3", TARGETS)
    lines += table
    lines += ["", f"Requests the client sent to the bucket ({used_gib:.2f} GiB of used data):", "",
              "| op | requests | per GiB | objects written | by kind |",
              "| --- | --- | --- | --- | --- |"]
    for op, by_kind in counts.items():
        total = sum(by_kind.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items()))
        per_gib = "" if op.startswith("small files") else f"{total / used_gib:.0f}"
        lines.append(f"| {op} | {total} | {per_gib} | {by_kind.get('PutObject', 0)} | {kinds} |")
    body = "\n".join(lines) + "\n"
    print(body)
    if args.write_results:
        volume.write_section(args.results_file, f"{SECTION} ({time.strftime('%Y-%m-%d')})", body)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
