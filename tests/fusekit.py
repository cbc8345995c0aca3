"""A file that answers EIO where the test says: the failing disk the machine cannot provide.

No device-mapper here (no dm-error, dm-flakey), so a failing block device is made of
a loop device over ``disk.img`` in this FUSE file system: reads and writes of the
byte ranges in the control file fail with EIO, everything else reaches the backing
file. The FUSE server runs in a child process (``python tests/fusekit.py BACKING
MOUNTPOINT CONTROL``); :func:`failing_file` mounts it and unmounts it on every exit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

NAME = "disk.img"


@contextlib.contextmanager
def failing_file(backing: Path, workdir: Path) -> Iterator[tuple[Path, Path]]:
    """Yield ``(path of the failing file, control file)``; write ``[[start, end], …]`` to fail."""
    mnt = workdir / "fuse-mnt"
    mnt.mkdir()
    control = workdir / "fuse-bad-ranges.json"
    control.write_text("[]")
    proc = subprocess.Popen(
        [sys.executable, __file__, str(backing), str(mnt), str(control)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the FUSE server did not mount: {proc.stderr.read()!r}")
            time.sleep(0.05)
        yield mnt / NAME, control
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        mnt.rmdir()


FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQI12x")
FIEMAP_FLAG_SYNC = 1
FIEMAP_EXTENT_LAST = 1


def physical_ranges(path: Path, count: int = 64) -> list[tuple[int, int]]:
    """Return the byte ranges ``[start, end)`` of the device that hold ``path``'s data.

    FIEMAP (``filefrag``'s ioctl), after flushing the file: where a test makes the disk
    fail so that reading this one file fails.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(_FIEMAP_HEAD.pack(0, 2**64 - 1, FIEMAP_FLAG_SYNC, 0, count, 0))
        buf += bytes(_FIEMAP_EXTENT.size * count)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
    finally:
        os.close(fd)
    mapped = _FIEMAP_HEAD.unpack_from(buf)[3]
    out = []
    for i in range(mapped):
        _, physical, length, _, _, _ = _FIEMAP_EXTENT.unpack_from(
            buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size
        )
        out.append((physical, physical + length))
    return out


def drop_cached(path: Path) -> None:
    """Make the next read of ``path`` reach the device (its clean pages leave the cache)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _serve(backing: str, mnt: str, control: str) -> None:
    from mfusepy import FUSE, FuseOSError, Operations

    def bad(offset: int, size: int) -> bool:
        with open(control) as f:
            ranges = json.load(f)
        return any(offset < end and offset + size > start for start, end in ranges)

    class Failing(Operations):
        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
            if path != "/" + NAME:
                raise FuseOSError(errno.ENOENT)
            size = os.stat(backing).st_size
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": size}

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", NAME]

        def open(self, path: str, flags: int) -> int:
            return os.open(backing, os.O_RDWR)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            if bad(offset, size):
                raise FuseOSError(errno.EIO)
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            if bad(offset, len(data)):
                raise FuseOSError(errno.EIO)
            return os.pwrite(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            raise FuseOSError(errno.EPERM)

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            os.fsync(fh)
            return 0

        def flush(self, path: str, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

    # direct_io: every read and write reaches this server (no page cache in between),
    # so a failing range fails on the first access, as a bad disk does.
    FUSE(Failing(), mnt, foreground=True, direct_io=True, allow_other=True)


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
