"""The benchmark volume of shared/PERFORMANCE-NOTES.md, built once and cached.

Recipe (the notes'): a 2 GiB sparse file → ``mkfs.ext4`` → loop device
(``--direct-io=on``), mounted, filled with

- 10 × 50 MiB random, one AES-256-CTR key per file (``openssl enc``; with one key
  and counter offsets the files would be one stream shifted by 16 bytes, which
  content-defined chunkers deduplicate),
- 6 × 50 MiB generated logs + 2 × 50 MiB CSV (text, compressible),
- one 25 MiB random blob, 4 copies of it in all,
- 20,000 text files of 1–8 KiB,

then one random file, one log and every 5th small file are deleted (their freed
blocks keep the old data: the file system is mounted ``nodiscard``), unmounted
and detached. Everything is derived from a fixed seed, so a rebuild gives the
same files (the ext4 block placement can differ slightly between builds).

The image is cached in ``/var/tmp/blockvault-bench/`` with a ``volume.json``
beside it (used bytes, zero chunks); ``--rebuild`` makes it anew. Run directly::

    .venv/bin/python bench/volume.py [--rebuild]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CACHE_DIR = Path("/var/tmp/blockvault-bench")
IMAGE_NAME = "volume.img"
RAWCOPY_NAME = "volume-rawcopy.img"
META_NAME = "volume.json"

RECIPE_VERSION = 1
"""Bump when the recipe changes, so cached images are rebuilt."""

SEED = 20261125
MIB = 1 << 20
VOLUME_SIZE = 2 << 30
CHUNK = 4 * MIB
RANDOM_FILES = 10
LOG_FILES = 6
CSV_FILES = 2
BIG_FILE_SIZE = 50 * MIB
BLOB_SIZE = 25 * MIB
BLOB_COPIES = 4
SMALL_FILES = 20_000
SMALL_DIRS = 100
SMALL_MIN, SMALL_MAX = 1024, 8192

os.environ["PATH"] = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"


# --------------------------------------------------------------------------- loop devices


def round_trip_devices(
    image: Path, work: Path, res: Resources
) -> tuple[str, str, dict[str, str]]:
    """Attach ``image`` read-only and a sparse target of its size; return them and the env.

    The environment gives blockvault an fstab of its own that names the source (not
    mounted) and an agent socket nobody listens on, so every command runs here.
    """
    dev = res.attach(image, read_only=True)
    mount_point = work / "volume-mount-point"
    mount_point.mkdir()
    (work / "fstab").write_text(f"{dev} {mount_point} ext4 ro,noauto 0 0\n")
    target_file = work / "target.img"
    with open(target_file, "wb") as f:
        f.truncate(VOLUME_SIZE)
    target = res.attach(target_file, read_only=False)
    env = {
        **os.environ,
        "BLOCKVAULT_FSTAB": str(work / "fstab"),
        "BLOCKVAULT_AGENT_SOCKET": str(work / "no-agent.sock"),
    }
    return dev, target, env


def drop_caches() -> None:
    """Write back and drop the page cache: the next run reads cold."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed_command(argv: list[str], env: dict[str, str]) -> float:
    """Return the wall seconds of ``argv`` run from a cold cache (exit 0 or 8, else stop)."""
    drop_caches()
    start = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if done.returncode not in (0, 8):
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return wall


def run(*cmd: str, **kw) -> str:
    """Run ``cmd``; return stdout; raise with stderr on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


class Resources:
    """Loop devices and mounts this process made; :meth:`close` undoes all of them.

    Only what was recorded here is ever unmounted or detached: device names are the
    ones ``losetup --find --show`` returned to us.
    """

    def __init__(self) -> None:
        self.loops: list[str] = []
        self.mounts: list[Path] = []

    def attach(self, image: Path, *, read_only: bool) -> str:
        """Attach ``image`` to a free loop device with direct I/O; return the device."""
        cmd = ["losetup", "--find", "--show", "--direct-io=on"]
        if read_only:
            cmd.append("--read-only")
        dev = run(*cmd, str(image)).strip()
        if not dev.startswith("/dev/loop"):
            raise RuntimeError(f"losetup returned {dev!r}")
        self.loops.append(dev)
        return dev

    def detach(self, dev: str) -> None:
        """Detach a device this object attached (retrying while it is briefly busy)."""
        if dev not in self.loops:
            raise ValueError(f"{dev} was not attached by the bench")
        for attempt in range(10):
            p = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True)
            if p.returncode == 0:
                break
            if "No such device" in p.stderr:
                break
            time.sleep(0.2 * (attempt + 1))
        else:
            print(f"warning: could not detach {dev}: {p.stderr.strip()}", file=sys.stderr)
            return
        self.loops.remove(dev)

    def mount(self, dev: str, where: Path, options: str) -> None:
        """Mount ``dev`` on ``where`` (created if missing)."""
        where.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "ext4", "-o", options, dev, str(where))
        self.mounts.append(where)

    def umount(self, where: Path) -> None:
        """Unmount a mount this object made."""
        for attempt in range(10):
            p = subprocess.run(["umount", str(where)], capture_output=True, text=True)
            if p.returncode == 0 or "not mounted" in p.stderr:
                break
            time.sleep(0.2 * (attempt + 1))
        else:
            print(f"warning: could not unmount {where}: {p.stderr.strip()}", file=sys.stderr)
            return
        self.mounts.remove(where)

    def close(self) -> None:
        """Unmount and detach everything recorded, newest first."""
        for where in reversed(list(self.mounts)):
            self.umount(where)
        for dev in reversed(list(self.loops)):
            self.detach(dev)


def dio_state(dev: str) -> str:
    """Return the loop device's direct-I/O flag as the kernel reports it ('1'/'0'/'?')."""
    try:
        return Path(f"/sys/block/{Path(dev).name}/loop/dio").read_text().strip()
    except OSError:
        return "?"


def stale_loops(under: Path) -> list[tuple[str, str]]:
    """Return (device, backing file) of attached loop devices whose file is under ``under``."""
    out = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = []
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(str(under) + "/"):
            found.append((parts[0], parts[1].strip()))
    return found


# --------------------------------------------------------------------------- content


def _ts(us: int) -> str:
    s, us = divmod(us, 1_000_000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"2026-11-{1 + d % 28:02d}T{h:02d}:{m:02d}:{s:02d}.{us:06d}Z"


_PATHS = (
    "/api/v1/items",
    "/api/v1/orders",
    "/api/v2/search",
    "/static/app.js",
    "/login",
    "/api/v1/users",
    "/healthz",
    "/metrics",
    "/api/v2/cart",
    "/img/thumb",
)
_UAS = (
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    "curl/7.88.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0",
    "python-httpx/0.27.0",
    "Go-http-client/1.1",
    "Prometheus/2.45.0",
)
_MSGS = (
    "request completed",
    "cache miss",
    "upstream slow",
    "retrying connection",
    "session refreshed",
    "payload validated",
    "queue depth high",
    "token expired",
)
_LEVELS = ("INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR")
_COUNTRIES = ("DE", "FR", "US", "GB", "NL", "SE", "PL", "IT", "ES", "JP", "BR", "IN")
_STATES = ("new", "paid", "shipped", "shipped", "delivered", "delivered", "returned")


def log_text(rng: random.Random, nbytes: int, host: str) -> bytes:
    """Return ``nbytes`` of web-service log lines (zstd -1 ratio about 3.4)."""
    out: list[str] = []
    size = 0
    us = rng.randrange(10**11)
    r, rr, gb, ch = rng.random, rng.randrange, rng.getrandbits, rng.choice
    while size < nbytes:
        us += rr(200_000)
        line = (
            f"{_ts(us)} {host} {ch(('api', 'web', 'worker'))}[{rr(1000, 40000)}]: "
            f"{ch(_LEVELS)} 10.{rr(4)}.{rr(256)}.{rr(256)} "
            f'"{ch(("GET", "GET", "POST", "PUT"))} {ch(_PATHS)}/{rr(100000)} HTTP/1.1" '
            f"{ch((200, 200, 200, 200, 304, 404, 500))} {rr(50000)} {r() * 100:.3f}ms "
            f'"{ch(_UAS)}" {ch(_MSGS)} req={gb(64):016x} span={gb(32):08x} '
            f"user={rr(10**7)} sess={gb(80):020x}\n"
        )
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:nbytes]


def csv_text(rng: random.Random, nbytes: int) -> bytes:
    """Return ``nbytes`` of order-table CSV."""
    out = ["order_id,created,customer,country,sku,quantity,unit_price,total,state,note\n"]
    size = len(out[0])
    us = rng.randrange(10**11)
    oid = rng.randrange(10**6)
    rr, gb, ch, r = rng.randrange, rng.getrandbits, rng.choice, rng.random
    while size < nbytes:
        us += rr(5_000_000)
        oid += 1 + rr(3)
        qty = 1 + rr(12)
        price = r() * 300
        line = (
            f"{oid},{_ts(us)},cust-{gb(40):010x},{ch(_COUNTRIES)},SKU-{rr(20000):05d},"
            f"{qty},{price:.2f},{qty * price:.2f},{ch(_STATES)},{ch(_MSGS)} {gb(24):06x}\n"
        )
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:nbytes]


def make_vocabulary(rng: random.Random, n: int = 3000) -> list[str]:
    """Return ``n`` pronounceable pseudo-words for the small text files."""
    cons, vow = "bcdfghklmnprstvwz", "aeiou"
    words = []
    for _ in range(n):
        syl = 1 + rng.randrange(4)
        words.append("".join(rng.choice(cons) + rng.choice(vow) for _ in range(syl)))
    return words


def small_text(rng: random.Random, nbytes: int, vocab: list[str]) -> bytes:
    """Return ``nbytes`` of config-like text (``key = words … number`` lines)."""
    out: list[str] = []
    size = 0
    while size < nbytes:
        words = rng.choices(vocab, k=2 + rng.randrange(10))
        line = f"{words[0]}.{words[1]} = {' '.join(words[2:])} {rng.randrange(10**6)}\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:nbytes]


def _key(label: str) -> tuple[str, str]:
    digest = hashlib.sha256(f"{SEED}:{label}".encode()).hexdigest()
    return digest, digest[:32]  # 256-bit key, 128-bit IV


def write_random(path: Path, size: int, label: str) -> str:
    """Write ``size`` bytes of AES-256-CTR keystream (a key of its own per ``label``).

    Returns the source used: ``openssl aes-256-ctr`` or ``os.urandom`` (no openssl).
    """
    openssl = shutil.which("openssl")
    if openssl:
        key, iv = _key(label)
        with open(path, "wb") as out:
            head = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
            enc = subprocess.run(
                [openssl, "enc", "-aes-256-ctr", "-nosalt", "-K", key, "-iv", iv],
                stdin=head.stdout,
                stdout=out,
                check=False,
            )
            head.stdout.close()
            head.wait()
        if enc.returncode != 0 or path.stat().st_size != size:
            raise RuntimeError(f"openssl enc failed for {path}")
        return "openssl enc -aes-256-ctr (one key per file)"
    with open(path, "wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))
    return "os.urandom (openssl missing)"


# --------------------------------------------------------------------------- build


def fill(root: Path) -> dict:
    """Fill the mounted file system at ``root`` and do the deletes; return what was done."""
    rng = random.Random(SEED)
    t0 = time.monotonic()
    (root / "random").mkdir()
    source = ""
    for i in range(RANDOM_FILES):
        source = write_random(root / "random" / f"random-{i:02d}.bin", BIG_FILE_SIZE, f"r{i}")
    (root / "logs").mkdir()
    for i in range(LOG_FILES):
        data = log_text(random.Random(SEED * 100 + i), BIG_FILE_SIZE, f"host-{i:02d}")
        (root / "logs" / f"app-{i}.log").write_bytes(data)
    for i in range(CSV_FILES):
        data = csv_text(random.Random(SEED * 200 + i), BIG_FILE_SIZE)
        (root / "logs" / f"orders-{i}.csv").write_bytes(data)
    (root / "blob").mkdir()
    write_random(root / "blob" / "blob-0.bin", BLOB_SIZE, "blob")
    for i in range(1, BLOB_COPIES):
        shutil.copyfile(root / "blob" / "blob-0.bin", root / "blob" / f"blob-{i}.bin")
    vocab = make_vocabulary(rng)
    small: list[Path] = []
    text_rng = random.Random(SEED * 300)
    for d in range(SMALL_DIRS):
        (root / "small" / f"d{d:03d}").mkdir(parents=True)
    for i in range(SMALL_FILES):
        p = root / "small" / f"d{i % SMALL_DIRS:03d}" / f"f{i:05d}.conf"
        p.write_bytes(small_text(text_rng, text_rng.randint(SMALL_MIN, SMALL_MAX), vocab))
        small.append(p)
    os.sync()
    used_before = used_bytes(root)
    # The deletes: the freed blocks keep their old data (mounted nodiscard).
    victim_random = root / "random" / f"random-{rng.randrange(RANDOM_FILES):02d}.bin"
    victim_log = root / "logs" / f"app-{rng.randrange(LOG_FILES)}.log"
    victim_random.unlink()
    victim_log.unlink()
    deleted_small = 0
    for i in range(4, SMALL_FILES, 5):
        small[i].unlink()
        deleted_small += 1
    os.sync()
    return {
        "random_source": source,
        "deleted": [
            str(victim_random.relative_to(root)),
            str(victim_log.relative_to(root)),
            f"{deleted_small} small files (every 5th)",
        ],
        "used_before_deletes": used_before,
        "fill_seconds": round(time.monotonic() - t0, 1),
    }


def used_bytes(root: Path) -> int:
    """Return the file system's used bytes as df counts them."""
    st = os.statvfs(root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def df_used_percent(root: Path) -> float:
    """Return df's Use% (used / (used + available to users))."""
    st = os.statvfs(root)
    used = st.f_blocks - st.f_bfree
    return 100.0 * used / (used + st.f_bavail)


def zero_chunks(path: Path | str, chunk: int = CHUNK) -> tuple[int, int]:
    """Return (all-zero chunks, chunks) of ``path`` read in ``chunk``-byte pieces."""
    zero = bytes(chunk)
    zeros = total = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while True:
            n = f.readinto(view)
            if not n:
                break
            total += 1
            if view[:n] == zero[:n]:
                zeros += 1
    return zeros, total


def build(cache_dir: Path, res: Resources) -> dict:
    """Build the image into ``cache_dir`` (atomically: a temp name, renamed at the end)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp_image = cache_dir / (IMAGE_NAME + ".building")
    tmp_image.unlink(missing_ok=True)
    with open(tmp_image, "wb") as f:
        f.truncate(VOLUME_SIZE)
    run("mkfs.ext4", "-q", "-F", "-L", "bvbench", str(tmp_image))
    dev = res.attach(tmp_image, read_only=False)
    dio = dio_state(dev)
    mnt = Path(tempfile.mkdtemp(prefix="build-mnt-", dir=cache_dir))
    try:
        res.mount(dev, mnt, "rw,nodiscard")
        info = fill(mnt)
        info["used_bytes"] = used_bytes(mnt)
        info["used_percent"] = round(df_used_percent(mnt), 1)
        res.umount(mnt)
    finally:
        if mnt in res.mounts:
            res.umount(mnt)
        with contextlib.suppress(OSError):
            mnt.rmdir()
        res.detach(dev)
    zeros, total = zero_chunks(tmp_image)
    info.update(
        {
            "recipe_version": RECIPE_VERSION,
            "seed": SEED,
            "size": VOLUME_SIZE,
            "zero_chunks": zeros,
            "chunks": total,
            "build_loop_dio": dio,
            "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "mkfs": _mkfs_version(),
        }
    )
    os.replace(tmp_image, cache_dir / IMAGE_NAME)
    # The restore peer reads a plain copy of the image file (cp keeps its holes).
    raw_tmp = cache_dir / (RAWCOPY_NAME + ".building")
    run("cp", str(cache_dir / IMAGE_NAME), str(raw_tmp))
    os.replace(raw_tmp, cache_dir / RAWCOPY_NAME)
    (cache_dir / META_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _mkfs_version() -> str:
    p = subprocess.run(["mkfs.ext4", "-V"], capture_output=True, text=True)
    return (p.stdout + p.stderr).strip().splitlines()[0]


def ensure(
    cache_dir: Path = CACHE_DIR, *, rebuild: bool = False, res: Resources | None = None
) -> tuple[Path, Path, dict]:
    """Return (image, raw copy, metadata), building the image when missing or asked to."""
    image, raw, meta_path = cache_dir / IMAGE_NAME, cache_dir / RAWCOPY_NAME, cache_dir / META_NAME
    meta: dict = {}
    if meta_path.exists():
        with contextlib.suppress(ValueError):
            meta = json.loads(meta_path.read_text())
    fresh = (
        image.exists()
        and raw.exists()
        and meta.get("recipe_version") == RECIPE_VERSION
        and image.stat().st_size == VOLUME_SIZE
    )
    if rebuild or not fresh:
        why = "--rebuild" if rebuild else "no cached image (or an old recipe)"
        print(
            f"building the benchmark volume in {cache_dir} ({why}); this takes a minute or two",
            flush=True,
        )
        own = res is None
        res = res or Resources()
        try:
            meta = build(cache_dir, res)
        finally:
            if own:
                res.close()
    return image, raw, meta


def describe(meta: dict) -> str:
    """Return the sanity-check line compared against the notes (55% used, 221 of 512)."""
    used = meta.get("used_bytes", 0)
    return (
        f"volume: {meta.get('used_percent', '?')}% used ({used / MIB:.0f} MiB) after the deletes; "
        f"{meta.get('zero_chunks', '?')} of {meta.get('chunks', '?')} 4 MiB chunks all zero; "
        f"random data: {meta.get('random_source', '?')} "
        f"[notes: 55% (999 MiB); 221 of 512]"
    )


@contextlib.contextmanager
def lock(cache_dir: Path = CACHE_DIR) -> Iterator[None]:
    """Hold an exclusive lock so two bench processes never share the cache directory."""
    import fcntl

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another bench run holds {cache_dir}/lock") from None
        yield


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit, so every ``finally`` undoes its state."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)
    # Ctrl-C → KeyboardInterrupt even when started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rebuild", action="store_true", help="build the image even if cached")
    ap.add_argument("--dir", type=Path, default=CACHE_DIR, help=f"cache directory ({CACHE_DIR})")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (loop devices, mkfs, mount)", file=sys.stderr)
        return 2
    install_signal_handlers()
    res = Resources()
    with lock(args.dir):
        try:
            image, raw, meta = ensure(args.dir, rebuild=args.rebuild, res=res)
        finally:
            res.close()
    print(f"image: {image}\nraw copy: {raw}")
    print(describe(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())


RESULTS_HEADER = "# blockvault benchmark results\n"


def ratio_table(
    times: dict[tuple[str, str], list[float]], kind: str, label: str, targets: dict[str, float]
) -> tuple[list[str], bool]:
    """Return the markdown rows of median ``kind`` ÷ median local per op, and whether all
    met their target (``times`` is keyed by ``(kind, op)``, the local side by "local")."""
    lines = [
        f"| op | local dir wall s | {label} wall s | {label} ÷ local | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    ok = True
    for op, target in targets.items():
        local = statistics.median(times[("local", op)])
        other = statistics.median(times[(kind, op)])
        ratio = other / local
        ok &= ratio <= target
        lines.append(f"| {op} | {local:.2f} | {other:.2f} | {ratio:.2f} | ≤ {target} "
                     f"{'PASS' if ratio <= target else 'FAIL'} |")
    return lines, ok


def write_section(path: Path, heading: str, body: str, *, header: str = RESULTS_HEADER) -> None:
    """Put ``body`` under ``heading`` in ``path``: replace that section, else append it.

    The file is read right before it is written: every bench keeps sections of its own
    there. ``header`` starts a file that does not exist yet.
    """
    text = path.read_text() if path.exists() else header
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
