"""restore image --incremental: the image, then its increments replayed on top.

The image is restored with every guard and the typed confirmation of the image
restore; the restored volume is then mounted at a private temporary mount point,
the chosen increment is replayed (``--deletefiles`` removes what it no longer
lists), and the volume is unmounted on every exit path. The mount has an undo record,
so a restore killed while it replays leaves nothing mounted for long: the next restore
or agent start unmounts it (:func:`recover_replay_mounts`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core import findings as F
from core import undo, unfinished
from core.engine.restore import RestoreDamaged, RestoreReport, restore_image
from core.errors import BlockvaultError
from core.findings import Finding, ReturnCode
from core.increments.replay import ReplayReport, replay
from core.mounts import read_mounts
from core.progress import ProgressFn
from core.repo.filemanifest import FileManifest
from core.repo.format import ImageManifest
from core.repo.repository import Repository

MOUNT_BASE = "/run/blockvault"
REPLAY_PREFIX = "replay-"
MAX_STACKED = 4
"""Mounts unmounted at one replay mount point at most (ours is one; more were stacked)."""


class ReplayMountError(BlockvaultError):
    """The restored volume could not be mounted to replay the increments onto it."""


@contextlib.contextmanager
def private_mount(device: str, fstype: str | None) -> Iterator[str]:
    """Mount ``device`` at a new directory only root can enter; unmount and remove it after.

    The mount has an undo record (:data:`core.undo.REPLAY_BOOK`), complete before the
    directory and the mount exist and removed once both are gone: a process killed at
    any instant in between leaves it for :func:`recover_replay_mounts`.
    """
    base = MOUNT_BASE if os.access("/run", os.W_OK) else tempfile.gettempdir()
    os.makedirs(base, mode=0o700, exist_ok=True)
    point = os.path.join(base, f"{REPLAY_PREFIX}{secrets.token_hex(6)}")
    cmd = ["mount", "-o", "nosuid,nodev"]
    if fstype:
        cmd += ["-t", fstype]
    rec = undo.record("umount", point, device, book=undo.REPLAY_BOOK)
    try:
        try:
            os.mkdir(point, 0o700)
        except OSError as e:
            raise ReplayMountError(
                f"cannot make {point} to mount the restored {device} on: {e.strerror}; "
                "the image is restored, the increments are not"
            ) from None
        p = subprocess.run([*cmd, device, point], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise ReplayMountError(
                f"cannot mount the restored {device} to replay increments: {p.stderr.strip()}; "
                "the image is restored, the increments are not — check it with fsck"
            )
        yield point
    finally:
        # Also after a Ctrl-C during mount(8): the mount may have completed regardless.
        if _unmount(point):
            undo.forget(rec)  # else the next restore or agent start tries again


def _mounted(point: str) -> bool:
    return any(m.mount_point == point for m in read_mounts())


def _unmount(point: str) -> bool:
    """Unmount whatever is mounted at ``point`` and remove the directory; False if it stays."""
    for _ in range(MAX_STACKED):
        if not _mounted(point):
            break
        done = subprocess.run(["umount", point], capture_output=True, check=False)
        if done.returncode != 0:
            # Busy (a process wandered in): detach it now so it never outlives us.
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if _mounted(point):
        return False
    # rmdir, never rmtree: if the volume were somehow still mounted here, a recursive
    # delete would erase the restored files.
    with contextlib.suppress(OSError):
        os.rmdir(point)
    return True


def recover_replay_mounts() -> list[Finding]:
    """Unmount the replay mounts of restores whose process died; return what was done.

    A restore killed while it replayed increments (SIGKILL, the OOM killer) leaves its
    private mount of the restored volume behind, which would make the next restore of
    that volume refuse it as mounted. The agent runs this when it starts, and every
    restore before it writes; a front end that plans a restore should run it first, or
    the plan finds the volume mounted. A mount whose restore still runs is left alone.
    """
    found: list[Finding] = []
    for rec in undo.records(undo.REPLAY_BOOK):
        if rec.owner_alive or rec.kind != "umount":
            continue
        was_mounted = _mounted(rec.target)
        if not _unmount(rec.target):
            found.append(
                F.warning(
                    "UNDO_PENDING",
                    f"{rec.device} is still mounted at {rec.target}, where a restore that "
                    f"was killed replayed increments; unmount it with 'umount -l {rec.target}'",
                    target=rec.target,
                )
            )
            continue
        undo.forget(rec)
        if was_mounted:
            found.append(
                F.warning(
                    "UNDO_RECOVERED",
                    f"unmounted {rec.device} from {rec.target}, left by a restore that was "
                    "killed while it replayed increments onto it (so its files were only "
                    "partly replayed)",
                    target=rec.target,
                    kind=rec.kind,
                )
            )
    return found


@dataclass
class IncrementalRestoreReport:
    """The image restore, and the replay of the increment on top of it."""

    image: RestoreReport
    replay: ReplayReport | None
    increment: str | None

    @property
    def return_code(self) -> ReturnCode:
        """The worse of the two parts' return codes."""
        codes = [self.image.return_code] + ([self.replay.return_code] if self.replay else [])
        return max(codes)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON report."""
        return {
            "image": self.image.to_dict(),
            "increment": self.increment,
            "replay": self.replay.to_dict() if self.replay else None,
            "return_code": int(self.return_code),
        }


def restore_with_increments(
    image: ImageManifest,
    increment: FileManifest | None,
    dest: str,
    repo: Repository,
    *,
    confirm: str | None,
    delete: bool,
    preserve_label: bool = False,
    verify: bool = False,
    to_file: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    expected: tuple[object, ...] | None = None,
) -> IncrementalRestoreReport:
    """Restore ``image`` onto ``dest`` (guards, confirmation), then replay ``increment``.

    With ``to_file`` the image is written into the regular file ``dest``; increments
    are replayed onto a mounted volume only, so an increment is refused then.
    """
    if to_file and increment is not None:
        raise BlockvaultError(
            "--incremental replays files onto a mounted volume: give a device DEST; "
            "nothing was written"
        )
    # A restore killed earlier may have left DEST mounted for its replay: put it right
    # first (the guards would refuse DEST as mounted), and say so in this report.
    recovered = recover_replay_mounts()
    if increment is not None:
        refuse_missing_increment_chunks(repo, increment)
    restored = restore_image(
        image,
        dest,
        repo,
        confirm=confirm,
        to_file=to_file,
        preserve_label=preserve_label,
        verify=verify,
        progress=progress,
        cancel=cancel,
        expected=expected,
        then_increment=increment.id if increment is not None else None,
    )
    restored.findings[:0] = recovered
    if increment is None:
        return IncrementalRestoreReport(restored, None, None)
    with private_mount(restored.dest, image.volume.fstype) as root:
        replayed = replay(increment, root, repo, delete=delete, progress=progress, cancel=cancel)
    unfinished.finished_here(restored.dest)
    return IncrementalRestoreReport(restored, replayed, increment.id)


def refuse_missing_increment_chunks(repo: Repository, increment: FileManifest) -> None:
    """Raise :class:`RestoreDamaged` before any write when a chunk the increment lists is gone.

    Which files the replay will fetch depends on what the image leaves on disk, so
    every chunk the increment lists must be there (one ``lstat`` each): a lost chunk
    found after the image is written would leave the volume between two states.
    """
    needed = increment.stored_digests()
    missing = needed - repo.stored_chunks(needed)
    if not missing:
        return
    first = next(e.path for e in increment.entries if missing.intersection(e.chunks))
    raise RestoreDamaged(
        f"increment {increment.id} needs {len(missing)} chunk(s) the repository does not "
        f"hold (the first for file {first!r}); nothing was written — run 'blockvault repo "
        "check', then restore an older increment or the image alone"
    )
