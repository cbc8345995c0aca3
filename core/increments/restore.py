"""restore image --incremental: the image, then its increments replayed on top.

The image is restored with every guard and the typed confirmation of the image
restore; the restored volume is then mounted at a private temporary mount point,
the chosen increment is replayed (``--deletefiles`` removes what it no longer
lists), and the volume is unmounted on every exit path.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.engine.restore import RestoreReport, restore_image
from core.errors import BlockvaultError
from core.findings import ReturnCode
from core.increments.replay import ReplayReport, replay
from core.progress import ProgressFn
from core.repo.filemanifest import FileManifest
from core.repo.format import ImageManifest
from core.repo.repository import Repository

MOUNT_BASE = "/run/blockvault"


class ReplayMountError(BlockvaultError):
    """The restored volume could not be mounted to replay the increments onto it."""


@contextlib.contextmanager
def private_mount(device: str, fstype: str | None) -> Iterator[str]:
    """Mount ``device`` at a new directory only root can enter; unmount and remove it after."""
    base = MOUNT_BASE if os.access("/run", os.W_OK) else tempfile.gettempdir()
    os.makedirs(base, mode=0o700, exist_ok=True)
    point = tempfile.mkdtemp(prefix="replay-", dir=base)
    os.chmod(point, 0o700)
    cmd = ["mount", "-o", "nosuid,nodev"]
    if fstype:
        cmd += ["-t", fstype]
    try:
        p = subprocess.run([*cmd, device, point], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise ReplayMountError(
                f"cannot mount the restored {device} to replay increments: {p.stderr.strip()}; "
                "the image is restored, the increments are not — check it with fsck"
            )
        yield point
    finally:
        # Also after a Ctrl-C during mount(8): the mount may have completed regardless.
        if os.path.ismount(point):
            done = subprocess.run(["umount", point], capture_output=True, check=False)
            if done.returncode != 0:
                # Busy (a process wandered in): detach it now so it never outlives us.
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        # rmdir, never rmtree: if the volume were somehow still mounted here, a
        # recursive delete would erase the restored files.
        with contextlib.suppress(OSError):
            os.rmdir(point)


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
    )
    if increment is None:
        return IncrementalRestoreReport(restored, None, None)
    with private_mount(restored.dest, image.volume.fstype) as root:
        replayed = replay(increment, root, repo, delete=delete, progress=progress, cancel=cancel)
    return IncrementalRestoreReport(restored, replayed, increment.id)
