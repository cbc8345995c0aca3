"""Full backup and restore of the bench volume, encrypted against plain, in one run.

    .venv/bin/python bench/encryption.py [--runs N] [--cipher C] [--rebuild]
                                         [--write-results [--results-file PATH]]

The volume is bench/volume.py's (2 GiB ext4, cached in /var/tmp/blockvault-bench/),
attached read-only with direct I/O. Each round, in an order that alternates between
rounds, times into a fresh repository of each kind: a full static backup
(``backup image DEV --imagetype static --no-agent``), then its restore onto a loop
device of a sparse file (``restore image … --confirm``). Every run starts cold
(``drop_caches``). The encrypted repository is made with ``repo init --encryption
CIPHER`` and its passphrase comes from a file (``BLOCKVAULT_PASSPHRASE_FILE``); the
Argon2id unlock (about 0.15 s) is part of every encrypted command's time. Target:
encrypted wall ÷ plain wall ≤ 1.15 (medians), for backup and for restore. Not part of
the test suite. Needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import volume  # noqa: E402  bench/volume.py: the cached volume, loop devices, the lock

SECTION = "## Encryption at rest"
TARGET = 1.15
BV = str(PROJECT_DIR / ".venv" / "bin" / "blockvault")
KINDS = ("plain", "encrypted")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cipher", default="aes-256-gcm")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--dir", type=Path, default=volume.CACHE_DIR)
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--results-file", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/encryption.py needs root (loop devices, drop_caches)")
    volume.install_signal_handlers()
    res = volume.Resources()
    work = args.dir / "encryption-run"
    times: dict[tuple[str, str], list[float]] = {
        (k, op): [] for k in KINDS for op in ("backup", "restore")
    }
    with volume.lock(args.dir):
        try:
            image, _raw, meta = volume.ensure(args.dir, rebuild=args.rebuild, res=res)
            print(volume.describe(meta))
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            dev, target, env = volume.round_trip_devices(image, work, res)
            (work / "pw").write_text("bench passphrase\n")
            env["BLOCKVAULT_PASSPHRASE_FILE"] = str(work / "pw")
            for rnd in range(args.runs):
                for kind in KINDS if rnd % 2 == 0 else tuple(reversed(KINDS)):
                    repo = work / f"repo-{kind}"
                    shutil.rmtree(repo, ignore_errors=True)
                    init = [BV, "repo", "init", "--repo", str(repo)]
                    if kind == "encrypted":
                        init += ["--encryption", args.cipher]
                    subprocess.run(init, env=env, check=True, capture_output=True)
                    common = ["--repo", str(repo), "--no-agent"]
                    backup = [BV, "backup", "image", dev, "--imagetype", "static", *common]
                    restore = [BV, "restore", "image", dev, target, "--confirm", target, *common]
                    times[(kind, "backup")].append(volume.timed_command(backup, env))
                    times[(kind, "restore")].append(volume.timed_command(restore, env))
                    print(
                        f"round {rnd + 1} {kind}: backup {times[(kind, 'backup')][-1]:.2f} s, "
                        f"restore {times[(kind, 'restore')][-1]:.2f} s",
                        flush=True,
                    )
        finally:
            res.close()
            shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"Command: `.venv/bin/python bench/encryption.py --runs {args.runs} "
        f"--cipher {args.cipher}` (medians of {args.runs}; cold cache before every run; "
        "alternating order)",
        "",
        f"| op | plain wall s | {args.cipher} wall s | encrypted ÷ plain | target ≤ {TARGET} |",
        "| --- | --- | --- | --- | --- |",
    ]
    ok = True
    for op in ("backup", "restore"):
        plain = statistics.median(times[("plain", op)])
        sealed = statistics.median(times[("encrypted", op)])
        ratio = sealed / plain
        ok &= ratio <= TARGET
        lines.append(
            f"| full {op} | {plain:.2f} | {sealed:.2f} | {ratio:.2f} | "
            f"{'PASS' if ratio <= TARGET else 'FAIL'} |"
        )
    body = "\n".join(lines) + "\n"
    print(body)
    if args.write_results:
        volume.write_section(
            args.results_file, f"{SECTION} ({time.strftime('%Y-%m-%d')})", body
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
