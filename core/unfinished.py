"""Unfinished restores: a mark on this machine that a restore to a device began and did not end.

A restore cannot be undone. Killed (SIGKILL, the OOM killer, a power cut) or stopped by
a failure half-way, it leaves the device partly overwritten, and the device looks like
any other. So before its first write a restore leaves a mark here — a small JSON file
under ``/var/lib/blockvault/unfinished`` (persistent: a half-written disk survives a
reboot, and so does its mark) naming the device, the image and the time — and removes
it only when the image (and any increments it replays) is wholly on the device.
``check-volume``, a backup's preflight and the next restore to that device report a
mark whose restore is gone: "a restore to this device did not finish".

A device is known by its node, its size, its serial and, for a loop device, its backing
file's path and inode: a new loop device over another file, or another disk put in the
same slot, is not the one the mark is about.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from core.devices import BlockDevice
from core.statedir import state_dir
from core.undo import start_time, write_durably

MAX_MARK = 64 * 1024
"""A mark is a few hundred bytes; a file larger than this is not read."""


@dataclass(frozen=True)
class RestoreMark:
    """A restore of ``image_id`` (then ``increment_id``) to ``device`` that has not ended."""

    device: str
    identity: str
    """The device's identity (see :func:`identity`)."""
    image_id: str
    increment_id: str | None
    started: float
    pid: int
    pid_start: str
    name: str

    @property
    def running(self) -> bool:
        """True while the restore's process still runs (a reused pid is another process)."""
        return start_time(self.pid) == self.pid_start

    def describe(self) -> str:
        """Return "image X, then increment Y, begun 2026-12-02 10:11 UTC"."""
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.started))
        then = f" then increment {self.increment_id}" if self.increment_id else ""
        return f"image {self.image_id}{then}, begun {when}"


def marks_dir() -> Path:
    """Return the directory of marks (below ``$BLOCKVAULT_STATE_DIR`` or /var/lib/blockvault)."""
    return Path(state_dir()) / "unfinished"


def identity(dev: BlockDevice) -> str:
    """Return what tells ``dev`` from another device that later takes its node."""
    parts = [dev.path, str(dev.size), dev.serial or ""]
    if dev.loop is not None:
        try:
            st = os.stat(dev.loop.backing_file)
            parts += [dev.loop.backing_file, f"{st.st_dev}:{st.st_ino}", str(dev.loop.offset)]
        except OSError:
            parts += [dev.loop.backing_file, "gone"]
    return "|".join(parts)


def _read(path: Path) -> RestoreMark | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not os.path.isfile(f"/proc/self/fd/{fd}"):
            return None
        raw = json.loads(os.read(fd, MAX_MARK + 1)[:MAX_MARK])
        return RestoreMark(**raw)
    except (OSError, ValueError, TypeError):
        return None
    finally:
        os.close(fd)


def marks() -> list[RestoreMark]:
    """Return every readable mark on this machine, oldest first."""
    folder = marks_dir()
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError:
        return []
    found = [m for m in map(_read, paths) if m is not None]
    return sorted(found, key=lambda m: m.started)


def unfinished_on(dev: BlockDevice) -> list[RestoreMark]:
    """Return the marks of restores to ``dev`` that ended without finishing."""
    me = identity(dev)
    return [m for m in marks() if m.identity == me and not m.running]


def begin(dev: BlockDevice, image_id: str, increment_id: str | None = None) -> RestoreMark:
    """Leave the mark of a restore to ``dev`` (durable when this returns): write only after.

    It replaces the marks of earlier restores to the same device: this restore
    overwrites what they left, and its own mark says what the device holds now.
    """
    folder = marks_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = os.getpid()
    mark = RestoreMark(
        dev.path,
        identity(dev),
        image_id,
        increment_id,
        time.time(),
        pid,
        start_time(pid),
        secrets.token_hex(8),
    )
    write_durably(folder / f"{mark.name}.tmp", folder / f"{mark.name}.json", asdict(mark))
    _remove(m for m in marks() if m.identity == mark.identity and m.name != mark.name)
    return mark


def finished(mark: RestoreMark) -> None:
    """Remove ``mark``: its restore put the whole image (and increments) on the device."""
    _remove([mark])


def finished_here(device: str) -> None:
    """Remove this process's marks of restores to ``device`` (its node): they finished."""
    pid = os.getpid()
    me = start_time(pid)
    _remove(m for m in marks() if m.device == device and m.pid == pid and m.pid_start == me)


def _remove(gone: Iterable[RestoreMark]) -> None:
    folder = marks_dir()
    for m in gone:
        (folder / f"{m.name}.json").unlink(missing_ok=True)

