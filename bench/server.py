"""Backups through the repository server (TLS on 127.0.0.1) against a local directory, one run.

    .venv/bin/python bench/server.py [--runs N] [--rebuild]
                                     [--write-results [--results-file PATH]]

The volume is bench/volume.py's (2 GiB ext4, cached in /var/tmp/blockvault-bench/),
attached read-only. Each round, in an order that alternates between rounds, times
for each kind — a fresh local directory, and a fresh datastore behind a real
``blockvault serve`` on 127.0.0.1 with its self-signed certificate, pinned — a full
static backup, an unchanged re-backup and a restore onto a loop device of a sparse
file. Both repositories are plain (``--encryption none``), so the ratio is the cost of
the server alone; the server shares this machine's two cores with the client. Every
run starts cold (``drop_caches``).

Then four nodes back up the volume at once through one server, and the server's
peak RSS (its process tree, sampled every 50 ms) is recorded.

Targets (medians): full backup ≤ 1.25× local, unchanged re-backup ≤ 1.5×, restore
≤ 1.25×; the server's RSS under 300 MiB with four clients. Not part of the test
suite. Needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import volume  # noqa: E402  bench/volume.py: the cached volume, loop devices, the lock

SECTION = "## Through the repository server"
TARGETS = {"full backup": 1.25, "unchanged re-backup": 1.5, "restore": 1.25}
RSS_TARGET = 300 << 20
BV = str(PROJECT_DIR / ".venv" / "bin" / "blockvault")
KINDS = ("local", "server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A ``blockvault serve`` of this bench, stopped on every exit path by its owner."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.store = work / "store"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log = open(work / "server.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [BV, "serve", "--store", str(self.store), "--listen", f"127.0.0.1:{self.port}",
             "--state", str(work / "state")],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("fingerprint "):
            self.stop()
            raise SystemExit(f"the server did not start: {(work / 'server.log').read_text()}")
        self.fingerprint = line.split()[1]

    def node_env(self, name: str, env: dict[str, str]) -> dict[str, str]:
        token = self.work / f"{name}.token"
        if not token.exists():
            subprocess.run([BV, "serve", "node", "add", name, "--store", str(self.store),
                            "--token-file", str(token)], check=True, capture_output=True)
        return {**env, "BLOCKVAULT_NODE": name, "BLOCKVAULT_TOKEN_FILE": str(token),
                "BLOCKVAULT_FINGERPRINT": self.fingerprint}

    def rss(self) -> int:
        try:
            p = psutil.Process(self.proc.pid)
            return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
        except psutil.NoSuchProcess:
            return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()


def four_clients(server: Server, dev: str, env: dict[str, str]) -> tuple[int, float]:
    """Four nodes back up ``dev`` at once; return the server's peak RSS and the wall time."""
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    volume.drop_caches()
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [BV, "backup", "image", dev, "--imagetype", "static", "--no-agent",
             "--repo", server.url],
            env=server.node_env(f"client{i}", env), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )
        for i in range(4)
    ]
    failures = []
    for p in procs:
        _out, err = p.communicate()
        if p.returncode not in (0, 8):
            failures.append(err.strip())
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    if failures:
        raise SystemExit(f"a concurrent backup failed: {failures[0]}")
    return peak, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--dir", type=Path, default=volume.CACHE_DIR)
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--results-file", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/server.py needs root (loop devices, drop_caches)")
    volume.install_signal_handlers()
    res = volume.Resources()
    work = args.dir / "server-run"
    ops = tuple(TARGETS)
    times: dict[tuple[str, str], list[float]] = {(k, op): [] for k in KINDS for op in ops}
    servers: list[Server] = []
    with volume.lock(args.dir):
        try:
            image, _raw, meta = volume.ensure(args.dir, rebuild=args.rebuild, res=res)
            print(volume.describe(meta))
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            dev, target, env = volume.round_trip_devices(image, work, res)
            env["BLOCKVAULT_STATE_DIR"] = str(work / "client-state")
            for rnd in range(args.runs):
                for kind in KINDS if rnd % 2 == 0 else tuple(reversed(KINDS)):
                    there = work / f"{kind}-{rnd}"
                    there.mkdir()
                    run_env = env
                    if kind == "local":
                        location = str(there / "repo")
                    else:
                        server = Server(there, env)
                        servers.append(server)
                        location, run_env = server.url, server.node_env("bench", env)
                    subprocess.run([BV, "repo", "init", "--repo", location, "--encryption",
                                    "none"], env=run_env, check=True, capture_output=True)
                    common = ["--repo", location, "--no-agent"]
                    backup = [BV, "backup", "image", dev, "--imagetype", "static", *common]
                    restore = [BV, "restore", "image", dev, target, "--confirm", target, *common]
                    for op, argv in (("full backup", backup), ("unchanged re-backup", backup),
                                     ("restore", restore)):
                        times[(kind, op)].append(volume.timed_command(argv, run_env))
                    print(f"round {rnd + 1} {kind}: " + ", ".join(
                        f"{op} {times[(kind, op)][-1]:.2f} s" for op in ops), flush=True)
                    if kind == "server":
                        servers.pop().stop()
                    shutil.rmtree(there, ignore_errors=True)
            there = work / "four-clients"
            there.mkdir()
            server = Server(there, env)
            servers.append(server)
            subprocess.run([BV, "repo", "init", "--repo", server.url, "--encryption", "none"],
                           env=server.node_env("client0", env), check=True, capture_output=True)
            peak, wall4 = four_clients(server, dev, env)
            print(f"four clients at once: {wall4:.2f} s, server peak RSS {peak >> 20} MiB")
        finally:
            for server in servers:
                server.stop()
            res.close()
            shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"Command: `.venv/bin/python bench/server.py --runs {args.runs}` (medians of "
        f"{args.runs}; cold cache before every run; alternating order; the server on "
        "127.0.0.1 with TLS shares the two cores with the client)",
        "",
    ]
    table, ok = volume.ratio_table(times, "server", "server", TARGETS)
    lines += table
    ok &= peak < RSS_TARGET
    lines += [
        "",
        f"Four nodes backing up the volume at once through one server: {wall4:.2f} s; the "
        f"server's peak RSS {peak / (1 << 20):.0f} MiB (target < {RSS_TARGET >> 20} MiB: "
        f"{'PASS' if peak < RSS_TARGET else 'FAIL'}).",
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    if args.write_results:
        volume.write_section(args.results_file, f"{SECTION} ({time.strftime('%Y-%m-%d')})", body)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
