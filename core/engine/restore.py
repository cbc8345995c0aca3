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
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from core import findings as F
from core import unfinished
from core.devices import DeviceTree, scan
from core.engine.guards import (
    RestorePlan,
    judge_file_restore,
    judge_restore,
    read_file_restore_facts,
    read_restore_facts,
)
from core.engine.reader import ChunkReader
from core.errors import BlockvaultError
from core.findings import Finding, Severity
from core.progress import Cancelled, Meter, ProgressFn
from core.repo.format import ZERO_ID, DamagedObject, ImageManifest
from core.repo.repository import Repository
from core.report import JobReport
from core.workers import run_workers

BLKZEROOUT = 0x127F
"""ioctl: make a byte range of a block device read as zeros (loop: a hole punch, fast)."""


class RestoreRefused(BlockvaultError):
    """A guard or a missing confirmation stops the restore before anything is written."""


class RestoreDamaged(BlockvaultError):
    """A stored chunk failed its hash check; the restore stopped at it."""


class RestoreWriteFailed(BlockvaultError):
    """The destination (or the repository) failed mid-restore: the target is partly written."""


class VerifyFailed(BlockvaultError):
    """Reading the destination back did not give the image's bytes."""


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


def plan_restore(
    manifest: ImageManifest,
    dest: str,
    repo: Repository,
    *,
    to_file: bool = False,
    preserve_label: bool = False,
    tree: DeviceTree | None = None,
) -> RestorePlan:
    """Return every guard's finding for restoring ``manifest`` onto ``dest``.

    The guards' facts are read from this machine now (``tree``: its devices, scanned
    when not given) and judged by :mod:`core.engine.guards`.
    """
    tree = scan() if tree is None else tree
    if to_file:
        return judge_file_restore(manifest, read_file_restore_facts(dest, repo.location, tree))
    facts = read_restore_facts(dest, repo.location, tree)
    return judge_restore(manifest, facts, preserve_label=preserve_label)


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
    then_increment: str | None = None,
) -> RestoreReport:
    """Write ``manifest``'s image onto ``dest``; return the report.

    Before the first write to a device a mark says a restore to it began
    (:mod:`core.unfinished`); it goes once the image is on it (and read back, with
    ``verify``). With ``then_increment`` the caller replays that increment next and
    removes the mark itself (:func:`core.unfinished.finished_here`) when that is done.

    Raises:
        RestoreRefused: a blocker, or ``confirm`` does not name the destination exactly.
        RestoreDamaged: a chunk the image needs is missing (found before anything is
            written) or failed its hash check (the offset and id are named).
        RestoreWriteFailed: the destination failed a write; the written range is named.
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
        refuse_missing_chunks(repo, manifest)
        report = RestoreReport(manifest.id, plan.confirm_name, bytes_image=manifest.size)
        # The name was confirmed with these findings on screen: its warnings were read.
        report.findings = [
            replace(f, confirmed=True) if f.severity is Severity.WARNING else f
            for f in plan.findings
        ]
        meter = Meter("restoring", manifest.size, progress, cancel, report=report)
        # The destination open for writing (``dest`` stays the name the user gave).
        opened = _Dest(plan, manifest.size)
        if plan.device is not None and os.fstat(opened.fd).st_rdev != os.makedev(
            plan.device.major, plan.device.minor
        ):
            opened.close()
            raise RestoreRefused(
                f"{plan.confirm_name} is no longer the device that was checked; nothing was written"
            )
        mark = None
        if plan.device is not None:
            try:
                mark = unfinished.begin(plan.device, manifest.id, then_increment)
            except OSError as e:
                opened.close()
                raise RestoreRefused(
                    f"cannot leave the mark of this restore in {unfinished.marks_dir()} "
                    f"({e.strerror}); nothing was written"
                ) from None
        span = _Span()
        try:
            _write_chunks(opened, plan, manifest, repo, report, meter, workers, span)
            meter.check_cancel()
            if not plan.to_file:
                _zero_ranges(opened.fd, plan, manifest, report, meter, span)
            os.fsync(opened.fd)
        except Cancelled:
            # Unlike a backup, a restore cannot be undone: say what state the target is in.
            raise Cancelled(
                f"restore cancelled: {plan.confirm_name} is {span.words()}; restore it again "
                "before using it"
            ) from None
        except _WriteError as e:
            raise RestoreWriteFailed(
                f"cannot write {plan.confirm_name} between bytes {e.offset} and {e.end}: "
                f"{e.error.strerror}; "
                f"the restore stopped and {plan.confirm_name} is {span.words()} — check the "
                "device (dmesg), then restore again"
            ) from None
        except OSError as e:  # the final fsync: some write did not reach the device
            raise RestoreWriteFailed(
                f"{plan.confirm_name} did not take the restored data ({e.strerror} on flush); "
                f"it is {span.words()} — check the device (dmesg), then restore again"
            ) from None
        finally:
            opened.close()
        if verify:
            meter.phase = "verifying"
            verify_dest(plan, manifest, repo, meter)
            report.verified = True
        if mark is not None and then_increment is None:
            unfinished.finished(mark)
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
    span: _Span,
) -> None:
    lock = threading.Lock()
    cs = manifest.chunk_size

    def worker(take: Iterator[tuple[int, bytes]]) -> None:
        # One aligned buffer per worker for O_DIRECT writes; freed with the worker.
        aligned = mmap.mmap(-1, cs) if dest.direct_fd is not None else None
        for index, digest in take:
            offset = index * cs
            try:
                data = repo.get_chunk(digest)
            except DamagedObject as damaged:
                raise RestoreDamaged(
                    f"{damaged.message} (image byte {offset}); restore stopped, "
                    f"{plan.confirm_name} is {span.words()} — run 'blockvault repo check'"
                ) from None
            if len(data) > cs or offset + len(data) > manifest.size:
                # A chunk that would write past the image's end: never beyond what the
                # findings said would be written.
                raise RestoreDamaged(
                    f"image {manifest.id}: chunk {digest.hex()} holds {len(data)} bytes at "
                    f"byte {offset}, past the image's {manifest.size} bytes; restore stopped, "
                    f"{plan.confirm_name} is {span.words()} — run 'blockvault repo check'"
                )
            if aligned is not None:
                aligned[: len(data)] = data
                view = memoryview(aligned)
            else:
                view = memoryview(data)
            for s, e in _split(offset, offset + len(data), plan.protected):
                span.write(dest.write, view[s - offset : e - offset], s)
            with lock:
                report.bytes_written += len(data)
                report.chunks += 1
            meter.add(len(data))

    run_workers(
        ((i, d) for i, d in manifest.chunks() if d != ZERO_ID),
        worker,
        threads=workers or repo.store.readers,
        check_cancel=meter.check_cancel,
        name="bv-restore",
    )


def refuse_missing_chunks(repo: Repository, manifest: ImageManifest) -> None:
    """Raise :class:`RestoreDamaged` before any write when a chunk the image needs is not stored.

    One ``lstat`` per distinct chunk: a stored chunk is a regular file holding at least
    a chunk header, so a lost, emptied or truncated-to-nothing object is found here
    rather than after part of the target has been overwritten.
    """
    needed = manifest.stored_digests()
    missing = needed - repo.stored_chunks(needed)
    if not missing:
        return
    first = min(i for i, d in manifest.chunks() if d in missing)
    raise RestoreDamaged(
        f"image {manifest.id} needs {len(missing)} chunk(s) the repository does not hold "
        f"(the first at image byte {first * manifest.chunk_size}: "
        f"{manifest.chunk(first).hex()}); nothing was written — run 'blockvault repo check'"
    )


class _WriteError(Exception):
    """A write of ``offset``–``end`` failed (internal: becomes RestoreWriteFailed)."""

    def __init__(self, offset: int, end: int, error: OSError) -> None:
        super().__init__(offset, end, error)
        self.offset, self.end = offset, end
        self.error = error


class _Span:
    """The byte range of the destination written so far, for the message when a restore stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.low: int | None = None
        self.high = 0

    def add(self, start: int, end: int) -> None:
        with self._lock:
            self.low = start if self.low is None else min(self.low, start)
            self.high = max(self.high, end)

    def write(self, put: Callable[[memoryview, int], None], data: memoryview, offset: int) -> None:
        """``put(data, offset)``, noting the range; a failure becomes :class:`_WriteError`."""
        try:
            put(data, offset)
        except OSError as e:
            raise _WriteError(offset, offset + len(data), e) from None
        self.add(offset, offset + len(data))

    def words(self) -> str:
        """``partly written (bytes A–B)``, or ``not written`` when nothing was."""
        if self.low is None:
            return "not yet written (it holds what it held before)"
        return f"partly written (between bytes {self.low} and {self.high})"


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _zero_ranges(
    fd: int,
    plan: RestorePlan,
    manifest: ImageManifest,
    report: RestoreReport,
    meter: Meter,
    span: _Span,
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

    def put(data: memoryview, offset: int) -> None:
        _pwrite_all(fd, data, offset)

    for s, e in runs:
        for ps, pe in _split(s, e, plan.protected):
            meter.check_cancel()
            try:
                fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", ps, pe - ps))
                span.add(ps, pe)
            except OSError:
                for off in range(ps, pe, cs):
                    span.write(put, memoryview(zeros)[: min(cs, pe - off)], off)
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
                same = repo.digest(data) == digest
            if not same:
                raise VerifyFailed(
                    f"verify: {plan.confirm_name} differs from image {manifest.id} in the "
                    f"chunk at byte {start}; the restore is not trustworthy"
                )
    finally:
        reader.close()


def _fsck(device: str, manifest: ImageManifest) -> Finding:
    """Run a read-only file-system check after restoring a fuzzy image."""
    fstype = manifest.volume.fstype or ""
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
