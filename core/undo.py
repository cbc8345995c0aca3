"""Undo records: what a job changed on the machine, written down before it changes it.

A backup undoes its remounts, freezes, clones and snapshots on every exit path it
lives to see, and a restore its private replay mount. SIGKILL (or the OOM killer, or
a power cut of the agent's process only) is the one it does not: the file system
stays read-only, frozen, mounted, or a clone keeps its space. So each change is first
recorded here — a small JSON file under ``/run/blockvault/undo`` (tmpfs: a reboot,
which clears the state too, clears the records) — and the record is removed only
once the undo succeeded. The next job or agent start finds records whose process is
gone and completes their undo.

A record is complete before the change it undoes: :func:`record` writes it to a
temporary file, fsyncs it and renames it into place, and only then returns; every
caller makes its change after that. A temporary file left behind is a record whose
process died while writing it, so its change was never begun (by an older blockvault,
which cloned before recording, it may have been): :func:`records` hands a whole one to
recovery like any other — whose every step first checks that the change is there — and
removes an empty one.

Records are kept in books, one per recovery, and a recovery reads only its own book,
so it never meets (and forgets, undone) a record of a kind it does not know: the
default book holds a backup's changes (:func:`core.snapshots.recover_interrupted`),
:data:`REPLAY_BOOK` a restore's private mounts
(:func:`core.increments.restore.recover_replay_mounts`).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

UNDO_ENV = "BLOCKVAULT_UNDO_DIR"
DEFAULT_UNDO_DIR = "/run/blockvault/undo"
REPLAY_BOOK = "replay"
"""The book of the mounts a restore makes to replay increments (kind ``umount``)."""


@dataclass(frozen=True)
class UndoRecord:
    """One change to put back if its process dies: ``kind`` of ``target``."""

    kind: str
    """``remount-rw``, ``thaw``, ``unlink``, ``lvremove`` or ``umount``."""
    target: str
    """The mount point, the clone's path or the snapshot's VG/LV name."""
    device: str
    pid: int
    pid_start: str
    """The process's start time (``/proc/PID/stat``): a reused pid is not the same process."""
    created: float
    name: str
    book: str = ""
    """The book it is kept in (``""``: a backup's changes)."""

    @property
    def owner_alive(self) -> bool:
        """True while the process that made the change still runs (it undoes it itself)."""
        return start_time(self.pid) == self.pid_start


def undo_dir(book: str = "") -> Path:
    """Return the directory of ``book`` (below ``$BLOCKVAULT_UNDO_DIR`` or /run/blockvault/undo)."""
    base = Path(os.environ.get(UNDO_ENV) or DEFAULT_UNDO_DIR)
    return base / book if book else base


def start_time(pid: int) -> str:
    """Return process ``pid``'s start time (``/proc/PID/stat``), "" when it is gone.

    A pid and its start time name one process: a reused pid has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # The command name (field 2) may hold spaces: count from its closing ')'.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def record(kind: str, target: str, device: str, *, book: str = "") -> UndoRecord:
    """Write a record that ``kind`` must be done to ``target`` if this process dies.

    It is durable and complete when this returns (written to a temporary file named
    after this process, fsynced, renamed into place, the directory fsynced): make the
    change only after.
    """
    folder = undo_dir(book)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = os.getpid()
    rec = UndoRecord(
        kind, target, device, pid, start_time(pid), time.time(), secrets.token_hex(8), book
    )
    path = folder / f"{rec.name}.json"
    # The writer's pid and start time in the name: a temporary file too empty to say
    # whose it is still tells whether its writer is alive.
    write_durably(folder / f"{rec.name}.{pid}-{rec.pid_start}.tmp", path, asdict(rec))
    return rec


def write_durably(tmp: Path, path: Path, doc: dict[str, object] | bytes) -> None:
    """Write ``doc`` (as JSON, or bytes as they are) to ``path``, whole or not at all, and
    durable when this returns.

    Through ``tmp`` (created exclusively, never through a symlink), fsynced, renamed
    into place, and the directory fsynced.
    """
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def forget(rec: UndoRecord) -> None:
    """Remove ``rec`` (and a temporary file of it): its change was undone."""
    for path in undo_dir(rec.book).glob(f"{rec.name}.*"):  # .json, NAME.PID-START.tmp
        path.unlink(missing_ok=True)


def records(book: str = "") -> Iterator[UndoRecord]:
    """Yield every record of ``book`` on this machine, oldest first.

    Also a whole temporary file whose writer died (see the module's note); one still
    being written is left to its writer, an empty or torn one of a dead writer is
    removed, and any other unreadable file is skipped.
    """
    folder = undo_dir(book)
    try:
        found = [*folder.glob("*.json"), *folder.glob("*.tmp")]
    except OSError:
        return
    dated = []
    for path in found:
        try:
            dated.append((path.stat().st_mtime, path))
        except OSError:  # renamed or forgotten since the listing
            continue
    for _, path in sorted(dated):
        try:
            rec = replace(UndoRecord(**json.loads(path.read_text())), book=book)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError):
            if path.suffix == ".tmp" and not _writer_alive(path):
                path.unlink(missing_ok=True)  # killed before its one write: nothing was changed
            continue
        if path.suffix == ".tmp" and rec.owner_alive:
            continue  # its writer renames it in a moment
        yield rec


def _writer_alive(tmp: Path) -> bool:
    """True unless the writer named in ``NAME.PID-START.tmp`` is gone (unnamed: alive)."""
    _, _, owner = tmp.stem.partition(".")
    pid, _, start = owner.partition("-")
    if not pid.isdigit() or not start:
        return True  # not one of ours to judge: leave it
    return start_time(int(pid)) == start
