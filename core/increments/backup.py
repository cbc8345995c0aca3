"""backup increment: what changed in a mounted file system since its previous increment.

The guide's incremental-by-date sends files whose date changed since the last image
and knows nothing of deletions or permission changes. Here every increment lists the
whole file system (:mod:`core.repo.filemanifest`), so a replay can delete, chmod
and chown; only content that is not in the repository yet is sent.

An increment builds on a full image of the same volume (the guide's rule), and on
the newest increment of that volume, whose entries it reuses: a regular file whose
size, mtime, ctime and inode are unchanged is not read. Every other file is read in
1 MiB pieces by worker threads (holes are skipped with ``SEEK_DATA``; all-zero
pieces are not stored), hashed, and — unless the repository holds the piece
already — compressed and stored. Memory is bounded by one piece per worker.

Files are opened by their path below the mount point with ``openat2`` refusing
symlinks and mount crossings, so a path swapped for a symlink mid-backup cannot
make the backup read (and later restore, under that path) a file from elsewhere.

The manifest is written last, under the repository's shared lock: a failed or
cancelled increment leaves nothing visible.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

from core import findings as F
from core.confined import Beneath
from core.devices import DeviceTree, scan
from core.errors import BlockvaultError
from core.findings import Finding, ReturnCode
from core.increments.scan import ScanResult, scan_tree
from core.mounts import Mount
from core.progress import Meter, ProgressFn
from core.repo.catalog import catalog
from core.repo.filemanifest import (
    ENTRY_FIELDS,
    FILE_CHUNK,
    FileEntry,
    FileManifest,
    entries_sorted,
    gc_paused,
)
from core.repo.format import ZERO_ID, encode_chunk
from core.repo.repository import Repository, now_iso
from core.report import JobReport
from core.targets import Volume, resolve, volume_key, volume_record
from core.workers import run_workers

MAX_NAMED = 3
"""How many paths a finding's one-line message names before "and N more"."""

SKIP_CODES = frozenset({"INCREMENT_UNREADABLE", "INCREMENT_NOT_SCANNED"})
"""Findings for objects left out: TSM's return code 4, not the 8 of a warning."""


class IncrementRefused(BlockvaultError):
    """An increment cannot be taken of this TARGET; nothing was read or stored."""


class VolumeNotMounted(IncrementRefused):
    """The volume's file system is not mounted (as a whole), so its files cannot be read."""


class NoFullImage(IncrementRefused):
    """The repository holds no image of the volume for the increment to build on."""


@dataclass
class IncrementReport(JobReport):
    """What an increment did, for the console, the command line and ``--json``."""

    increment_id: str
    target: str
    device: str
    mount_point: str
    base_image: str
    """The newest full image of the volume: the start of a replay."""
    previous: str | None
    """The increment whose unchanged files this one reuses (None: the first)."""
    files_scanned: int = 0
    """Entries of every type the scan found (the root directory included)."""
    files_new: int = 0
    files_changed: int = 0
    """Content, type or link target differs from the previous increment."""
    files_metadata_only: int = 0
    """Same content; mode, owner or mtime differ (nothing sent)."""
    files_deleted: int = 0
    """In the previous increment, gone now."""
    files_unchanged: int = 0
    files_skipped: int = 0
    """Unreadable files and paths the scan could not enter (their previous entries kept)."""
    files_read: int = 0
    bytes_read: int = 0
    """Bytes read from changed files (holes are not read)."""
    bytes_new: int = 0
    """Plain bytes of pieces stored for the first time."""
    bytes_sent: int = 0
    """What those new pieces take in the repository (compressed)."""
    bytes_dedup: int = 0
    """Plain bytes of pieces read but already in the repository."""
    chunks_new: int = 0
    scan_seconds: float = 0.0
    duration: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    @property
    def return_code(self) -> ReturnCode:
        """The worst that applies: 8 for warnings, 4 when files were skipped, else 0."""
        rc = F.return_code(f for f in self.findings if f.code not in SKIP_CODES)
        if self.files_skipped or any(f.code in SKIP_CODES for f in self.findings):
            rc = max(rc, ReturnCode.SKIPPED)
        return ReturnCode(rc)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON report."""
        d = super().to_dict()
        d["scan_seconds"] = round(self.scan_seconds, 3)
        return d


# --- opening files below the mount point ---------------------------------------------------

_memcmp = ctypes.CDLL(None).memcmp
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t)
_memcmp.restype = ctypes.c_int

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
"""O_NONBLOCK: a FIFO swapped in for a scanned file must not hang the worker."""


class _Opener:
    """Opens a scanned path for reading, never through a symlink or into another mount."""

    def __init__(self, root_fd: int, device: int) -> None:
        self.beneath = Beneath(root_fd, device=device)
        self.noatime = True
        """O_NOATIME (reading leaves atime alone); dropped once the kernel refuses it."""

    def open(self, path: str, ino: int) -> int:
        """Return a descriptor for ``path``; raise OSError (ENOENT when it is not there).

        Without openat2 the path is also accepted only if it is the scanned inode: the
        walk that stands in for it cannot see a bind mount of this same file system
        (the kernel's RESOLVE_NO_XDEV can); anything else counts as vanished.
        """
        while True:
            flags = _READ_FLAGS | (os.O_NOATIME if self.noatime else 0)
            try:
                fd = self.beneath.open(path, flags)
            except OSError as e:
                if e.errno == errno.EPERM and self.noatime:
                    self.noatime = False  # not the owner, and no CAP_FOWNER
                    continue
                if e.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
                    # A symlink or a mount on the way, or a directory replaced: the
                    # scanned file is not reachable at that path any more.
                    raise FileNotFoundError(errno.ENOENT, e.strerror, path) from None
                raise
            if not self.beneath.openat2 and os.fstat(fd).st_ino != ino:
                os.close(fd)
                raise FileNotFoundError(errno.ENOENT, "replaced since the scan", path)
            return fd


# --- reading files -------------------------------------------------------------------------


@dataclass
class _Job:
    """One inode to read: its first path, and the other paths of a hard-linked inode."""

    index: int
    entry: FileEntry
    link_indices: list[int] = field(default_factory=list)
    link_paths: list[str] = field(default_factory=list)


@dataclass
class _Outcome:
    """What reading a job gave."""

    entry: FileEntry | None = None
    """The content-carrying entry (metadata as read); None if no path could be read."""
    vanished: list[str] = field(default_factory=list)
    error: str | None = None
    """Why the file could not be read (EACCES, EIO, …): it is skipped."""
    changed: bool = False
    """Still changing on the second read: the entry holds what was read."""


@dataclass(eq=False)
class _Pipeline:
    """State the reading workers share: the repository, known pieces, the report."""

    repo: Repository
    opener: _Opener
    known: set[bytes]
    report: IncrementReport
    meter: Meter
    in_flight: set[bytes] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, jobs: Sequence[_Job], workers: int) -> list[_Outcome]:
        """Read every job with ``workers`` threads; return the outcomes in job order."""
        outcomes: list[_Outcome] = [_Outcome() for _ in jobs]

        def worker(take: Iterator[int]) -> None:
            reader = _FileReader(self)
            for i in take:
                outcomes[i] = reader.read_job(jobs[i])

        run_workers(
            range(len(jobs)),
            worker,
            threads=max(1, min(workers, len(jobs))),
            check_cancel=self.meter.check_cancel,
            name="bv-incr",
        )
        return outcomes

    def store(self, data: memoryview) -> bytes:
        """Return the digest of a non-zero piece, storing it unless the repository has it."""
        digest = self.repo.digest(data)
        size = len(data)
        with self.lock:
            seen = digest in self.known or digest in self.in_flight
            if not seen:
                self.in_flight.add(digest)
        if not seen and self.repo.stored_chunks([digest]):
            seen = True
            with self.lock:
                self.known.add(digest)
                self.in_flight.discard(digest)
        if seen:
            with self.lock:
                self.report.bytes_dedup += size
            return digest
        stored = encode_chunk(data)
        self.repo.put_chunk(digest, stored, size)
        with self.lock:
            self.known.add(digest)
            self.in_flight.discard(digest)
            self.report.bytes_new += size
            self.report.bytes_sent += sum(len(part) for part in stored)
            self.report.chunks_new += 1
        return digest


class _FileReader:
    """One worker's piece buffer, and how it reads a file into piece digests."""

    def __init__(self, pipeline: _Pipeline) -> None:
        self.p = pipeline
        self.buffer = mmap.mmap(-1, FILE_CHUNK)
        self.view = memoryview(self.buffer)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        self.zero = bytes(FILE_CHUNK)

    def read_job(self, job: _Job) -> _Outcome:
        """Read the job's inode through its first path that is still there."""
        out = _Outcome()
        for path in (job.entry.path, *job.link_paths):
            try:
                fd = self.p.opener.open(path, job.entry.ino)
            except FileNotFoundError:
                out.vanished.append(path)
                continue
            except OSError as e:
                out.error = e.strerror or str(e)
                return out
            try:
                out.entry = self._read_open(fd, path, out)
            except OSError as e:
                out.error = e.strerror or str(e)
                return out
            finally:
                os.close(fd)
            if out.entry is not None:
                return out
            out.vanished.append(path)  # a directory or a FIFO stands there now
        return out

    def _read_open(self, fd: int, path: str, out: _Outcome) -> FileEntry | None:
        """Return the entry of the regular file open at ``fd`` with its pieces (else None)."""
        for _attempt in range(2):
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                return None
            chunks, covered = self._pieces(fd, before)
            after = os.fstat(fd)
            if covered == before.st_size and (
                before.st_size,
                before.st_mtime_ns,
                before.st_ctime_ns,
            ) == (after.st_size, after.st_mtime_ns, after.st_ctime_ns):
                break
        else:
            out.changed = True
        with self.p.lock:
            self.p.report.files_read += 1
        # Metadata as of the read (the scan's may be older), size as covered by the pieces.
        return FileEntry(
            path,
            "f",
            stat.S_IMODE(after.st_mode),
            after.st_uid,
            after.st_gid,
            covered,
            after.st_mtime_ns,
            after.st_ctime_ns,
            after.st_ino,
            after.st_nlink,
            chunks=tuple(chunks),
        )

    def _pieces(self, fd: int, st: os.stat_result) -> tuple[list[bytes], int]:
        """Return the piece digests of the open file and the bytes they cover."""
        size = st.st_size
        # Only a file with fewer blocks than bytes can have holes worth looking for.
        sparse = st.st_blocks * 512 < size
        data_at = -1
        chunks: list[bytes] = []
        covered = 0
        meter = self.p.meter
        for offset in range(0, size, FILE_CHUNK):
            meter.check_cancel()
            length = min(FILE_CHUNK, size - offset)
            if sparse:
                if data_at < offset:
                    try:
                        data_at = os.lseek(fd, offset, os.SEEK_DATA)
                    except OSError as e:
                        if e.errno != errno.ENXIO:
                            raise
                        data_at = size  # nothing but hole up to the end
                if data_at >= offset + length:
                    chunks.append(ZERO_ID)
                    covered += length
                    meter.add(length)
                    continue
            n = self._read_into(fd, length, offset)
            with self.p.lock:
                self.p.report.bytes_read += n
            meter.add(n)
            if n:
                chunks.append(self._digest(n))
            covered += n
            if n < length:  # the file shrank while being read
                break
        return chunks, covered

    def _read_into(self, fd: int, length: int, offset: int) -> int:
        done = 0
        while done < length:
            n = os.preadv(fd, [self.view[done:length]], offset + done)
            if n == 0:
                break
            done += n
        return done

    def _digest(self, n: int) -> bytes:
        if not (self.buffer[0] or self.buffer[n - 1]) and _memcmp(self.address, self.zero, n) == 0:
            return ZERO_ID
        return self.p.store(self.view[:n])


# --- the increment ---------------------------------------------------------------------------


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    more = len(items) - MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def _whole_mount(vol: Volume, target: str) -> Mount:
    """Return the mount that shows the volume's whole file system."""
    dev = vol.device
    if not dev.has_filesystem:
        raise VolumeNotMounted(
            f"{target}: {dev.path} holds no file system; file increments need a mounted "
            f"file system (take an image instead: 'blockvault backup image {target}')"
        )
    mount = vol.mount
    if mount is None:
        mount = next((m for m in dev.mounts if m.root == "/"), None)
    if mount is None and dev.mounts:
        mount = dev.mounts[0]
    if mount is None:
        named = dev.path if target == dev.path else f"{target} ({dev.path})"
        raise VolumeNotMounted(
            f"{named} is not mounted; mount it first (an increment reads the files of the "
            "mounted file system)"
        )
    if mount.root != "/":
        whole = next((m.mount_point for m in dev.mounts if m.root == "/"), None)
        fix = f"give {whole}" if whole else "mount the whole file system and give its mount point"
        raise VolumeNotMounted(
            f"{target} shows only {mount.root} of {dev.path} (a bind mount); {fix}"
        )
    return mount


def _newest_image(repo: Repository, key: str, target: str) -> str:
    mine = [e for e in catalog(repo) if e.manifest.volume.key == key]
    if not mine:
        raise NoFullImage(
            f"no image of {target}: take one first with 'blockvault backup image {target}'"
        )
    return mine[0].manifest.id


def _previous_increment(repo: Repository, key: str) -> FileManifest | None:
    for inc_id in reversed(repo.increment_ids()):
        m = repo.increment(inc_id)
        if m.volume.key == key:
            return m
    return None


_ID_TIME = "%Y%m%dT%H%M%S.%fZ"


def new_increment_id(previous: str | None = None) -> str:
    """Return a fresh increment id that sorts after ``previous`` (ids sort by time).

    Microseconds, not the image ids' seconds: two increments in one second must still
    sort in the order they were taken, since the newest is the next one's previous. A
    clock that went back is stepped over rather than trusted.
    """
    now = datetime.now(UTC)
    if previous is not None:
        with contextlib.suppress(ValueError):
            before = datetime.strptime(previous.split("-", 1)[0], _ID_TIME).replace(tzinfo=UTC)
            now = max(now, before + timedelta(microseconds=1))
    return now.strftime(_ID_TIME) + "-" + os.urandom(3).hex()


_identity = attrgetter(*(f for f in ENTRY_FIELDS if f not in ("path", "chunks")))
"""Everything the scan sees of an entry (all but the content): equal means unchanged."""


def _content(e: FileEntry, by_path: dict[str, FileEntry]) -> tuple[bytes, ...] | None:
    """Return the piece digests of a file entry, following a hard link to its first path."""
    if e.link is None:
        return e.chunks
    first = by_path.get(e.link)
    if first is None or first.kind != e.kind or first.link is not None:
        return None
    return first.chunks


def _pieces_fit(chunks: tuple[bytes, ...], size: int) -> bool:
    return len(chunks) == (size + FILE_CHUNK - 1) // FILE_CHUNK


def _kept(prev: FileEntry, prev_by_path: dict[str, FileEntry]) -> FileEntry:
    """The previous entry, standing on its own (a hard link's content copied in)."""
    if prev.link is None:
        return prev
    return replace(prev, link=None, chunks=_content(prev, prev_by_path) or ())


class _Plan:
    """Which entries reuse the previous increment and which files must be read."""

    def __init__(
        self, scanned: ScanResult, prev_by_path: dict[str, FileEntry], hash_all: bool
    ) -> None:
        self.entries = scanned.entries
        self.final: list[FileEntry | None] = list(self.entries)
        self.jobs: list[_Job] = []
        job_of: dict[str, _Job] = {}
        get_prev = prev_by_path.get
        for i, e in enumerate(self.entries):
            prev = get_prev(e.path)
            if e.kind != "f":
                if prev is not None and _identity(prev) == _identity(e):
                    self.final[i] = prev
                continue
            if e.link is not None:  # a further path of a hard-linked inode
                job = job_of.get(e.link)
                if job is not None:
                    job.link_indices.append(i)
                    job.link_paths.append(e.path)
                elif prev is not None and _identity(prev) == _identity(e):
                    self.final[i] = prev
                continue
            if (
                not hash_all
                and prev is not None
                and prev.kind == "f"
                and (prev.size, prev.mtime_ns, prev.ctime_ns, prev.ino)
                == (e.size, e.mtime_ns, e.ctime_ns, e.ino)
            ):
                chunks = _content(prev, prev_by_path)
                if chunks is not None and _pieces_fit(chunks, e.size):
                    same = _identity(prev) == _identity(e)
                    self.final[i] = prev if same else replace(e, chunks=chunks)
                    continue
            job = _Job(i, e)
            self.jobs.append(job)
            if e.nlink > 1:
                job_of[e.path] = job


@dataclass
class _Problems:
    """Paths by what went wrong with them, for the findings and the manifest."""

    vanished: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Unreadable or unscanned paths whose previous entry was kept."""

    def records(self, scanned: ScanResult) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [p.to_dict() for p in scanned.problems]
        out += [
            {"kind": "vanished", "path": p, "error": "gone between the scan and the read"}
            for p in self.vanished
        ]
        out += [
            {"kind": "changed", "path": p, "error": "changed while being read, twice"}
            for p in self.changed
        ]
        out += [{"kind": "unreadable", "path": p, "error": e} for p, e in self.unreadable]
        return out


def backup_increment(
    target: str,
    repo: Repository,
    *,
    hash_all: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    tree: DeviceTree | None = None,
    workers: int = 0,
) -> IncrementReport:
    """Take a file-level increment of the mounted file system ``target``; return the report.

    Args:
        hash_all: read every regular file, even those whose size, times and inode say
            they are unchanged (a check that the previous increment's content is right).
        workers: reading threads; 0 means two per CPU.

    Raises:
        TargetCodeError: TARGET names no volume.
        VolumeNotMounted: the volume's file system is not mounted as a whole.
        NoFullImage: the repository holds no image of the volume to build on.
        Cancelled: ``cancel`` was set; no increment became visible.
    """
    t0 = time.monotonic()
    tree = scan() if tree is None else tree
    vol = resolve(target, tree)
    mount = _whole_mount(vol, target)
    key = volume_key(vol.device)
    started = now_iso()
    with repo.lock():
        base_image = _newest_image(repo, key, target)
        with gc_paused():
            previous = _previous_increment(repo, key)
            prev_by_path = previous.by_path() if previous else {}
        report = IncrementReport(
            increment_id=new_increment_id(previous.id if previous else None),
            target=target,
            device=vol.device.path,
            mount_point=mount.mount_point,
            base_image=base_image,
            previous=previous.id if previous else None,
        )
        root_fd = os.open(mount.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            Meter("scanning", 0, progress, cancel).finish()
            t_scan = time.monotonic()
            scanned = scan_tree(mount.mount_point, cancel=cancel)
            report.scan_seconds = time.monotonic() - t_scan
            if os.fstat(root_fd).st_dev != scanned.device:
                raise VolumeNotMounted(
                    f"{mount.mount_point} was mounted over during the backup; run it again"
                )
            with gc_paused():
                plan = _Plan(scanned, prev_by_path, hash_all)
            meter = Meter(
                "reading",
                sum(j.entry.size for j in plan.jobs),
                progress,
                cancel,
                report=report,
            )
            known = previous.stored_digests() if previous else set()
            pipeline = _Pipeline(repo, _Opener(root_fd, scanned.device), known, report, meter)
            # Inode order: neighbouring inodes (and their data) tend to lie together.
            jobs = sorted(plan.jobs, key=lambda j: j.entry.ino)
            outcomes = pipeline.run(jobs, workers or 2 * (os.cpu_count() or 1)) if jobs else []
        finally:
            os.close(root_fd)
            repo.local.release()
        meter.check_cancel()
        meter.finish("committing")
        with gc_paused():
            problems = _apply(plan, jobs, outcomes, prev_by_path)
            entries = _carry_over(plan, scanned, prev_by_path, problems)
            _count(report, entries, prev_by_path, scanned, problems)
            report.findings = _findings(scanned, problems, mount.mount_point)
            report.duration = time.monotonic() - t0
            manifest = FileManifest(
                id=report.increment_id,
                volume=volume_record(
                    vol.device, key=key, mount_point=mount.mount_point, size=vol.device.size
                ),
                base_image=base_image,
                previous=report.previous,
                started=started,
                finished=now_iso(),
                entries=entries,
                stats=report.to_dict(),
                problems=tuple(problems.records(scanned)),
            )
            repo.put_increment(manifest)
    report.duration = time.monotonic() - t0  # the manifest's write included
    return report


def _apply(
    plan: _Plan,
    jobs: Sequence[_Job],
    outcomes: Sequence[_Outcome],
    prev_by_path: dict[str, FileEntry],
) -> _Problems:
    """Put what the workers read into ``plan.final``; return the problems met."""
    problems = _Problems()
    entries, final = plan.entries, plan.final
    for job, out in zip(jobs, outcomes, strict=True):
        indices = [job.index, *job.link_indices]
        if out.error is not None:
            # Unreadable: keep the previous version, so that a replay does not delete
            # the file; with none, leave it out. Either way it was skipped.
            for i in indices:
                path = entries[i].path
                prev = prev_by_path.get(path)
                final[i] = _kept(prev, prev_by_path) if prev is not None else None
                problems.unreadable.append((path, out.error))
                if prev is not None:
                    problems.kept.append(path)
            continue
        gone = set(out.vanished)
        for i in indices:
            if entries[i].path in gone:
                final[i] = None
        problems.vanished.extend(out.vanished)
        if out.entry is None:
            continue
        first = out.entry.path
        for i in indices:
            e = entries[i]
            if e.path == first:
                final[i] = out.entry
            elif e.path not in gone and e.link != first:  # the first path vanished
                final[i] = replace(e, link=first)
        if out.changed:
            problems.changed.append(first)
    return problems


def _carry_over(
    plan: _Plan, scanned: ScanResult, prev_by_path: dict[str, FileEntry], problems: _Problems
) -> tuple[FileEntry, ...]:
    """Return the final entries, with previous entries kept where the scan could not look.

    Below a directory the scan could not list (and below a mount point, which hides
    what lies underneath), the previous increment's entries still stand: leaving them
    out would make a replay with --deletefiles delete files that were merely not seen.
    """
    present = [e for e in plan.final if e is not None]
    # Not seen: these paths (unless present) and everything below them.
    blind = [p.path for p in scanned.problems if p.kind != "unknown-type"]
    # Seen themselves; what lies below them on this volume is hidden by the mount.
    hidden = scanned.mount_points
    if not (blind or hidden) or not prev_by_path:
        return tuple(present)
    paths = {e.path for e in present}
    added: list[FileEntry] = []
    for path, prev in prev_by_path.items():
        if path in paths:
            continue
        if any(top == "." or path == top or path.startswith(top + "/") for top in blind):
            problems.kept.append(path)
        elif not any(path.startswith(top + "/") for top in hidden):
            continue
        added.append(_kept(prev, prev_by_path))
    if not added:
        return tuple(present)
    return entries_sorted([*present, *added])


def _same_content(
    e: FileEntry,
    prev: FileEntry,
    by_path: dict[str, FileEntry],
    prev_by_path: dict[str, FileEntry],
) -> bool:
    if e.kind != prev.kind:
        return False
    if e.kind == "d":
        return True  # a directory's "content" is its entries, classified on their own
    return (e.size, e.target, e.rdev) == (prev.size, prev.target, prev.rdev) and _content(
        e, by_path
    ) == _content(prev, prev_by_path)


def _count(
    report: IncrementReport,
    entries: Sequence[FileEntry],
    prev_by_path: dict[str, FileEntry],
    scanned: ScanResult,
    problems: _Problems,
) -> None:
    """Classify every entry against the previous increment into the report's counters."""
    report.files_scanned = len(scanned.entries)
    report.files_skipped = len(problems.unreadable) + len(scanned.problems)
    kept = set(problems.kept)
    by_path: dict[str, FileEntry] = {}
    new = changed = metadata = unchanged = 0
    for e in entries:
        prev = prev_by_path.get(e.path)
        if prev is None:
            new += 1
        elif kept and e.path in kept:
            continue  # skipped: counted there
        elif e is prev:
            unchanged += 1
        else:
            if e.link is not None and not by_path:
                by_path = {x.path: x for x in entries}
            if not _same_content(e, prev, by_path, prev_by_path):
                changed += 1
            elif e.same_metadata_as(prev):
                unchanged += 1
            else:
                metadata += 1
    report.files_new = new
    report.files_changed = changed
    report.files_metadata_only = metadata
    report.files_unchanged = unchanged
    if prev_by_path:
        paths = {e.path for e in entries}
        report.files_deleted = sum(1 for p in prev_by_path if p not in paths)


def _findings(scanned: ScanResult, problems: _Problems, mount_point: str) -> list[Finding]:
    out: list[Finding] = []
    if scanned.problems:
        paths = [p.path for p in scanned.problems]
        out.append(
            F.warning(
                "INCREMENT_NOT_SCANNED",
                f"{len(paths)} path(s) could not be scanned and were skipped, their previous "
                f"entries kept: {_listing(paths)}",
                paths=paths,
                errors={p.path: p.error for p in scanned.problems},
            )
        )
    if problems.unreadable:
        paths = [p for p, _ in problems.unreadable]
        kept = sorted(set(problems.kept) & set(paths))
        out.append(
            F.warning(
                "INCREMENT_UNREADABLE",
                f"{len(paths)} file(s) could not be read and were skipped"
                + (f" ({len(kept)} keep their previous version)" if kept else "")
                + f": {_listing(paths)}",
                paths=paths,
                errors=dict(problems.unreadable),
                kept_previous=kept,
            )
        )
    for code, paths, what in (
        (
            "INCREMENT_VANISHED",
            problems.vanished,
            "vanished between the scan and their reading; they are not in this increment",
        ),
        (
            "INCREMENT_CHANGED",
            problems.changed,
            "changed while being read, twice; what was read is kept, it may be inconsistent",
        ),
    ):
        if paths:
            out.append(
                F.warning(
                    code,
                    f"{len(paths)} file(s) {what}: {_listing(paths)}",
                    paths=sorted(paths),
                )
            )
    if scanned.mount_points:
        out.append(
            F.info(
                "INCREMENT_MOUNTS_BELOW",
                f"mount points below {mount_point} were not entered (their files belong to "
                f"other volumes): {_listing(scanned.mount_points)}",
                paths=list(scanned.mount_points),
            )
        )
    return out
