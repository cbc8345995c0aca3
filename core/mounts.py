"""Mount table, fstab and the processes that hold a volume busy.

Parsers take text and return values (``parse_mountinfo``, ``parse_fstab``); the
thin adapters read ``/proc/self/mountinfo``, ``/etc/fstab`` and ``/proc``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MOUNTINFO_PATH = "/proc/self/mountinfo"
FSTAB_ENV = "BLOCKVAULT_FSTAB"
"""Environment variable naming another fstab (chroots, rescue systems and tests)."""


def _unescape(field: str) -> str:
    """Decode the octal escapes (``\\040`` for space) the kernel and fstab use."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        chunk = field[i : i + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and all(c in "01234567" for c in chunk[1:]):
            out.append(chr(int(chunk[1:], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    """The path inside the file system that is mounted here ("/" unless a bind mount)."""
    mount_point: str
    options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        """True when this mount is read-only."""
        return "ro" in self.options

    @property
    def is_bind_of_subtree(self) -> bool:
        """True when this mount shows a subdirectory of its file system (a bind mount)."""
        return self.root != "/"


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    """Return the mounts described by mountinfo ``text``; malformed lines are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
            major, minor = (int(x) for x in fields[2].split(":", 1))
            mounts.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    major=major,
                    minor=minor,
                    root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    options=tuple(fields[5].split(",")),
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                    super_options=tuple(fields[sep + 3].split(","))
                    if len(fields) > sep + 3
                    else (),
                )
            )
        except (ValueError, IndexError):
            continue
    return tuple(mounts)


def read_mounts(path: str = MOUNTINFO_PATH) -> tuple[Mount, ...]:
    """Return this process's view of the mount table."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


@dataclass(frozen=True)
class FstabEntry:
    """One line of fstab: ``spec`` is a path, ``UUID=…``, ``LABEL=…``, ``PARTUUID=…``."""

    spec: str
    mount_point: str
    fstype: str
    options: tuple[str, ...]


def parse_fstab(text: str) -> tuple[FstabEntry, ...]:
    """Return the entries of fstab ``text``; comments and malformed lines are skipped."""
    entries: list[FstabEntry] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        entries.append(
            FstabEntry(
                spec=_unescape(fields[0]),
                mount_point=_unescape(fields[1]),
                fstype=fields[2] if len(fields) > 2 else "auto",
                options=tuple(fields[3].split(",")) if len(fields) > 3 else ("defaults",),
            )
        )
    return tuple(entries)


def fstab_path() -> str:
    """Return the fstab in effect: ``$BLOCKVAULT_FSTAB`` or ``/etc/fstab``."""
    return os.environ.get(FSTAB_ENV) or "/etc/fstab"


def read_fstab(path: str | None = None) -> tuple[FstabEntry, ...]:
    """Return the fstab entries; a missing fstab is an empty one."""
    try:
        with open(path or fstab_path(), encoding="utf-8", errors="surrogateescape") as f:
            return parse_fstab(f.read())
    except FileNotFoundError:
        return ()


def is_under(path: str, top: str) -> bool:
    """True when ``path`` is ``top`` or lies below it (both absolute, normalised)."""
    if top == "/":
        return path.startswith("/")
    return path == top or path.startswith(top.rstrip("/") + "/")


def mount_containing(path: str, mounts: Iterable[Mount]) -> Mount | None:
    """Return the mount whose file system holds ``path`` (the deepest, last-mounted one)."""
    best: Mount | None = None
    for m in mounts:
        if is_under(path, m.mount_point) and (
            best is None or len(m.mount_point) >= len(best.mount_point)
        ):
            best = m
    return best


@dataclass(frozen=True)
class ProcessUse:
    """A process that keeps a volume busy, and how."""

    pid: int
    name: str
    how: str
    """``write`` (a file open for writing), ``cwd``, ``root`` or ``device`` (device held open)."""
    path: str

    def describe(self) -> str:
        """Return a short phrase such as ``pid 42 (python) writes /mnt/x/log``."""
        verb = {
            "write": "has open for writing",
            "cwd": "has its working directory in",
            "root": "is chrooted into",
            "device": "holds open",
        }.get(self.how, self.how)
        return f"pid {self.pid} ({self.name}) {verb} {self.path}"


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


def _fd_flags(pid: int, fd: str) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _iter_fds(pid: int) -> Iterator[tuple[str, str]]:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for fd in names:
        try:
            yield fd, os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def processes_using(
    mount_points: Iterable[str] = (), devices: Iterable[str] = ()
) -> tuple[ProcessUse, ...]:
    """Return processes writing below ``mount_points``, living in them, or holding ``devices`` open.

    Reads ``/proc`` directly (one readlink per descriptor) rather than psutil's
    ``open_files()``, which stats every file and hides block devices.
    Processes that vanish or deny access while scanned are passed over.
    """
    tops = [os.path.normpath(p) for p in mount_points]
    devs = {os.path.realpath(d) for d in devices}
    uses: list[ProcessUse] = []
    me = os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        found: list[ProcessUse] = []
        for how in ("cwd", "root"):
            try:
                target = os.readlink(f"/proc/{pid}/{how}")
            except OSError:
                continue
            # The root of every ordinary process is "/"; report only a real chroot.
            if how == "root" and target == "/":
                continue
            if any(is_under(target, t) and t != "/" for t in tops):
                found.append(ProcessUse(pid, "", how, target))
        for fd, target in _iter_fds(pid):
            if target in devs:
                found.append(ProcessUse(pid, "", "device", target))
            elif target.startswith("/") and any(is_under(target, t) for t in tops):
                flags = _fd_flags(pid, fd)
                if flags is not None and flags & _WRITE_FLAGS:
                    found.append(ProcessUse(pid, "", "write", target))
        if found:
            name = _proc_name(pid)
            uses.extend(ProcessUse(u.pid, name, u.how, u.path) for u in found)
    return tuple(uses)


def read_active_swaps(path: str = "/proc/swaps") -> tuple[str, ...]:
    """Return the paths of active swap areas."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return ()
    return tuple(_unescape(line.split()[0]) for line in lines if line.strip())
