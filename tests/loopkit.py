"""The loop-device test kit: sparse images, loop devices, file systems and mounts.

Everything a :class:`LoopKit` creates is undone by :meth:`LoopKit.close`, in
reverse order, on every exit path; the ``loopkit`` fixture calls it. Only
devices and files the kit itself created are ever touched.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REQUIRE_ENV = "BLOCKVAULT_REQUIRE_LOOP"
"""Set to 1 (as ``.ci/run`` does) to turn "no loop devices here" skips into failures."""

MKFS = {
    "ext2": ["mkfs.ext2", "-q", "-F"],
    "ext3": ["mkfs.ext3", "-q", "-F"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "vfat": ["mkfs.vfat"],
}
LABEL_FLAG = {"vfat": "-n"}


def loop_unavailable_reason() -> str | None:
    """Return why loop-device tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (loop devices, mkfs, mount)"
    if shutil.which("losetup") is None:
        return "losetup is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control: the loop driver is not available"
    return None


def run(*cmd: str, input: bytes | None = None) -> str:
    """Run ``cmd``; return stdout; raise with stderr on failure."""
    p = subprocess.run(cmd, input=input, capture_output=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.decode(errors='replace').strip()}"
        )
    return p.stdout.decode(errors="replace")


def parse_size(size: int | str) -> int:
    """Return bytes for ``64M``/``1G``/``4096``."""
    if isinstance(size, int):
        return size
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1].upper()] if size[-1].upper() in units else int(size)


@dataclass
class Volume:
    """A loop device the kit made, its image, and where it is mounted (if it is)."""

    device: str
    image: Path
    fstype: str | None = None
    mount_point: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    """Relative path → sha256 of the content :meth:`LoopKit.fill` wrote."""


class LoopKit:
    """Creates test volumes and undoes them all on :meth:`close`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="bv-", dir=workdir))
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._serial = 0

    def _name(self, stem: str) -> Path:
        self._serial += 1
        return self.workdir / f"{stem}{self._serial}"

    def image(self, size: int | str, name: str | None = None) -> Path:
        """Create a sparse image file of ``size`` and return its path."""
        path = self.workdir / name if name else self._name("img")
        with open(path, "wb") as f:
            f.truncate(parse_size(size))
        return path

    def attach(
        self,
        image: Path,
        offset: int = 0,
        size_limit: int = 0,
        read_only: bool = False,
    ) -> str:
        """Attach ``image`` (optionally a byte range of it) to a free loop device."""
        cmd = ["losetup", "--find", "--show"]
        if offset:
            cmd += ["--offset", str(offset)]
        if size_limit:
            cmd += ["--sizelimit", str(size_limit)]
        if read_only:
            cmd.append("--read-only")
        dev = run(*cmd, str(image)).strip()
        self._undo.append((f"detach {dev}", lambda: _detach(dev)))
        return dev

    def mkfs(self, device: str, fstype: str, label: str | None = None) -> None:
        """Make a ``fstype`` file system on ``device`` (a loop device of this kit)."""
        self._check_ours(device)
        cmd = list(MKFS[fstype])
        if label:
            cmd += [LABEL_FLAG.get(fstype, "-L"), label]
        run(*cmd, device)

    def mount(self, device: str, mount_point: Path | None = None, *options: str) -> Path:
        """Mount ``device`` at ``mount_point`` (a new directory by default)."""
        mp = mount_point or self._name("mnt")
        mp.mkdir(parents=True, exist_ok=True)
        cmd = ["mount"]
        if options:
            cmd += ["-o", ",".join(options)]
        run(*cmd, device, str(mp))
        self._undo.append((f"umount {mp}", lambda: _umount(mp)))
        return mp

    def bind(self, source: Path, mount_point: Path | None = None) -> Path:
        """Bind-mount directory ``source`` at a new directory."""
        mp = mount_point or self._name("bind")
        mp.mkdir(parents=True, exist_ok=True)
        run("mount", "--bind", str(source), str(mp))
        self._undo.append((f"umount {mp}", lambda: _umount(mp)))
        return mp

    def umount(self, mount_point: Path) -> None:
        """Unmount a mount this kit made, ahead of :meth:`close`."""
        for i, (what, _) in enumerate(self._undo):
            if what == f"umount {mount_point}":
                del self._undo[i]
                _umount(mount_point)
                return
        raise ValueError(f"{mount_point} was not mounted by this kit")

    def volume(
        self,
        size: int | str = "64M",
        fstype: str | None = "ext4",
        *,
        mount: bool = True,
        label: str | None = None,
    ) -> Volume:
        """Return a new loop volume with an optional file system, mounted if asked."""
        image = self.image(size)
        dev = self.attach(image)
        vol = Volume(device=dev, image=image, fstype=fstype)
        if fstype:
            self.mkfs(dev, fstype, label)
            if mount:
                vol.mount_point = self.mount(dev)
        return vol

    def fill(self, vol: Volume, files: int = 20, max_size: int = 64 << 10, seed: int = 1) -> None:
        """Write ``files`` files of known pseudo-random content into a mounted volume."""
        assert vol.mount_point is not None, "fill needs a mounted volume"
        rng = random.Random(seed)
        for i in range(files):
            rel = f"d{i % 4}/file{i:04d}.bin"
            data = rng.randbytes(rng.randint(0, max_size))
            path = vol.mount_point / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            vol.files[rel] = hashlib.sha256(data).hexdigest()
        os.sync()

    def detach(self, device: str) -> None:
        """Detach a loop device this kit attached, before the end of the test."""
        self._check_ours(device)
        _detach(device)
        self._undo.remove(next(u for u in self._undo if u[0] == f"detach {device}"))

    def _check_ours(self, device: str) -> None:
        if f"detach {device}" not in (w for w, _ in self._undo):
            raise ValueError(f"{device} was not attached by this kit; refusing to write to it")

    def close(self) -> list[str]:
        """Undo everything in reverse order; return what could not be undone."""
        failures: list[str] = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as e:  # keep undoing the rest, report all at the end
                failures.append(f"{what}: {e}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        return failures


def _umount(mp: Path) -> None:
    p = subprocess.run(["umount", str(mp)], capture_output=True, check=False)
    if p.returncode != 0:
        # Busy: detach it lazily so the run never leaks a mount, then report.
        subprocess.run(["umount", "-l", str(mp)], capture_output=True, check=False)
        raise RuntimeError(p.stderr.decode(errors="replace").strip())


def _detach(dev: str) -> None:
    run("losetup", "--detach", dev)


def kit_leftovers(workdir: Path) -> tuple[list[str], list[str]]:
    """Return loop devices and mounts that still refer to files below ``workdir``."""
    top = str(workdir)
    loops = [
        line.split(None, 1)[0]
        for line in run(
            "losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"
        ).splitlines()
        if top in line
    ]
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(top)
    ]
    return loops, mounts
