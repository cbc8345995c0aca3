"""Completing the undo of changes a killed backup left behind (its undo records).

A backup that is SIGKILLed cannot undo its remount, freeze, clone or LVM snapshot;
the next backup or agent start finds the records whose process is gone and undoes
what still applies, with the same steps the views use on a normal exit.
"""

from __future__ import annotations

import fcntl
import os

from core import findings as F
from core import undo
from core.errors import BlockvaultError
from core.findings import Finding
from core.mounts import read_mounts
from core.snapshots.lvm import lvremove
from core.snapshots.model import UndoError, first_line
from core.snapshots.reflink import FITHAW, remove_clone
from core.snapshots.static import remount


def recover_interrupted() -> list[Finding]:
    """Complete the undo of changes whose backup process died; return what was done.

    A record whose process still runs belongs to a backup in progress and is left
    alone. A remount is put back only if the same device is still mounted there
    read-only; a change that no longer applies is just forgotten, and a record of a
    kind this version does not know is kept and reported.
    """
    found: list[Finding] = []
    for rec in undo.records():
        if rec.owner_alive:
            continue
        try:
            done = _recover(rec)
        except BlockvaultError as e:
            found.append(F.warning("UNDO_PENDING", e.message, target=rec.target))
            continue
        undo.forget(rec)
        if done:
            found.append(F.warning("UNDO_RECOVERED", done, target=rec.target, kind=rec.kind))
    return found


def _recover(rec: undo.UndoRecord) -> str | None:
    """Undo ``rec``'s change if it still applies; return a line saying what was done."""
    if rec.kind == "remount-rw":
        mounts = [m for m in read_mounts() if m.mount_point == rec.target]
        dev_mounts = [m for m in mounts if m.source == rec.device] or mounts
        if not dev_mounts or "ro" not in dev_mounts[-1].super_options:
            return None
        done = remount(rec.target, "rw")
        if done.returncode != 0:
            raise UndoError(
                f"{rec.target} was left read-only by a killed static backup and cannot be "
                f"made writable ({first_line(done.stderr)}); run 'mount -o remount,rw "
                f"{rec.target}'"
            )
        return (
            f"{rec.target} was left read-only by a static backup that was killed; "
            "it is writable again"
        )
    if rec.kind == "thaw":
        try:
            fd = os.open(rec.target, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError:
            return None  # EINVAL: not frozen
        finally:
            os.close(fd)
        return f"{rec.target} was left frozen by a snapshot backup that was killed; thawed"
    if rec.kind == "unlink":
        if not os.path.exists(rec.target):
            return None
        remove_clone(rec.target)
        return f"removed {rec.target}, the clone of a snapshot backup that was killed"
    if rec.kind == "lvremove":
        lvremove(rec.target)
        return f"removed {rec.target}, the LVM snapshot of a backup that was killed"
    # A kind this version does not know (a newer blockvault wrote it): never forgotten
    # unread, since the change it records may still be in place.
    raise UndoError(
        f"an undo record of kind {rec.kind!r} for {rec.target} is not one this blockvault "
        f"knows; it is kept in {undo.undo_dir(rec.book)} — undo that change by hand or with "
        "the blockvault that made it, then delete the record"
    )
