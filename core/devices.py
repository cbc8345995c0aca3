"""The machine's block devices as one immutable tree.

Built from sysfs (``/sys/class/block``), ``/proc/self/mountinfo`` and a few KiB of
each device (file-system signature, disk label). Loop devices carry their backing
file, offset and size limit; a loop device that maps part of a file which is also
attached whole stands for a partition or slice of that loop disk, because
partition scanning is off for loop devices on many machines.

Each device also knows the devices that map some of its bytes (a disk and its
partitions, loop slices over the same backing file) and the loop devices whose
backing file lies on its mounted file system: a volume is only as still as
everything that shares its bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from core.bytesource import FileSource
from core.labels import DiskLabel, read_label
from core.mounts import MOUNTINFO_PATH, Mount, mount_containing, read_mounts
from core.signatures import Signature, probe

SYS_CLASS_BLOCK = "/sys/class/block"


class DeviceKind(StrEnum):
    """What a block device is."""

    DISK = "disk"
    PARTITION = "partition"
    LOOP = "loop"
    LVM = "lvm"
    DM = "dm"
    MD = "md"


@dataclass(frozen=True)
class LoopInfo:
    """What a loop device maps: ``size_limit`` bytes of ``backing_file`` from ``offset``."""

    backing_file: str
    offset: int
    size_limit: int
    """0 means "to the end of the file"."""
    autoclear: bool


@dataclass(frozen=True)
class Extent:
    """Where a volume lies on the disk that carries its label: bytes [start, start+size)."""

    container: str
    """The device (or, for a loop slice of an unattached file, the file) holding the label."""
    start: int
    size: int


class Relation(StrEnum):
    """Where another device's bytes lie, seen from this one."""

    CONTAINS = "contains"
    """All of the other's bytes lie in this one (a disk, and a partition of it)."""
    INSIDE = "inside"
    """This one lies within the other (a partition, and its disk)."""
    SAME = "same"
    """Both map exactly the same bytes (two loop devices over one whole file)."""
    PARTIAL = "partial"
    """They share some bytes, and each has bytes of its own."""


@dataclass(frozen=True)
class Overlap:
    """Another device that maps some of this one's bytes, and where they lie."""

    name: str
    path: str
    kind: DeviceKind
    major: int
    minor: int
    relation: Relation

    def describe(self) -> str:
        """Return ``/dev/loop6 (a slice of it)``, as the findings name it."""
        what = {
            Relation.CONTAINS: (
                "a partition of it" if self.kind is DeviceKind.PARTITION else "a slice of it"
            ),
            Relation.INSIDE: "the disk it lies on",
            Relation.SAME: "a device over the same bytes",
            Relation.PARTIAL: "a device over some of the same bytes",
        }[self.relation]
        return f"{self.path} ({what})"


@dataclass(frozen=True)
class LoopUser:
    """A loop device whose backing file lies on a device's mounted file system.

    The kernel keeps that file open as long as the loop device is attached: the file
    system cannot be unmounted, and (unless the loop device is read-only) it cannot
    be remounted read-only either.
    """

    name: str
    path: str
    backing_file: str
    read_only: bool


@dataclass(frozen=True)
class BlockDevice:
    """One block device, as seen when the tree was built."""

    name: str
    """Kernel name (``loop3``, ``sda1``, ``dm-0``)."""
    path: str
    """Device node (``/dev/loop3``)."""
    kind: DeviceKind
    major: int
    minor: int
    size: int
    """Size in bytes."""
    sector_size: int
    """Logical sector size in bytes."""
    read_only: bool
    removable: bool = False
    model: str | None = None
    serial: str | None = None
    signature: Signature | None = None
    label: DiskLabel | None = None
    """The disk label found in the device's own first sectors, if any."""
    mounts: tuple[Mount, ...] = ()
    parent: str | None = None
    """Kernel name of the device this one is carved from (disk of a partition or loop slice)."""
    slaves: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    loop: LoopInfo | None = None
    extent: Extent | None = None
    dm_name: str | None = None
    dm_uuid: str | None = None
    md_level: str | None = None
    probe_error: str | None = None
    """Why the device's bytes could not be read (signature and label then unknown)."""
    overlaps: tuple[Overlap, ...] = ()
    """The other devices that map some of this one's bytes."""
    loop_users: tuple[LoopUser, ...] = ()
    """The loop devices whose backing file lies on this device's mounted file system."""

    @property
    def fstype(self) -> str | None:
        """The signature's type string (``ext4``), or None for a raw volume.

        A device that cannot be read but is mounted takes the type the mount table gives.
        """
        if self.signature is not None:
            return self.signature.fstype.value
        if self.probe_error is not None and self.mounts:
            return self.mounts[0].fstype
        return None

    @property
    def uuid(self) -> str | None:
        """The file system's (or volume signature's) UUID."""
        return self.signature.uuid if self.signature else None

    @property
    def fs_label(self) -> str | None:
        """The file system's label."""
        return self.signature.label if self.signature else None

    @property
    def has_filesystem(self) -> bool:
        """True when the device holds a mountable file system (or is mounted but unreadable)."""
        if self.signature is not None:
            return self.signature.is_filesystem
        return self.probe_error is not None and bool(self.mounts)

    @property
    def is_raw(self) -> bool:
        """True for a raw volume: no mountable file system (the guide's RAW tree)."""
        return not self.has_filesystem and self.probe_error is None

    @property
    def mount_points(self) -> tuple[str, ...]:
        """Every place the device is mounted."""
        return tuple(m.mount_point for m in self.mounts)

    @property
    def mounted(self) -> bool:
        """True when the device is mounted anywhere."""
        return bool(self.mounts)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of this device (without its children)."""
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.kind.value,
            "major": self.major,
            "minor": self.minor,
            "size": self.size,
            "sector_size": self.sector_size,
            "read_only": self.read_only,
            "removable": self.removable,
            "model": self.model,
            "serial": self.serial,
            "fstype": self.fstype,
            "uuid": self.uuid,
            "fs_label": self.fs_label,
            "raw": self.is_raw,
            "disk_label": self.label.kind.value if self.label else None,
            "mounts": [
                {
                    "mount_point": m.mount_point,
                    "root": m.root,
                    "fstype": m.fstype,
                    "read_only": m.read_only,
                }
                for m in self.mounts
            ],
            "parent": self.parent,
            "slaves": list(self.slaves),
            "holders": list(self.holders),
            "loop": (
                {
                    "backing_file": self.loop.backing_file,
                    "offset": self.loop.offset,
                    "size_limit": self.loop.size_limit,
                    "autoclear": self.loop.autoclear,
                }
                if self.loop
                else None
            ),
            "extent": (
                {
                    "container": self.extent.container,
                    "start": self.extent.start,
                    "size": self.extent.size,
                }
                if self.extent
                else None
            ),
            "dm_name": self.dm_name,
            "dm_uuid": self.dm_uuid,
            "md_level": self.md_level,
            "probe_error": self.probe_error,
            "overlaps": [
                {"name": o.name, "path": o.path, "relation": o.relation.value}
                for o in self.overlaps
            ],
            "loop_users": [
                {"path": u.path, "backing_file": u.backing_file, "read_only": u.read_only}
                for u in self.loop_users
            ],
        }


@dataclass(frozen=True)
class DeviceTree:
    """Every block device by kernel name, and the roots of the disk → partition → holder tree."""

    devices: Mapping[str, BlockDevice]
    roots: tuple[str, ...]
    mounts: tuple[Mount, ...] = field(default=())
    """The mount table the tree was built with."""

    def __iter__(self) -> Iterator[BlockDevice]:
        return iter(self.devices.values())

    def get(self, name: str) -> BlockDevice | None:
        """Return the device with kernel name ``name``."""
        return self.devices.get(name)

    def by_path(self, path: str) -> BlockDevice | None:
        """Return the device whose node is ``path`` (symlinks resolved), if any."""
        real = os.path.realpath(path)
        for dev in self.devices.values():
            if dev.path == real:
                return dev
        try:
            st = os.stat(real)
        except OSError:
            return None
        if stat.S_ISBLK(st.st_mode):
            return self.by_number(os.major(st.st_rdev), os.minor(st.st_rdev))
        return None

    def by_number(self, major: int, minor: int) -> BlockDevice | None:
        """Return the device with this major:minor."""
        for dev in self.devices.values():
            if (dev.major, dev.minor) == (major, minor):
                return dev
        return None

    def walk(self) -> Iterator[tuple[int, BlockDevice]]:
        """Yield ``(depth, device)`` in tree order; a device with two parents appears twice."""

        def visit(name: str, depth: int, seen: frozenset[str]) -> Iterator[tuple[int, BlockDevice]]:
            dev = self.devices[name]
            yield depth, dev
            for child in dev.children:
                if child not in seen:
                    yield from visit(child, depth + 1, seen | {child})

        for root in self.roots:
            yield from visit(root, 0, frozenset({root}))

    def to_dict(self) -> dict[str, Any]:
        """Return the whole tree as one JSON document."""

        def node(name: str, seen: frozenset[str]) -> dict[str, Any]:
            dev = self.devices[name]
            d = dev.to_dict()
            d["children"] = [node(c, seen | {c}) for c in dev.children if c not in seen]
            return d

        return {"devices": [node(r, frozenset({r})) for r in self.roots]}


# --- sysfs adapter -----------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str, default: int = 0) -> int:
    text = _read(path)
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _listdir(path: str) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


@dataclass(frozen=True)
class _Raw:
    """What sysfs says of one device, before the tree is linked."""

    device: BlockDevice
    """Its sysfs facts; :func:`scan` adds its bytes' signature and label, its mounts,
    and its place in the tree (``parent``, ``children``, ``extent``)."""
    disk: str | None
    """The disk a partition lies on, as sysfs nests it."""
    start: int
    """Where a partition starts on that disk, in bytes."""


def _scan_sysfs(root: str) -> list[_Raw]:
    raws: list[_Raw] = []
    for name in _listdir(root):
        sys = os.path.join(root, name)
        size = _read_int(os.path.join(sys, "size")) * 512  # sysfs counts 512-byte units
        if size == 0:
            continue  # unattached loop devices, empty zram, ejected media
        dev = (_read(os.path.join(sys, "dev")) or "0:0").split(":")
        is_partition = os.path.exists(os.path.join(sys, "partition"))
        disk = None
        if is_partition:
            disk = os.path.basename(os.path.dirname(os.path.realpath(sys)))
        queue = (
            os.path.join(os.path.dirname(os.path.realpath(sys)), "queue")
            if is_partition
            else (os.path.join(sys, "queue"))
        )
        loop = None
        if os.path.isdir(os.path.join(sys, "loop")):
            backing = _read(os.path.join(sys, "loop", "backing_file")) or ""
            loop = LoopInfo(
                backing_file=backing,
                offset=_read_int(os.path.join(sys, "loop", "offset")),
                size_limit=_read_int(os.path.join(sys, "loop", "sizelimit")),
                autoclear=_read(os.path.join(sys, "loop", "autoclear")) == "1",
            )
        dm_uuid = (
            _read(os.path.join(sys, "dm", "uuid"))
            if os.path.isdir(os.path.join(sys, "dm"))
            else None
        )
        if os.path.isdir(os.path.join(sys, "dm")):
            kind = DeviceKind.LVM if (dm_uuid or "").startswith("LVM-") else DeviceKind.DM
        elif os.path.isdir(os.path.join(sys, "md")):
            kind = DeviceKind.MD
        elif is_partition:
            kind = DeviceKind.PARTITION
        elif name.startswith("loop"):
            kind = DeviceKind.LOOP
        else:
            kind = DeviceKind.DISK
        device_dir = os.path.join(sys, "device")
        major, minor = int(dev[0]), int(dev[1])
        device = BlockDevice(
            name=name,
            path=_device_node(name, major, minor),
            kind=kind,
            major=major,
            minor=minor,
            size=size,
            sector_size=_read_int(os.path.join(queue, "logical_block_size"), 512) or 512,
            read_only=_read(os.path.join(sys, "ro")) == "1",
            removable=_read(os.path.join(sys, "removable")) == "1",
            model=_read(os.path.join(device_dir, "model")) or None,
            serial=(
                _read(os.path.join(sys, "serial"))
                or _read(os.path.join(device_dir, "serial"))
                or None
            ),
            slaves=_listdir(os.path.join(sys, "slaves")),
            holders=_listdir(os.path.join(sys, "holders")),
            loop=loop,
            dm_name=_read(os.path.join(sys, "dm", "name"))
            if kind in (DeviceKind.DM, DeviceKind.LVM)
            else None,
            dm_uuid=dm_uuid,
            md_level=_read(os.path.join(sys, "md", "level")) if kind is DeviceKind.MD else None,
        )
        raws.append(_Raw(device, disk, _read_int(os.path.join(sys, "start")) * 512))
    return raws


@dataclass(frozen=True)
class _Span:
    """Where a device's bytes lie: ``[start, end)`` of the disk or file ``base`` names."""

    base: tuple[object, ...]
    start: int
    end: int


MAX_LAYERS = 8
"""How many loop-over-device layers :func:`_spans` follows down (a loop of itself ends there)."""


def _spans(raws: Sequence[_Raw]) -> dict[str, _Span]:
    """Return where each device's bytes lie, beneath every layer of partitions and loops.

    A partition lies on its disk; a loop device on its backing file or, when that is a
    block device, wherever that device's bytes lie. A regular file is named by device
    and inode, so two paths to one file are one base.
    """
    by_name = {r.device.name: r for r in raws}
    by_number = {(r.device.major, r.device.minor): r.device.name for r in raws}
    spans: dict[str, _Span] = {}

    def span(name: str, depth: int) -> _Span:
        if name in spans:
            return spans[name]
        r = by_name[name]
        d = r.device
        base: tuple[object, ...] = ("device", name)
        start = 0
        if d.kind is DeviceKind.PARTITION and r.disk in by_name and depth < MAX_LAYERS:
            under = span(r.disk, depth + 1)
            base, start = under.base, under.start + r.start
        elif d.loop is not None:
            start = d.loop.offset
            try:
                st = os.stat(d.loop.backing_file)
            except OSError:  # gone ("... (deleted)") or not ours to see: its path names it
                base = ("file", d.loop.backing_file)
            else:
                lower = by_number.get((os.major(st.st_rdev), os.minor(st.st_rdev)))
                if stat.S_ISBLK(st.st_mode) and lower not in (None, name) and depth < MAX_LAYERS:
                    under = span(lower, depth + 1)
                    base, start = under.base, under.start + d.loop.offset
                else:
                    base = ("file", st.st_dev, st.st_ino)
        spans[name] = _Span(base, start, start + d.size)
        return spans[name]

    for name in by_name:
        span(name, 0)
    return spans


def _relation(mine: _Span, other: _Span) -> Relation:
    if (mine.start, mine.end) == (other.start, other.end):
        return Relation.SAME
    if mine.start <= other.start and other.end <= mine.end:
        return Relation.CONTAINS
    if other.start <= mine.start and mine.end <= other.end:
        return Relation.INSIDE
    return Relation.PARTIAL


def _overlaps(found: Sequence[BlockDevice], spans: Mapping[str, _Span]) -> dict[str, list[Overlap]]:
    """Return, for each device, the other devices that map some of its bytes."""
    by_base: dict[tuple[object, ...], list[BlockDevice]] = {}
    for d in found:
        by_base.setdefault(spans[d.name].base, []).append(d)
    out: dict[str, list[Overlap]] = {d.name: [] for d in found}
    for group in by_base.values():
        for d in group:
            mine = spans[d.name]
            for o in group:
                theirs = spans[o.name]
                if o.name != d.name and max(mine.start, theirs.start) < min(mine.end, theirs.end):
                    out[d.name].append(
                        Overlap(o.name, o.path, o.kind, o.major, o.minor, _relation(mine, theirs))
                    )
    return out


def _loop_users(found: Sequence[BlockDevice], mounts: Sequence[Mount]) -> dict[str, list[LoopUser]]:
    """Return, for each device, the loop devices whose backing file lies on its file system."""
    by_number = {(d.major, d.minor): d.name for d in found}
    by_node = {os.path.realpath(d.path): d.name for d in found}
    out: dict[str, list[LoopUser]] = {d.name: [] for d in found}
    for d in found:
        if d.loop is None or not d.loop.backing_file.startswith("/"):
            continue
        host = mount_containing(os.path.realpath(d.loop.backing_file), mounts)
        if host is None:
            continue
        owner = by_number.get((host.major, host.minor))
        if owner is None and host.source.startswith("/dev/"):
            owner = by_node.get(os.path.realpath(host.source))
        if owner is not None and owner != d.name:
            out[owner].append(LoopUser(d.name, d.path, d.loop.backing_file, d.read_only))
    return out


def mounts_of(major: int, minor: int, node: str, mounts: Sequence[Mount]) -> tuple[Mount, ...]:
    """Return the mounts of the device ``major:minor`` (node ``node``) among ``mounts``.

    Matches by device number or by source path: btrfs reports an anonymous device
    number in mountinfo.
    """
    real = os.path.realpath(node)
    return tuple(
        m
        for m in mounts
        if (m.major, m.minor) == (major, minor)
        or (m.source.startswith("/dev/") and os.path.realpath(m.source) == real)
    )


def writable(mounts: Sequence[Mount]) -> bool:
    """True when a file system mounted so can change: a mount or its superblock is rw."""
    return any(not m.read_only or "ro" not in m.super_options for m in mounts)


def _device_node(name: str, major: int, minor: int) -> str:
    node = f"/dev/{name}"
    if os.path.exists(node):
        return node
    by_number = f"/dev/block/{major}:{minor}"
    return os.path.realpath(by_number) if os.path.exists(by_number) else node


def _probe_bytes(node: str) -> tuple[Signature | None, DiskLabel | None, str | None]:
    try:
        with FileSource(node) as src:
            return probe(src), read_label(src), None
    except OSError as e:
        return None, None, e.strerror or str(e)


def _is_whole_file_loop(dev: BlockDevice) -> bool:
    return dev.loop is not None and dev.loop.offset == 0 and dev.loop.size_limit == 0


def devices_signature(sys_class_block: str = SYS_CLASS_BLOCK) -> tuple[object, ...]:
    """Return a cheap fingerprint of the device set: it changes when a scan would differ.

    Names and sizes from sysfs (a loop device attached or resized changes its size)
    and the mount table; no device is opened. A console polls this, and rescans
    only when it changes.
    """
    names = _listdir(sys_class_block)
    sizes = tuple(_read_int(os.path.join(sys_class_block, n, "size")) for n in names)
    try:
        with open(MOUNTINFO_PATH, "rb") as f:
            mounts = hash(f.read())
    except OSError:
        mounts = 0
    return (names, sizes, mounts)


def scan(
    sys_class_block: str = SYS_CLASS_BLOCK,
    mounts: tuple[Mount, ...] | None = None,
) -> DeviceTree:
    """Return the machine's block devices as a :class:`DeviceTree`.

    Reads a few KiB of each device (read-only) for its signature and label;
    a device that cannot be opened keeps ``probe_error`` and is listed anyway.
    """
    raws = _scan_sysfs(sys_class_block)
    mounts = read_mounts() if mounts is None else mounts
    found = [r.device for r in raws]
    names = {d.name for d in found}

    # A loop slice's parent: the loop device that maps the same file whole.
    whole_loop_by_file = {
        d.loop.backing_file: d.name for d in found if d.loop and _is_whole_file_loop(d)
    }
    parents: dict[str, list[str]] = {d.name: [] for d in found}
    extents: dict[str, Extent] = {}
    for r in raws:
        d = r.device
        if d.kind is DeviceKind.PARTITION and r.disk in names:
            parents[d.name].append(r.disk)
            extents[d.name] = Extent(f"/dev/{r.disk}", r.start, d.size)
        elif d.loop and not _is_whole_file_loop(d):
            disk = whole_loop_by_file.get(d.loop.backing_file)
            if disk and disk != d.name:
                parents[d.name].append(disk)
                extents[d.name] = Extent(f"/dev/{disk}", d.loop.offset, d.size)
            elif d.loop.backing_file.startswith("/") and os.path.exists(d.loop.backing_file):
                extents[d.name] = Extent(d.loop.backing_file, d.loop.offset, d.size)
        parents[d.name].extend(s for s in d.slaves if s in names)
    overlaps = _overlaps(found, _spans(raws))
    loop_users = _loop_users(found, mounts)
    children: dict[str, list[str]] = {d.name: [] for d in found}
    for name, ps in parents.items():
        for p in ps:
            children[p].append(name)

    devices: dict[str, BlockDevice] = {}
    for d in found:
        signature, label, error = _probe_bytes(d.path)
        own_mounts = mounts_of(d.major, d.minor, d.path, mounts)
        devices[d.name] = replace(
            d,
            signature=signature,
            label=label,
            mounts=own_mounts,
            parent=parents[d.name][0] if parents[d.name] else None,
            children=tuple(sorted(children[d.name], key=_natural_key)),
            extent=extents.get(d.name),
            probe_error=error,
            overlaps=tuple(sorted(overlaps[d.name], key=lambda o: _natural_key(o.name))),
            loop_users=tuple(sorted(loop_users[d.name], key=lambda u: _natural_key(u.name))),
        )
    roots = tuple(sorted((n for n, ps in parents.items() if not ps), key=_natural_key))
    return DeviceTree(devices=devices, roots=roots, mounts=mounts)


def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort ``loop10`` after ``loop9``."""
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return (head, int(tail) if tail else -1)
