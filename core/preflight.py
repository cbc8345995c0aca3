"""Preflight checks for a volume: every finding ``check-volume`` reports.

Each check returns findings (code, severity, one line that says what to do);
the console and the command line render the same list.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from core import findings as F
from core.bytesource import FileSource
from core.devices import BlockDevice, DeviceKind, DeviceTree, scan, writable
from core.findings import Finding
from core.labels import DiskLabel, extent_findings, read_label, volume_label_findings
from core.mounts import (
    FstabEntry,
    ProcessUse,
    fstab_path,
    is_under,
    processes_using,
    read_active_swaps,
    read_fstab,
)
from core.targets import TargetCodeError, Volume, resolve
from core.unfinished import unfinished_on
from core.units import article

MAX_NAMED = 3
"""How many processes or mounts a one-line message names before "and N more"."""


@dataclass(frozen=True)
class VolumeCheck:
    """The findings for one TARGET, and the volume it resolved to (None for bad input)."""

    target: str
    volume: Volume | None
    findings: tuple[Finding, ...]

    @property
    def return_code(self) -> F.ReturnCode:
        """0, 8 (warnings) or 12 (a blocker)."""
        return F.return_code(self.findings)

    def to_dict(self) -> dict[str, object]:
        """Return the JSON document of ``check-volume --json``."""
        dev = self.volume.device if self.volume else None
        return {
            "target": self.target,
            "device": dev.to_dict() if dev else None,
            "findings": [f.to_dict() for f in self.findings],
            "return_code": int(self.return_code),
        }


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    more = len(items) - MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def describe_processes(uses: Sequence[ProcessUse]) -> str:
    """Return ``pid 42 (python) has open for writing /mnt/x/log (+2 more), ...`` for ``uses``.

    One phrase per process (``(+2 more)``: its other files), so a process with many
    files cannot hide the others; at most MAX_NAMED are named. A refused static backup
    names its writers with the same words.
    """
    by_pid: dict[int, list[ProcessUse]] = {}
    for u in uses:
        by_pid.setdefault(u.pid, []).append(u)
    return _listing(
        [
            group[0].describe() + (f" (+{len(group) - 1} more)" if len(group) > 1 else "")
            for group in by_pid.values()
        ]
    )


def fstab_device(entry: FstabEntry, tree: DeviceTree) -> BlockDevice | None:
    """Return the device an fstab line names (``UUID=``, ``LABEL=`` or a path), if present."""
    spec = entry.spec
    key, _, value = spec.partition("=")
    if value and key in ("UUID", "LABEL"):
        for dev in tree:
            if (key == "UUID" and dev.uuid and dev.uuid.lower() == value.lower()) or (
                key == "LABEL" and dev.fs_label == value
            ):
                return dev
        return None
    if spec.startswith("/"):
        return tree.by_path(spec)
    return None


def _mount_findings(vol: Volume, tree: DeviceTree, fstab: Sequence[FstabEntry]) -> list[Finding]:
    dev = vol.device
    out: list[Finding] = []
    fstab_points = [
        e.mount_point
        for e in fstab
        if e.mount_point.startswith("/")
        and ((d := fstab_device(e, tree)) is not None and d.name == dev.name)
    ]

    if vol.mount is not None:
        # The user named a mount point: is it the one fstab assigns to another volume?
        for e in fstab:
            if e.mount_point != vol.mount.mount_point:
                continue
            other = fstab_device(e, tree)
            if other is not None and other.name != dev.name:
                out.append(
                    F.warning(
                        "MOUNT_POINT_OTHER_DEVICE",
                        f"{vol.mount.mount_point} is mounted from {dev.path}, but "
                        f"{fstab_path()} assigns it to {other.path} ({e.spec}); "
                        "check which volume you mean",
                        mount_point=vol.mount.mount_point,
                        mounted=dev.path,
                        expected=other.path,
                    )
                )

    if dev.mounts:
        opts = ", ".join(f"{m.mount_point} ({'ro' if m.read_only else 'rw'})" for m in dev.mounts)
        out.append(
            F.info(
                "FS_MOUNTED",
                f"{dev.path} ({dev.fstype}) is mounted at {opts}",
                mount_points=list(dev.mount_points),
            )
        )
    elif fstab_points:
        point = fstab_points[0]
        out.append(
            F.info(
                "FS_NOT_MOUNTED",
                f"{dev.path} is not mounted; {fstab_path()} mounts it at {point}",
                mount_point=point,
            )
        )
        holder = next((m for m in reversed(tree.mounts) if m.mount_point == point), None)
        if holder is not None:
            other = tree.by_number(holder.major, holder.minor)
            src = other.path if other else holder.source
            out.append(
                F.warning(
                    "MOUNT_POINT_OTHER_DEVICE",
                    f"{point}, the mount point of {dev.path} in {fstab_path()}, is mounted "
                    f"from {src}; check which volume you mean",
                    mount_point=point,
                    mounted=src,
                    expected=dev.path,
                )
            )
    else:
        out.append(
            # The guide refuses such a volume outright; an unmounted volume is the best
            # moment for an image, so blockvault files it under its device path and says so.
            F.warning(
                "FS_NO_MOUNT_POINT",
                f"{dev.path} holds {article(dev.fstype or 'a')} file system with no mount point "
                "(not mounted, "
                f"not in {fstab_path()}): its images are filed under {dev.path}; add it to "
                f"{fstab_path()} to file them under a mount point that survives renumbering",
            )
        )

    binds = [m for m in dev.mounts if m.is_bind_of_subtree]
    if binds:
        out.append(
            F.warning(
                "MOUNT_BIND",
                "bind mount: "
                + _listing([f"{m.mount_point} shows {m.root}" for m in binds])
                + f" of {dev.path}; the image holds the whole volume, not only that directory",
                binds=[{"mount_point": m.mount_point, "root": m.root} for m in binds],
            )
        )
    elif len(dev.mounts) > 1:
        out.append(
            F.info(
                "MOUNT_MULTIPLE",
                f"{dev.path} is mounted {len(dev.mounts)} times: "
                + _listing(list(dev.mount_points)),
                mount_points=list(dev.mount_points),
            )
        )

    own_points = set(dev.mount_points)
    nested = [
        m
        for m in tree.mounts
        if m.mount_point not in own_points
        and any(is_under(m.mount_point, p) for p in own_points)
        and (m.major, m.minor) != (dev.major, dev.minor)
    ]
    if nested and "/" not in own_points:
        out.append(
            F.warning(
                "MOUNT_NESTED",
                f"mounted below {dev.mount_points[0]}: "
                + _listing([f"{m.mount_point} ({m.source})" for m in nested])
                + "; their files are not in this image, back them up separately",
                nested=[m.mount_point for m in nested],
            )
        )

    if "/" in own_points:
        instead = (
            "use --imagetype snapshot or dynamic"
            if dev.kind is DeviceKind.LVM
            else "use --imagetype dynamic (a snapshot of a root file system needs LVM)"
        )
        out.append(
            F.warning(
                "ROOT_FILESYSTEM",
                f"{dev.path} holds the root file system, which cannot go offline: a static "
                f"image is refused; {instead}",
            )
        )
    return out


def _shared_findings(dev: BlockDevice, tree: DeviceTree) -> list[Finding]:
    """Return a finding for each device sharing ``dev``'s bytes that is mounted."""
    out: list[Finding] = []
    for o in dev.overlaps:
        other = tree.get(o.name)
        if other is None or not other.mounts:
            continue
        points = list(other.mount_points)
        details = {"device": o.path, "relation": o.relation.value, "mount_points": points}
        if writable(other.mounts):
            out.append(
                F.warning(
                    "OVERLAP_MOUNTED",
                    f"{o.describe()} is mounted read-write at {_listing(points)}, so bytes of "
                    f"{dev.path} change while they are copied: a static image is refused, and "
                    f"a snapshot or dynamic one is marked fuzzy; unmount {points[0]} first "
                    "for a clean image",
                    read_only=False,
                    **details,
                )
            )
        else:
            out.append(
                F.info(
                    "OVERLAP_MOUNTED",
                    f"{o.describe()} is mounted read-only at {_listing(points)}: those bytes "
                    f"of {dev.path} stay as they are while they are copied",
                    read_only=True,
                    **details,
                )
            )
    return out


def _loop_user_findings(dev: BlockDevice) -> list[Finding]:
    """Return what the loop devices attached to files on ``dev``'s file system do to it."""
    out: list[Finding] = []
    for read_only in (False, True):
        users = [u for u in dev.loop_users if u.read_only is read_only]
        if not users:
            continue
        named = _listing([f"{u.path} ({u.backing_file})" for u in users])
        loops = [{"device": u.path, "backing_file": u.backing_file} for u in users]
        if read_only:
            out.append(
                F.info(
                    "LOOP_BACKING_FILE",
                    f"{dev.path} holds the backing file of {named}, attached read-only: it "
                    "cannot be unmounted until they are detached, but a static image is not "
                    "held up",
                    read_only=True,
                    loops=loops,
                )
            )
        else:
            out.append(
                F.warning(
                    "LOOP_BACKING_FILE",
                    f"{dev.path} holds the backing file of {named}, open for writing while "
                    "attached: a static image cannot remount it read-only, nor can it be "
                    f"unmounted; detach first ('losetup -d {users[0].path}')",
                    read_only=False,
                    loops=loops,
                )
            )
    return out


def _process_findings(uses: Sequence[ProcessUse], dev: BlockDevice) -> list[Finding]:
    out: list[Finding] = []
    groups = {
        "write": (
            "PROCESS_WRITING",
            "a static (offline) image cannot remount it read-only until they close the "
            "files: stop them first",
        ),
        "cwd": ("PROCESS_CWD", "they keep the file system busy (it cannot be unmounted)"),
        "root": ("PROCESS_CWD", "they keep the file system busy (it cannot be unmounted)"),
        "device": ("DEVICE_OPEN", f"they may write to {dev.path} behind the file system's back"),
    }
    by_code: dict[str, list[ProcessUse]] = {}
    for u in uses:
        by_code.setdefault(groups[u.how][0], []).append(u)
    for code, group in by_code.items():
        advice = next(text for c, text in groups.values() if c == code)
        out.append(
            F.warning(
                code,
                describe_processes(group) + f"; {advice}",
                processes=[
                    {"pid": u.pid, "name": u.name, "how": u.how, "path": u.path} for u in group
                ],
            )
        )
    return out


def container_label(dev: BlockDevice, tree: DeviceTree) -> DiskLabel | None:
    """Return the label of the disk ``dev`` lies on (None: not a slice, or no label).

    The disk is a device of the tree (its label already read) or, for a loop slice of
    a file no loop device maps whole, the backing file itself.
    """
    if dev.extent is None:
        return None
    container = tree.by_path(dev.extent.container)
    if container is not None:
        return container.label
    try:
        with FileSource(dev.extent.container) as src:
            return read_label(src)
    except OSError:
        return None


def container_label_findings(dev: BlockDevice, tree: DeviceTree) -> list[Finding]:
    """Return what the label of the disk ``dev`` lies on says of ``dev``'s extent."""
    label = container_label(dev, tree)
    if label is None or dev.extent is None:
        return []
    return extent_findings(
        label, dev.extent.start, dev.extent.size, disk=dev.extent.container, volume=dev.path
    )


def _label_findings(dev: BlockDevice, tree: DeviceTree) -> list[Finding]:
    out = container_label_findings(dev, tree)
    try:
        with FileSource(dev.path) as src:
            out.extend(volume_label_findings(src, volume=dev.path))
    except OSError:
        pass  # unreadable devices already carry DEVICE_UNREADABLE
    return out


def check_resolved(
    vol: Volume, tree: DeviceTree, fstab: Sequence[FstabEntry] | None = None
) -> tuple[Finding, ...]:
    """Return every finding for a resolved volume."""
    dev = vol.device
    fstab = read_fstab() if fstab is None else fstab
    out: list[Finding] = []
    if dev.probe_error:
        out.append(
            F.blocker(
                "DEVICE_UNREADABLE",
                f"cannot read {dev.path}: {dev.probe_error}; "
                + (
                    "run blockvault as root"
                    if os.geteuid() != 0
                    else "the device is failing at its start: check it (dmesg, smartctl)"
                    if dev.probe_error == os.strerror(errno.EIO)
                    else "this process may not open it (a container's device policy?)"
                ),
            )
        )
    out.extend(
        F.warning(
            "RESTORE_UNFINISHED",
            f"a restore to {dev.path} did not finish ({mark.describe()}): it holds part of "
            "that image, not a volume to rely on; restore it again before using it",
        )
        for mark in unfinished_on(dev)[-1:]
    )
    if dev.read_only:
        out.append(
            F.info(
                "DEVICE_READ_ONLY",
                f"{dev.path} is a read-only device: it can be backed up but not restored to",
            )
        )
    if dev.has_filesystem:
        out.extend(_mount_findings(vol, tree, fstab))
    elif dev.probe_error is None:
        what = f"a {dev.fstype} volume" if dev.signature else "no file system"
        out.append(
            F.info(
                "VOLUME_RAW",
                f"{dev.path} holds {what}: it is backed up as a raw volume, every block read",
            )
        )
    if dev.holders:
        out.append(
            F.warning(
                "DEVICE_HELD",
                f"{dev.path} is in use by {_listing(['/dev/' + h for h in dev.holders])} "
                "(device-mapper or md); back up that device instead, or stop it first",
                holders=list(dev.holders),
            )
        )
    if dev.path in read_active_swaps() or os.path.realpath(dev.path) in read_active_swaps():
        out.append(
            F.warning(
                "SWAP_ACTIVE",
                f"{dev.path} is active swap; its image is meaningless, run swapoff or skip it",
            )
        )
    out.extend(_shared_findings(dev, tree))
    out.extend(_loop_user_findings(dev))
    uses = processes_using(dev.mount_points, [dev.path])
    out.extend(_process_findings(uses, dev))
    out.extend(_label_findings(dev, tree))
    return tuple(out)


def check_volume(
    target: str,
    tree: DeviceTree | None = None,
    fstab: Sequence[FstabEntry] | None = None,
) -> VolumeCheck:
    """Return the findings for ``target``; bad input becomes a blocker finding, not an exception."""
    tree = scan() if tree is None else tree
    try:
        vol = resolve(target, tree)
    except TargetCodeError as e:
        return VolumeCheck(target, None, (F.blocker(e.code, e.message),))
    return VolumeCheck(target, vol, check_resolved(vol, tree, fstab))
