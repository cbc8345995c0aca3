"""Helpers for image tests: file trees to compare, device digests, fsck."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path


def tree_digest(root: Path) -> dict[str, tuple[str, int, str]]:
    """Return relative path → (kind, mode, sha256 or link target) for everything under root."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "lost+found"]
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", st.st_mode, os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, "")
            else:
                out[rel] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def device_digest(path: str, size: int | None = None) -> str:
    """Return the sha256 of a device's (or file's) first ``size`` bytes (all by default)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size if size is not None else os.lseek(f.fileno(), 0, os.SEEK_END)
        f.seek(0)
        while left > 0:
            block = f.read(min(left, 4 << 20))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def fsck_clean(device: str) -> tuple[bool, str]:
    """Replay the journal as a mount would, then run ``e2fsck -fn``; return (clean, output).

    An image of a mounted ext4 (dynamic, or the source of a snapshot) may hold the last
    committed metadata only in its journal: ``os.sync()`` commits the journal, and ext4
    writes the blocks home later. ``e2fsck -n`` alone skips the replay and reports the
    home blocks as damage that the first mount would never see.
    """
    subprocess.run(["e2fsck", "-y", "-E", "journal_only", device], capture_output=True,
                   check=False)
    p = subprocess.run(["e2fsck", "-fn", device], capture_output=True, text=True, check=False)
    return p.returncode == 0, p.stdout + p.stderr


def populate(root: Path, seed: int = 7) -> None:
    """Write a mixed tree: random and text files, a big file, a symlink, a hard link, modes."""
    import random

    rng = random.Random(seed)
    (root / "docs").mkdir()
    (root / "bin").mkdir()
    (root / "empty").mkdir()
    for i in range(30):
        (root / "docs" / f"note{i}.txt").write_text(f"line {i}\n" * rng.randint(1, 2000))
    for i in range(6):
        (root / "bin" / f"blob{i}").write_bytes(rng.randbytes(rng.randint(1, 3 << 20)))
    (root / "big.bin").write_bytes(rng.randbytes(9 << 20))
    (root / "dup1.bin").write_bytes(b"A" * (12 << 20))
    (root / "dup2.bin").write_bytes(b"A" * (12 << 20))
    os.symlink("docs/note1.txt", root / "link")
    os.link(root / "big.bin", root / "big.hardlink")
    os.chmod(root / "bin" / "blob0", 0o751)
    os.sync()


def random_volume(loopkit, size_mib: int = 24):
    """A raw volume of ``size_mib`` MiB: random bytes, then 4 MiB of zeros (one zero chunk)."""
    vol = loopkit.volume(f"{size_mib}M", None)
    with open(vol.device, "r+b") as f:
        f.write(os.urandom((size_mib - 4) << 20))
    return vol
