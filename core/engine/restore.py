"""restore image: guards first, then fetch → verify → decompress → write, then read back.

Nothing is written unless the caller names the destination exactly (``confirm``),
and the guards are evaluated again at the moment writing starts: a destination
mounted between the question and the answer is still refused.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from core import findings as F
from core.bytesource import FileSource
from core.devices import BlockDevice, DeviceTree, scan
from core.engine.reader import ChunkReader
from core.errors import BlockvaultError
from core.findings import Finding, Severity
from core.labels import read_label
from core.mounts import processes_using, read_active_swaps
from core.preflight import container_label, container_label_findings
from core.progress import Cancelled, Meter, ProgressFn
from core.repo.format import ZERO_ID, DamagedObject, ImageManifest, chunk_digest
from core.repo.repository import Repository
from core.report import JobReport
from core.targets import TargetCodeError, resolve
from core.units import human_size

BLKZEROOUT = 0x127F
"""ioctl: make a byte range of a block device read as zeros (loop: a hole punch, fast)."""


class RestoreRefused(BlockvaultError):
    """A guard or a missing confirmation stops the restore before anything is written."""


class RestoreDamaged(BlockvaultError):
    """A stored chunk failed its hash check; the restore stopped at it."""


class VerifyFailed(BlockvaultError):
    """Reading the destination back did not give the image's bytes."""


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


@dataclass
class RestoreReport(JobReport):
    """What a restore did."""

    image_id: str
    dest: str
    bytes_image: int = 0
    bytes_written: int = 0
    bytes_zeroed: int = 0
    chunks: int = 0
    verified: bool = False
    duration: float = 0.0
    findings: list[Finding] = field(default_factory=list)


def _family(dev: BlockDevice, tree: DeviceTree) -> list[BlockDevice]:
    """Return ``dev`` and every device carved from or built on it (partitions, slices, holders)."""
    out, todo, seen = [], [dev.name], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in tree.devices:
            continue
        seen.add(name)
        d = tree.devices[name]
        out.append(d)
        todo.extend(d.children)
        todo.extend(d.holders)
    return out


def _overlapping_loops(dev: BlockDevice, tree: DeviceTree) -> list[BlockDevice]:
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
        if backing in (dev.path, os.path.realpath(dev.path)):
            out.append(other)
        elif mine is not None and backing == mine.backing_file:
            o_start = other.loop.offset
            if o_start < end and start < o_start + other.size:
                out.append(other)
    return out


def _ancestors(dev: BlockDevice | None, tree: DeviceTree) -> set[str]:
    """Return ``dev``'s name and the names of every device it lies on."""
    names: set[str] = set()
    todo = [dev.name] if dev else []
    while todo:
        name = todo.pop()
        if name in names or name not in tree.devices:
            continue
        names.add(name)
        d = tree.devices[name]
        if d.parent:
            todo.append(d.parent)
        todo.extend(d.slaves)
    return names


def _device_of_path(path: str, tree: DeviceTree) -> BlockDevice | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return tree.by_number(os.major(st.st_dev), os.minor(st.st_dev))


def plan_restore(
    manifest: ImageManifest,
    dest: str,
    repo: Repository,
    *,
    to_file: bool = False,
    preserve_label: bool = False,
    tree: DeviceTree | None = None,
) -> RestorePlan:
    """Return every guard's finding for restoring ``manifest`` onto ``dest``."""
    tree = scan() if tree is None else tree
    if to_file:
        return _plan_file(manifest, dest, repo, tree)
    try:
        dev = resolve(dest, tree).device
    except TargetCodeError as e:
        return RestorePlan(dest, None, False, (F.blocker(e.code, e.message),))
    if not os.path.exists(dest) or not stat.S_ISBLK(os.stat(dest).st_mode):
        msg = f"{dest} is a mount point; give the block device to restore to (it must be unmounted)"
        return RestorePlan(dest, None, False, (F.blocker("DEST_NOT_BLOCK_DEVICE", msg),))
    out: list[Finding] = []
    aliases = _overlapping_loops(dev, tree)
    family = _family(dev, tree) + [d for a in aliases for d in _family(a, tree)]
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
    users = processes_using(devices=[d.path for d in family])
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
    swaps = set(read_active_swaps())
    if any(d.path in swaps for d in family):
        out.append(F.blocker("DEST_SWAP", f"{dev.path} is active swap; run swapoff first"))
    if dev.read_only:
        out.append(F.blocker("DEST_READ_ONLY", f"{dev.path} is read-only; nothing can be written"))
    if dev.size < manifest.size:
        out.append(
            F.blocker(
                "DEST_TOO_SMALL",
                f"{dev.path} holds {human_size(dev.size)} ({dev.size} bytes) but the image needs "
                f"{human_size(manifest.size)} ({manifest.size} bytes); "
                "choose a larger destination",
                dest_size=dev.size,
                image_size=manifest.size,
            )
        )
    elif dev.size > manifest.size:
        out.append(
            F.info(
                "DEST_LARGER",
                f"{dev.path} is {human_size(dev.size - manifest.size)} larger than the image; "
                "the bytes beyond it are left as they are",
            )
        )
    repo_dev = _device_of_path(repo.location, tree)
    if dev.name in _ancestors(repo_dev, tree):
        out.append(
            F.blocker(
                "DEST_HOLDS_REPOSITORY",
                f"{dev.path} holds the repository {repo.location}; restore to another device",
            )
        )
    if dev.name in _ancestors(_device_of_path("/", tree), tree) or any(
        m.mount_point == "/" for d in family for m in d.mounts
    ):
        out.append(F.blocker("DEST_HOLDS_ROOT", f"{dev.path} holds the root file system"))

    if dev.signature is not None:
        same = dev.uuid is not None and dev.uuid == manifest.volume.get("uuid")
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
    if manifest.volume.get("device") == dev.path:
        out.append(F.info("DEST_IS_SOURCE", f"{dev.path} is the volume the image was taken from"))

    protected: tuple[tuple[int, int], ...] = ()
    label_hits = _label_hits(manifest, dev, tree)
    if label_hits:
        if preserve_label:
            protected = _dest_label_ranges(dev, tree)
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


def _label_hits(manifest: ImageManifest, dev: BlockDevice, tree: DeviceTree) -> str:
    """Say why a restore onto ``dev`` writes over a disk label, or return ""."""
    reasons: list[str] = []
    if manifest.label is not None:
        reasons.append(
            f"the image begins with a {manifest.label['kind']} disk label, which will be "
            f"written over {dev.path}'s first sectors"
        )
    covered = [f for f in container_label_findings(dev, tree) if f.severity is Severity.WARNING]
    if covered:
        reasons.append(
            f"{dev.path} covers the label of {covered[0].details['disk']} "
            f"({covered[0].code}): restoring overwrites that disk's label"
        )
    if not covered and dev.label is not None and manifest.label is None:
        reasons.append(f"{dev.path} holds a {dev.label.kind.value} label that will be overwritten")
    return "; ".join(reasons)


def _dest_label_ranges(dev: BlockDevice, tree: DeviceTree) -> tuple[tuple[int, int], ...]:
    """Return the byte ranges of ``dev`` that hold a disk label, in ``dev``'s own offsets.

    The label at ``dev``'s start (its own, or the disk's when ``dev`` begins at
    sector 0), and the parts of its disk's label structures that fall inside ``dev``'s
    extent (an EBR, GPT's backup header at the end). With none found, the first
    sector, as TSM's client skips it.
    """
    ranges: set[tuple[int, int]] = set()
    try:
        with FileSource(dev.path) as src:
            own = read_label(src)
    except OSError:
        own = None
    if own is not None:
        ranges.update((r.start, r.end) for r in (*own.label_ranges, *own.backup_ranges))
    disk = container_label(dev, tree)
    if disk is not None and dev.extent is not None:
        lo, hi = dev.extent.start, dev.extent.start + dev.extent.size
        for r in (*disk.label_ranges, *disk.backup_ranges):
            if r.start < hi and lo < r.end:
                ranges.add((max(r.start, lo) - lo, min(r.end, hi) - lo))
    if not ranges:
        ranges.add((0, dev.sector_size))
    return tuple(sorted(ranges))


def _plan_file(
    manifest: ImageManifest, dest: str, repo: Repository, tree: DeviceTree
) -> RestorePlan:
    path = os.path.abspath(dest)
    out: list[Finding] = []
    parent = os.path.dirname(path)
    real = os.path.realpath(path)
    backed = [d.path for d in tree if d.loop and os.path.realpath(d.loop.backing_file) == real]
    if os.path.islink(path):
        out.append(
            F.blocker("DEST_NOT_FILE", f"{dest} is a symbolic link; give the file's own path")
        )
    elif backed:
        out.append(
            F.blocker(
                "DEST_BACKS_DEVICE",
                f"{dest} is the backing file of {', '.join(backed)}; writing it writes that "
                "device — detach it or restore to another file",
            )
        )
    elif real == os.path.realpath(repo.location) or real.startswith(
        os.path.realpath(repo.location) + "/"
    ):
        out.append(
            F.blocker(
                "DEST_IN_REPOSITORY",
                f"{dest} lies inside the repository {repo.location}; restore somewhere else",
            )
        )
    elif not os.path.isdir(parent):
        out.append(F.blocker("DEST_DIR_MISSING", f"{parent} does not exist; create it first"))
    elif os.path.exists(path):
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            out.append(
                F.blocker(
                    "DEST_NOT_FILE",
                    f"{dest} exists and is not a regular file; --imagetofile writes a file",
                )
            )
        else:
            out.append(F.warning("DEST_EXISTS", f"{dest} exists and will be replaced"))
    if not out or out[0].severity is not Severity.BLOCKER:
        vfs = os.statvfs(parent)
        free = vfs.f_bavail * vfs.f_frsize
        need = sum(manifest.chunk_size for _, d in manifest.chunks() if d != ZERO_ID)
        if free < min(need, manifest.size):
            out.append(
                F.blocker(
                    "DEST_NO_SPACE",
                    f"{parent} has {free} bytes free but the image holds {need} bytes of data",
                )
            )
    if manifest.fuzzy:
        out.append(
            F.warning("IMAGE_FUZZY", f"image {manifest.id} was taken without a snapshot (dynamic)")
        )
    return RestorePlan(path, None, True, tuple(out))


def _same_name(confirm: str | None, plan: RestorePlan) -> bool:
    if not confirm:
        return False
    return confirm == plan.confirm_name or os.path.realpath(confirm) == os.path.realpath(
        plan.confirm_name
    )


def _split(start: int, end: int, protected: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return [start, end) minus the protected ranges."""
    pieces = [(start, end)]
    for ps, pe in protected:
        nxt = []
        for s, e in pieces:
            if pe <= s or ps >= e:
                nxt.append((s, e))
                continue
            if s < ps:
                nxt.append((s, ps))
            if pe < e:
                nxt.append((pe, e))
        pieces = nxt
    return pieces


def restore_image(
    manifest: ImageManifest,
    dest: str,
    repo: Repository,
    *,
    confirm: str | None,
    to_file: bool = False,
    preserve_label: bool = False,
    verify: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    workers: int = 0,
    expected: tuple[object, ...] | None = None,
) -> RestoreReport:
    """Write ``manifest``'s image onto ``dest``; return the report.

    Raises:
        RestoreRefused: a blocker, or ``confirm`` does not name the destination exactly.
        RestoreDamaged: a chunk failed its hash check (the offset and id are named).
        VerifyFailed: ``verify`` read back different bytes.
    """
    with repo.lock():
        plan = plan_restore(manifest, dest, repo, to_file=to_file, preserve_label=preserve_label)
        blockers = [f for f in plan.findings if f.severity is Severity.BLOCKER]
        if blockers:
            raise RestoreRefused(f"restore to {dest} refused: {blockers[0].message}")
        if not _same_name(confirm, plan):
            raise RestoreRefused(
                f"restore to {plan.confirm_name} needs --confirm {plan.confirm_name} "
                "(the destination's exact name); nothing was written"
            )
        if expected is not None and expected != plan.identity:
            raise RestoreRefused(
                f"{plan.confirm_name} changed since it was shown and confirmed (another "
                "device, file or size now); nothing was written — run the restore again"
            )
        report = RestoreReport(manifest.id, plan.confirm_name, bytes_image=manifest.size)
        report.findings = list(plan.findings)
        meter = Meter("restoring", manifest.size, progress, cancel, report=report)
        dest = _Dest(plan, manifest.size)
        if plan.device is not None and os.fstat(dest.fd).st_rdev != os.makedev(
            plan.device.major, plan.device.minor
        ):
            dest.close()
            raise RestoreRefused(
                f"{plan.confirm_name} is no longer the device that was checked; nothing was written"
            )
        try:
            _write_chunks(dest, plan, manifest, repo, report, meter, workers)
            meter.check_cancel()
            if not plan.to_file:
                _zero_ranges(dest.fd, plan, manifest, report, meter)
            os.fsync(dest.fd)
        except Cancelled:
            # Unlike a backup, a restore cannot be undone: say what state the target is in.
            raise Cancelled(
                f"restore cancelled: {plan.confirm_name} is partly written "
                f"({report.bytes_written} bytes); restore it again before using it"
            ) from None
        finally:
            dest.close()
        if verify:
            meter.phase = "verifying"
            verify_dest(plan, manifest, repo, meter)
            report.verified = True
        if manifest.fuzzy and not plan.to_file:
            report.findings.append(_fsck(plan.confirm_name, manifest))
        report.duration = meter.elapsed
        meter.finish("done")
        return report


class _Dest:
    """The open destination: claimed exclusively, written with direct I/O where possible.

    Direct I/O writes a block device from aligned buffers without filling the page
    cache (the server's working set stays) and without a long flush at the end; a
    write the device will not take directly (unaligned) goes through the page cache.
    """

    def __init__(self, plan: RestorePlan, size: int) -> None:
        self.direct_fd: int | None = None
        if plan.to_file:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
            self.fd = os.open(plan.dest, flags, 0o600)
            try:
                os.ftruncate(self.fd, size)
            except OSError:
                os.close(self.fd)
                raise
            return
        try:
            # O_EXCL on a block device claims it: the kernel refuses while it is mounted.
            self.fd = os.open(plan.confirm_name, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as e:
            raise RestoreRefused(
                f"cannot open {plan.confirm_name} exclusively ({e.strerror}): it is in use; "
                "nothing was written"
            ) from None
        try:
            self.direct_fd = os.open(plan.confirm_name, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:
            self.direct_fd = None

    def write(self, data: memoryview, offset: int) -> None:
        """Write ``data`` (inside an aligned buffer when direct) at ``offset``."""
        if self.direct_fd is not None:
            try:
                _pwrite_all(self.direct_fd, data, offset)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        _pwrite_all(self.fd, data, offset)

    def close(self) -> None:
        """Close both descriptors (the claim goes with the first)."""
        if self.direct_fd is not None:
            os.close(self.direct_fd)
        os.close(self.fd)


def _write_chunks(
    dest: _Dest,
    plan: RestorePlan,
    manifest: ImageManifest,
    repo: Repository,
    report: RestoreReport,
    meter: Meter,
    workers: int,
) -> None:
    lock = threading.Lock()
    stop = threading.Event()
    cs = manifest.chunk_size
    items = iter([(i, d) for i, d in manifest.chunks() if d != ZERO_ID])
    nworkers = workers or (os.cpu_count() or 1) + 1

    def next_item() -> tuple[int, bytes] | None:
        with lock:
            return None if stop.is_set() else next(items, None)

    def worker() -> None:
        aligned = mmap.mmap(-1, cs) if dest.direct_fd is not None else None
        try:
            while (item := next_item()) is not None:
                meter.check_cancel()
                index, digest = item
                offset = index * cs
                try:
                    data = repo.get_chunk(digest)
                except DamagedObject as e:
                    raise RestoreDamaged(
                        f"{e.message} (image byte {offset}); restore stopped, "
                        f"{plan.confirm_name} is partly written — run 'blockvault repo check'"
                    ) from None
                if aligned is not None:
                    aligned[: len(data)] = data
                    view = memoryview(aligned)
                else:
                    view = memoryview(data)
                for s, e in _split(offset, offset + len(data), plan.protected):
                    dest.write(view[s - offset : e - offset], s)
                with lock:
                    report.bytes_written += len(data)
                    report.chunks += 1
                meter.add(len(data))
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=nworkers, thread_name_prefix="bv-restore") as pool:
        futures = [pool.submit(worker) for _ in range(nworkers)]
        try:
            wait(futures)
        except BaseException:
            stop.set()
            raise
    for f in futures:
        f.result()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _zero_ranges(
    fd: int, plan: RestorePlan, manifest: ImageManifest, report: RestoreReport, meter: Meter
) -> None:
    """Make the image's zero chunks read as zeros on the device (one ioctl per run)."""
    cs = manifest.chunk_size
    runs: list[tuple[int, int]] = []
    for i, d in manifest.chunks():
        if d != ZERO_ID:
            continue
        s, e = i * cs, min((i + 1) * cs, manifest.size)
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], e)
        else:
            runs.append((s, e))
    zeros = bytes(cs)
    for s, e in runs:
        for ps, pe in _split(s, e, plan.protected):
            meter.check_cancel()
            try:
                fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", ps, pe - ps))
            except OSError:
                for off in range(ps, pe, cs):
                    _pwrite_all(fd, memoryview(zeros)[: min(cs, pe - off)], off)
            report.bytes_zeroed += pe - ps
            meter.add(pe - ps)


def verify_dest(
    plan: RestorePlan, manifest: ImageManifest, repo: Repository, meter: Meter | None = None
) -> None:
    """Read the destination back and compare every chunk with the image (``--verifyimage``)."""
    cs = manifest.chunk_size
    reader = ChunkReader(plan.confirm_name, 0, cs)
    try:
        for i, digest in manifest.chunks():
            if meter is not None:
                meter.check_cancel()
            start = i * cs
            length = min(cs, manifest.size - start)
            data = reader.read(length, [(start, start + length)], start)
            masked = _split(start, start + length, plan.protected) != [(start, start + length)]
            if masked:
                expected = bytes(length) if digest == ZERO_ID else repo.get_chunk(digest)
                same = all(
                    data[s - start : e - start] == expected[s - start : e - start]
                    for s, e in _split(start, start + length, plan.protected)
                )
            elif digest == ZERO_ID:
                same = reader.is_zero(0, length)
            else:
                same = chunk_digest(data) == digest
            if not same:
                raise VerifyFailed(
                    f"verify: {plan.confirm_name} differs from image {manifest.id} in the "
                    f"chunk at byte {start}; the restore is not trustworthy"
                )
    finally:
        reader.close()


def _fsck(device: str, manifest: ImageManifest) -> Finding:
    """Run a read-only file-system check after restoring a fuzzy image."""
    fstype = manifest.volume.get("fstype") or ""
    cmd = ["e2fsck", "-fn", device] if fstype.startswith("ext") else ["fsck", "-n", device]
    if fstype == "xfs":
        cmd = ["xfs_repair", "-n", device]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return F.warning("FSCK_NOT_RUN", f"could not check {device}: {e}")
    last = (p.stdout.strip().splitlines() or [""])[-1]
    if p.returncode == 0:
        return F.info("FSCK_CLEAN", f"{' '.join(cmd)}: clean ({last})")
    return F.warning(
        "FSCK_ERRORS",
        f"{' '.join(cmd)} found problems (exit {p.returncode}): {last}; repair with fsck -y",
        output=p.stdout[-4000:],
    )
