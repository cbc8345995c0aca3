"""Undo records: what a backup changed on the machine, written down before it changes it.

A backup undoes its remounts, freezes, clones and snapshots on every exit path it
lives to see. SIGKILL (or the OOM killer, or a power cut of the agent's process
only) is the one it does not: the file system stays read-only, frozen, or a clone
keeps its space. So each change is first recorded here — a small JSON file under
``/run/blockvault/undo`` (tmpfs: a reboot, which clears the state too, clears the
records) — and the record is removed only once the undo succeeded. The next
backup or agent start finds records whose process is gone and completes their
undo (:func:`core.snapshots.recover_interrupted`).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

UNDO_ENV = "BLOCKVAULT_UNDO_DIR"
DEFAULT_UNDO_DIR = "/run/blockvault/undo"


@dataclass(frozen=True)
class UndoRecord:
    """One change to put back if its process dies: ``kind`` of ``target``."""

    kind: str
    """``remount-rw``, ``thaw``, ``unlink`` or ``lvremove``."""
    target: str
    """The mount point, the clone's path or the snapshot's VG/LV name."""
    device: str
    pid: int
    pid_start: str
    """The process's start time (``/proc/PID/stat``): a reused pid is not the same process."""
    created: float
    name: str

    @property
    def owner_alive(self) -> bool:
        """True while the process that made the change still runs (it undoes it itself)."""
        return _start_time(self.pid) == self.pid_start


def undo_dir() -> Path:
    """Return the directory of undo records (``$BLOCKVAULT_UNDO_DIR`` or /run/blockvault/undo)."""
    return Path(os.environ.get(UNDO_ENV) or DEFAULT_UNDO_DIR)


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # The command name (field 2) may hold spaces: count from its closing ')'.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def record(kind: str, target: str, device: str) -> UndoRecord:
    """Write (and fsync) a record that ``kind`` must be done to ``target`` if this process dies."""
    folder = undo_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = os.getpid()
    rec = UndoRecord(kind, target, device, pid, _start_time(pid), time.time(), secrets.token_hex(8))
    path = folder / f"{rec.name}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(asdict(rec)).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return rec


def forget(rec: UndoRecord) -> None:
    """Remove ``rec``: its change was undone."""
    (undo_dir() / f"{rec.name}.json").unlink(missing_ok=True)


def records() -> Iterator[UndoRecord]:
    """Yield every record on this machine, oldest first; unreadable files are skipped."""
    folder = undo_dir()
    try:
        paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for path in paths:
        try:
            yield UndoRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
