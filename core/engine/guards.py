"""Restore guards: what the machine says of a destination, and the verdict on it.

The guards come in two halves. ``read_restore_facts`` and ``read_file_restore_facts``
do all the looking (stat, ``/proc``, the destination's own label, which devices hold
the repository and ``/``, free space) and return it as frozen facts; ``judge_restore``
and ``judge_file_restore`` turn facts into findings and read nothing. The recorded
scene of the screenshots feeds the judgement recorded facts, so the console's
pictures carry the guards' own words and cannot drift from them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from core import findings as F
from core.bytesource import FileSource
from core.devices import BlockDevice, DeviceTree
from core.findings import Finding, Severity
from core.labels import DiskLabel, extent_findings, read_label
from core.mounts import ProcessUse, processes_using, read_active_swaps
from core.preflight import container_label
from core.repo.format import ZERO_ID, ImageManifest
from core.targets import TargetCodeError, resolve
from core.unfinished import RestoreMark, unfinished_on
from core.units import article, human_size


@dataclass(frozen=True)
class RestorePlan:
    """The guards' verdict on restoring ``manifest`` onto ``dest``."""

    dest: str
    device: BlockDevice | None
    """The destination block device (None with ``to_file``)."""
    to_file: bool
    findings: tuple[Finding, ...]
    protected: tuple[tuple[int, int], ...] = ()
    """Byte ranges of the destination left untouched (``--preserve-label``)."""

    @property
    def blocked(self) -> bool:
        """True when a blocker forbids the restore (it cannot be confirmed away)."""
        return any(f.severity is Severity.BLOCKER for f in self.findings)

    @property
    def confirm_name(self) -> str:
        """The exact name the user must type or pass as ``--confirm``."""
        return self.device.path if self.device is not None else self.dest

    @property
    def identity(self) -> tuple[object, ...]:
        """What the user was shown of the destination: it must still be that at write time."""
        d = self.device
        if d is None:
            return (self.dest,)
        loop = (d.loop.backing_file, d.loop.offset, d.loop.size_limit) if d.loop else None
        return (d.path, d.major, d.minor, d.size, d.serial, loop, d.uuid)


@dataclass(frozen=True)
class Unresolved:
    """Why a destination names no block device, in :func:`core.targets.resolve`'s words."""

    code: str
    message: str


@dataclass(frozen=True)
class RestoreFacts:
    """What the machine says of a block device as a restore destination.

    Everything but ``dest``, ``tree``, ``device`` and ``repository`` matters only for
    a resolved device node; the defaults are a quiet machine (nothing open, no swap,
    no label, the repository and ``/`` on no device of the tree).
    """

    dest: str
    """The destination as the user gave it."""
    tree: DeviceTree
    """The machine's devices and mounts."""
    device: BlockDevice | Unresolved
    """The device ``dest`` names, or why it names none."""
    repository: str
    """The repository's location, as the user knows it."""
    block_node: bool = True
    """``dest`` is the device node itself, not a mount point of it."""
    real_path: str = ""
    """The device node with symbolic links resolved ("": the node is no link)."""
    processes: tuple[ProcessUse, ...] = ()
    """Processes that hold the device, or a device sharing its storage, open."""
    swaps: tuple[str, ...] = ()
    """The paths of the active swap areas."""
    repository_device: str | None = None
    """Kernel name of the device holding the repository (None: none of the tree's)."""
    root_device: str | None = None
    """Kernel name of the device holding ``/`` (None: none of the tree's)."""
    own_label: DiskLabel | None = None
    """The disk label read from the device's own first sectors, if any."""
    container_label: DiskLabel | None = None
    """The label of the disk the device lies on (None: not a slice, or no label)."""
    unfinished: tuple[RestoreMark, ...] = ()
    """Earlier restores to the device that began and did not finish."""


@dataclass(frozen=True)
class FileRestoreFacts:
    """What the machine says of a path as an ``--imagetofile`` destination."""

    dest: str
    """The destination as the user gave it."""
    path: str
    """``dest`` made absolute."""
    real_path: str
    """``path`` with symbolic links resolved."""
    repository: str
    """The repository's location, as the user knows it."""
    real_repository: str
    """The repository's location with symbolic links resolved."""
    parent_free: int | None
    """Bytes free to the user in ``path``'s directory (None: that is no directory)."""
    is_link: bool = False
    """``path`` is a symbolic link."""
    backs: tuple[str, ...] = ()
    """The loop devices whose backing file ``path`` is."""
    mode: int | None = None
    """``path``'s ``st_mode`` (links followed); None when nothing is there."""


# --- the device graph -------------------------------------------------------------------


def _walk(
    tree: DeviceTree, start: str | None, step: Callable[[BlockDevice], Iterable[str]]
) -> list[BlockDevice]:
    """Return the device named ``start`` and every device ``step`` leads to from it, once each."""
    out: list[BlockDevice] = []
    todo = [start] if start else []
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in tree.devices:
            continue
        seen.add(name)
        d = tree.devices[name]
        out.append(d)
        todo.extend(step(d))
    return out


def _built_on(d: BlockDevice) -> tuple[str, ...]:
    """The devices carved from or built on ``d`` (partitions, slices, holders)."""
    return (*d.children, *d.holders)


def _lies_on(d: BlockDevice) -> tuple[str, ...]:
    """The devices ``d`` is carved from or built on (its disk, its md or dm members)."""
    return ((d.parent,) if d.parent else ()) + d.slaves


def _beneath(tree: DeviceTree, name: str | None) -> set[str]:
    """Return ``name`` and the names of every device it lies on (nothing for None)."""
    return {d.name for d in _walk(tree, name, _lies_on)}


def root_holders(tree: DeviceTree) -> frozenset[str]:
    """Return the names of the devices the root file system lies on, as ``tree`` records it.

    The device mounted at ``/`` and every device beneath it (its partition's disk, an
    array's members): a restore target a list should show refused before anyone picks
    it. The guards judge a chosen target on the live machine (``DEST_HOLDS_ROOT``).
    """
    mounted = [d.name for d in tree if any(m.mount_point == "/" for m in d.mounts)]
    return frozenset(name for start in mounted for name in _beneath(tree, start))


def _overlapping_loops(dev: BlockDevice, real_path: str, tree: DeviceTree) -> list[BlockDevice]:
    """Return loop devices that map the same storage as ``dev`` or are backed by it.

    Two loop devices of one file, overlapping slices of it, or a loop device whose
    backing file is ``dev`` itself: writing ``dev`` writes under them, and the
    kernel's exclusive claim is per device, so the guards must see them too.
    """
    out: list[BlockDevice] = []
    mine = dev.loop
    start = mine.offset if mine else 0
    end = start + dev.size
    for other in tree:
        if other.name == dev.name or other.loop is None:
            continue
        backing = other.loop.backing_file
        if backing in (dev.path, real_path or dev.path):
            out.append(other)
        elif mine is not None and backing == mine.backing_file:
            o_start = other.loop.offset
            if o_start < end and start < o_start + other.size:
                out.append(other)
    return out


def _family(
    dev: BlockDevice, real_path: str, tree: DeviceTree
) -> tuple[list[BlockDevice], list[BlockDevice]]:
    """Return the loop devices sharing ``dev``'s storage, and every device a write to it hits.

    The second list is ``dev`` and what is built on it, then each sharer and what is
    built on that.
    """
    aliases = _overlapping_loops(dev, real_path, tree)
    family = _walk(tree, dev.name, _built_on)
    for a in aliases:
        family += _walk(tree, a.name, _built_on)
    return aliases, family


# --- gathering: every read of the machine -----------------------------------------------


def _device_of_path(path: str, tree: DeviceTree) -> str | None:
    """Return the kernel name of the device whose file system holds ``path``."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    dev = tree.by_number(os.major(st.st_dev), os.minor(st.st_dev))
    return dev.name if dev is not None else None


def _read_own_label(dev: BlockDevice) -> DiskLabel | None:
    try:
        with FileSource(dev.path) as src:
            return read_label(src)
    except OSError:
        # Unreadable: the label area then falls back to the first sector.
        return None


def read_restore_facts(dest: str, repository: str, tree: DeviceTree) -> RestoreFacts:
    """Return what this machine says of block device ``dest`` as a restore destination.

    Resolves ``dest`` in ``tree``, stats it, reads ``/proc`` (processes, swaps), the
    device's first sectors and its disk's label, and finds the devices holding
    ``repository`` and ``/``.
    """
    try:
        dev = resolve(dest, tree).device
    except TargetCodeError as e:
        return RestoreFacts(dest, tree, Unresolved(e.code, e.message), repository)
    if not os.path.exists(dest) or not stat.S_ISBLK(os.stat(dest).st_mode):
        return RestoreFacts(dest, tree, dev, repository, block_node=False)
    real_path = os.path.realpath(dev.path)
    _, family = _family(dev, real_path, tree)
    return RestoreFacts(
        dest,
        tree,
        dev,
        repository,
        real_path=real_path,
        processes=processes_using(devices=[d.path for d in family]),
        swaps=read_active_swaps(),
        repository_device=_device_of_path(repository, tree),
        root_device=_device_of_path("/", tree),
        own_label=_read_own_label(dev),
        container_label=container_label(dev, tree),
        unfinished=tuple(unfinished_on(dev)),
    )


def read_file_restore_facts(dest: str, repository: str, tree: DeviceTree) -> FileRestoreFacts:
    """Return what this machine says of path ``dest`` as an ``--imagetofile`` destination."""
    path = os.path.abspath(dest)
    real = os.path.realpath(path)
    parent = os.path.dirname(path)
    free = None
    if os.path.isdir(parent):
        vfs = os.statvfs(parent)
        free = vfs.f_bavail * vfs.f_frsize
    return FileRestoreFacts(
        dest,
        path,
        real,
        repository,
        os.path.realpath(repository),
        parent_free=free,
        is_link=os.path.islink(path),
        backs=tuple(
            d.path for d in tree if d.loop and os.path.realpath(d.loop.backing_file) == real
        ),
        mode=os.stat(path).st_mode if os.path.exists(path) else None,
    )


# --- judgement: facts in, findings out, nothing read -------------------------------------


def judge_restore(
    manifest: ImageManifest, facts: RestoreFacts, *, preserve_label: bool = False
) -> RestorePlan:
    """Return every guard's finding for restoring ``manifest`` onto the device of ``facts``."""
    dev, tree = facts.device, facts.tree
    if isinstance(dev, Unresolved):
        return RestorePlan(facts.dest, None, False, (F.blocker(dev.code, dev.message),))
    if not facts.block_node:
        msg = (
            f"{facts.dest} is a mount point; give the block device to restore to "
            "(it must be unmounted)"
        )
        return RestorePlan(facts.dest, None, False, (F.blocker("DEST_NOT_BLOCK_DEVICE", msg),))
    out: list[Finding] = [
        F.warning(
            "RESTORE_UNFINISHED",
            f"a restore to {dev.path} did not finish ({mark.describe()}): it holds part of "
            "that image, and this restore overwrites it",
        )
        for mark in facts.unfinished[-1:]
    ]
    aliases, family = _family(dev, facts.real_path, tree)
    if aliases:
        out.append(
            F.warning(
                "DEST_SHARED_STORAGE",
                f"{dev.path} shares its storage with "
                + ", ".join(a.path for a in aliases)
                + "; they are checked as part of it",
            )
        )
    mounted = [m.mount_point for d in family for m in d.mounts]
    if mounted:
        out.append(
            F.blocker(
                "DEST_MOUNTED",
                f"{dev.path} is mounted at {', '.join(mounted)}; unmount it first",
                mount_points=mounted,
            )
        )
    holders = [h for d in family for h in d.holders]
    if holders:
        out.append(
            F.blocker(
                "DEST_IN_USE",
                f"{dev.path} is in use by {', '.join('/dev/' + h for h in holders)}; stop it first",
            )
        )
    users = facts.processes
    if users:
        out.append(
            F.blocker(
                "DEST_OPEN",
                f"{users[0].describe()}"
                + (f" and {len(users) - 1} more" if len(users) > 1 else "")
                + "; close it first",
                processes=[{"pid": u.pid, "name": u.name} for u in users],
            )
        )
    if any(d.path in facts.swaps for d in family):
        out.append(F.blocker("DEST_SWAP", f"{dev.path} is active swap; run swapoff first"))
    if dev.read_only:
        out.append(F.blocker("DEST_READ_ONLY", f"{dev.path} is read-only; nothing can be written"))
    out.extend(_size_findings(manifest, dev))
    if dev.name in _beneath(tree, facts.repository_device):
        out.append(
            F.blocker(
                "DEST_HOLDS_REPOSITORY",
                f"{dev.path} holds the repository {facts.repository}; restore to another device",
            )
        )
    if dev.name in _beneath(tree, facts.root_device) or any(
        m.mount_point == "/" for d in family for m in d.mounts
    ):
        out.append(F.blocker("DEST_HOLDS_ROOT", f"{dev.path} holds the root file system"))
    out.extend(_content_findings(manifest, dev))

    protected: tuple[tuple[int, int], ...] = ()
    label_hits = _label_hits(manifest, dev, facts.container_label)
    if label_hits:
        if preserve_label:
            protected = _dest_label_ranges(dev, facts.own_label, facts.container_label)
            spans = ", ".join(f"bytes {s}-{e - 1}" for s, e in protected)
            out.append(
                F.info(
                    "LABEL_PRESERVED",
                    f"--preserve-label: {dev.path}'s label area ({spans}) is left untouched",
                    ranges=[list(r) for r in protected],
                )
            )
        else:
            out.append(
                F.warning(
                    "RESTORE_OVERWRITES_LABEL",
                    f"{label_hits}; add --preserve-label to leave {dev.path}'s label area alone",
                )
            )
    if manifest.fuzzy:
        out.append(
            F.warning(
                "IMAGE_FUZZY",
                f"image {manifest.id} was taken with imagetype dynamic (no snapshot) and may be "
                "inconsistent; a file-system check is run after the restore",
            )
        )
    return RestorePlan(dev.path, dev, False, tuple(out), protected)


def _size_findings(manifest: ImageManifest, dev: BlockDevice) -> list[Finding]:
    if dev.size < manifest.size:
        return [
            F.blocker(
                "DEST_TOO_SMALL",
                f"{dev.path} holds {human_size(dev.size)} ({dev.size} bytes) but the image needs "
                f"{human_size(manifest.size)} ({manifest.size} bytes); "
                "choose a larger destination",
                dest_size=dev.size,
                image_size=manifest.size,
            )
        ]
    if dev.size > manifest.size:
        return [
            F.info(
                "DEST_LARGER",
                f"{dev.path} is {human_size(dev.size - manifest.size)} larger than the image; "
                "the bytes beyond it are left as they are",
            )
        ]
    return []


def _content_findings(manifest: ImageManifest, dev: BlockDevice) -> list[Finding]:
    """Say what the restore replaces: a file system (maybe the image's own), the source."""
    out: list[Finding] = []
    if dev.signature is not None:
        same = dev.uuid is not None and dev.uuid == manifest.volume.uuid
        what = f"{dev.fstype}" + (f" '{dev.fs_label}'" if dev.fs_label else "")
        out.append(
            F.warning(
                "DEST_HAS_DATA",
                f"{dev.path} holds {what}"
                + (f" (UUID {dev.uuid})" if dev.uuid else "")
                + (", the same file system as the image" if same else "")
                + "; everything on it will be replaced",
            )
        )
    if manifest.volume.device == dev.path:
        out.append(F.info("DEST_IS_SOURCE", f"{dev.path} is the volume the image was taken from"))
    return out


def _label_hits(manifest: ImageManifest, dev: BlockDevice, disk: DiskLabel | None) -> str:
    """Say why a restore onto ``dev`` writes over a disk label, or return ""."""
    reasons: list[str] = []
    if manifest.label is not None:
        reasons.append(
            f"the image begins with a {manifest.label['kind']} disk label, which will be "
            f"written over {dev.path}'s first sectors"
        )
    covered: list[Finding] = []
    if disk is not None and dev.extent is not None:
        ext = dev.extent
        found = extent_findings(disk, ext.start, ext.size, disk=ext.container, volume=dev.path)
        covered = [f for f in found if f.severity is Severity.WARNING]
    if covered:
        reasons.append(
            f"{dev.path} covers the label of {covered[0].details['disk']} "
            f"({covered[0].code}): restoring overwrites that disk's label"
        )
    if not covered and dev.label is not None and manifest.label is None:
        reasons.append(
            f"{dev.path} holds {article(dev.label.kind.value)} label that will be overwritten"
        )
    return "; ".join(reasons)


def _dest_label_ranges(
    dev: BlockDevice, own: DiskLabel | None, disk: DiskLabel | None
) -> tuple[tuple[int, int], ...]:
    """Return the byte ranges of ``dev`` that hold a disk label, in ``dev``'s own offsets.

    The label at ``dev``'s start (its own, or the disk's when ``dev`` begins at
    sector 0), and the parts of its disk's label structures that fall inside ``dev``'s
    extent (an EBR, GPT's backup header at the end). With none found, the first
    sector, as TSM's client skips it.
    """
    ranges: set[tuple[int, int]] = set()
    if own is not None:
        ranges.update((r.start, r.end) for r in (*own.label_ranges, *own.backup_ranges))
    if disk is not None and dev.extent is not None:
        lo, hi = dev.extent.start, dev.extent.start + dev.extent.size
        for r in (*disk.label_ranges, *disk.backup_ranges):
            if r.start < hi and lo < r.end:
                ranges.add((max(r.start, lo) - lo, min(r.end, hi) - lo))
    if not ranges:
        ranges.add((0, dev.sector_size))
    return tuple(sorted(ranges))


def judge_file_restore(manifest: ImageManifest, facts: FileRestoreFacts) -> RestorePlan:
    """Return every guard's finding for restoring ``manifest`` into the file of ``facts``."""
    dest, repo = facts.dest, facts.repository
    parent = os.path.dirname(facts.path)
    out: list[Finding] = []
    if facts.is_link:
        out.append(
            F.blocker("DEST_NOT_FILE", f"{dest} is a symbolic link; give the file's own path")
        )
    elif facts.backs:
        out.append(
            F.blocker(
                "DEST_BACKS_DEVICE",
                f"{dest} is the backing file of {', '.join(facts.backs)}; writing it writes that "
                "device — detach it or restore to another file",
            )
        )
    elif facts.real_path == facts.real_repository or facts.real_path.startswith(
        facts.real_repository + "/"
    ):
        out.append(
            F.blocker(
                "DEST_IN_REPOSITORY",
                f"{dest} lies inside the repository {repo}; restore somewhere else",
            )
        )
    elif facts.parent_free is None:
        out.append(F.blocker("DEST_DIR_MISSING", f"{parent} does not exist; create it first"))
    elif facts.mode is not None:
        if not stat.S_ISREG(facts.mode):
            out.append(
                F.blocker(
                    "DEST_NOT_FILE",
                    f"{dest} exists and is not a regular file; --imagetofile writes a file",
                )
            )
        else:
            out.append(F.warning("DEST_EXISTS", f"{dest} exists and will be replaced"))
    # Only a directory that exists has free space to measure; a blocker above says why not.
    free = facts.parent_free
    if free is not None and (not out or out[0].severity is not Severity.BLOCKER):
        need = min(
            sum(manifest.chunk_size for _, d in manifest.chunks() if d != ZERO_ID), manifest.size
        )
        if free < need:
            out.append(
                F.blocker(
                    "DEST_NO_SPACE",
                    f"{parent} has {human_size(free)} free but the image holds "
                    f"{human_size(need)} of data; free some space there or restore elsewhere",
                    free=free,
                    needed=need,
                )
            )
    if manifest.fuzzy:
        out.append(
            F.warning("IMAGE_FUZZY", f"image {manifest.id} was taken without a snapshot (dynamic)")
        )
    return RestorePlan(facts.path, None, True, tuple(out))
