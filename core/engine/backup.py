"""backup image: a consistent view of a volume → chunks → the repository → a manifest, last.

The pipeline: worker threads each take the next chunk index, read the chunk's
used ranges (unused ranges are zeros), skip it if it is all zero, hash it
(BLAKE3), and — unless an identical chunk is already stored — compress (zstd)
and store it. Memory is bounded by the number of workers times the chunk size,
whatever the volume's size.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core import findings as F
from core.bytesource import FileSource, SliceSource
from core.devices import DeviceTree, scan
from core.engine.reader import ChunkReader
from core.errors import BlockvaultError, DeviceReadError
from core.findings import Finding, Severity
from core.labels import read_label
from core.preflight import check_resolved
from core.progress import Meter, ProgressFn
from core.repo.catalog import catalog
from core.repo.format import ZERO_ID, ImageManifest, encode_chunk
from core.repo.repository import Repository, now_iso
from core.report import JobReport
from core.signatures import probe
from core.snapshots import ImageType, ReadView, consistent_view, recover_interrupted
from core.targets import resolve, volume_key, volume_record
from core.usedblocks import UsedMap, used_map_or_whole
from core.workers import run_workers

DEFAULT_GAP = 32 << 10
"""Smallest unused gap inside a chunk that is skipped rather than read (TSM's imagegapsize)."""


class BackupRefused(BlockvaultError):
    """A preflight blocker stops the backup before anything is read."""


@dataclass(frozen=True)
class BackupOptions:
    """How to take the image."""

    imagetype: ImageType | None = None
    """None: snapshot where a provider applies, else static."""
    fallback_dynamic: bool = False
    snapshot_cache_pct: int = 10
    gap_size: int = DEFAULT_GAP
    workers: int = 0
    """Worker threads; 0 means two per CPU (measured best here: reads overlap compression)."""


@dataclass
class BackupReport(JobReport):
    """What a backup did, for the console, the command line and ``--json``."""

    image_id: str
    target: str
    device: str
    imagetype: str
    fuzzy: bool
    provider: str
    bytes_volume: int = 0
    bytes_read: int = 0
    bytes_skipped: int = 0
    """Unused space (free blocks) that was not read."""
    bytes_zero: int = 0
    """Read, but all zeros: not stored."""
    bytes_new: int = 0
    """Plain bytes of chunks stored for the first time."""
    bytes_stored_new: int = 0
    """Bytes those new chunks take in the repository (compressed)."""
    bytes_dedup: int = 0
    """Plain bytes of chunks the repository already held."""
    chunks: int = 0
    chunks_new: int = 0
    chunks_dedup: int = 0
    chunks_zero: int = 0
    used_method: str = "whole"
    duration: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    @property
    def compression_ratio(self) -> float | None:
        """Plain bytes of new chunks per stored byte; None when that would mislead.

        A chunk spans unused space too, which is not read and stores as next to
        nothing: once any space was skipped, the ratio of new chunks (×800, ×4000)
        says nothing of how the data compressed, so none is given.
        """
        if self.bytes_skipped or not self.bytes_stored_new or not self.bytes_new:
            return None
        return self.bytes_new / self.bytes_stored_new

    @property
    def throughput(self) -> float:
        """Bytes read from the device per second (unused space is not read, not counted)."""
        return self.bytes_read / self.duration if self.duration else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON report."""
        d = super().to_dict()
        ratio = self.compression_ratio
        d["compression_ratio"] = None if ratio is None else round(ratio, 3)
        d["throughput"] = round(self.throughput)
        return d


def _chunk_ranges(
    used: UsedMap, chunk_size: int, size: int, gap: int
) -> list[tuple[int, list[tuple[int, int]]]]:
    """Return ``(chunk index, ranges to read)`` for each chunk that holds used bytes."""
    work: dict[int, list[tuple[int, int]]] = {}
    for s, e in used.merged(gap).ranges:
        s, e = max(0, s), min(size, e)
        while s < e:
            idx = s // chunk_size
            end = min(e, (idx + 1) * chunk_size)
            work.setdefault(idx, []).append((s, end))
            s = end
    return sorted(work.items())


def new_image_id() -> str:
    """Return a fresh image id: sortable by time, unique across hosts."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


def backup_image(
    target: str,
    repo: Repository,
    options: BackupOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    tree: DeviceTree | None = None,
) -> BackupReport:
    """Take an image of ``target`` into ``repo``; return the report.

    Raises:
        BackupRefused: a preflight blocker (no mount point, unreadable device, …).
        StaticRefused, SnapshotUnavailable: the requested image type cannot be had.
        Cancelled: ``cancel`` was set; no image became visible.
    """
    options = options or BackupOptions()
    tree = scan() if tree is None else tree
    vol = resolve(target, tree)
    pre = list(check_resolved(vol, tree))
    blockers = [f for f in pre if f.severity is Severity.BLOCKER]
    if blockers:
        raise BackupRefused(f"backup of {target} refused: {blockers[0].message}")
    # Every preflight finding goes into the report (the guide's mount-point rule, the
    # cylinder-0 warning, …); acting on busy processes is the snapshot layer's job.
    # A backup killed earlier (SIGKILL, OOM) may have left a remount, a freeze or a
    # clone behind: put it right first, and say so in this report.
    findings = [*recover_interrupted(), *pre]

    started = now_iso()
    meter_t0 = datetime.now(UTC)
    fstab_point = next((f.details["mount_point"] for f in pre if f.code == "FS_NOT_MOUNTED"), None)
    key = volume_key(vol.device, fstab_point)
    with repo.lock():
        with consistent_view(
            vol,
            options.imagetype,
            fallback_dynamic=options.fallback_dynamic,
            snapshot_cache_pct=options.snapshot_cache_pct,
        ) as view:
            with FileSource(view.path) as whole:
                src = SliceSource(whole, view.offset, view.size)
                signature = probe(src)
                label = read_label(src)
                used, used_warning = used_map_or_whole(
                    src, signature.fstype.value if signature else None
                )
            if used_warning:
                findings.append(F.warning("USED_BLOCKS_FALLBACK", used_warning))
            report = BackupReport(
                image_id=new_image_id(),
                target=target,
                device=vol.device.path,
                imagetype=view.imagetype.value,
                fuzzy=view.fuzzy,
                provider=view.provider,
                bytes_volume=view.size,
                used_method=used.method,
            )
            chunk_size = repo.config.chunk_size
            work = _chunk_ranges(used, chunk_size, view.size, options.gap_size)
            table = bytearray(((view.size + chunk_size - 1) // chunk_size) * len(ZERO_ID))
            previous = _previous_digests(repo, key)
            total = sum(e - s for _, rs in work for s, e in rs)
            meter = Meter("reading", total, progress, cancel, report=report)
            try:
                _run_pipeline(view, repo, work, chunk_size, table, previous, report, meter, options)
            except DeviceReadError as e:
                raise DeviceReadError(
                    f"{e.message}; the backup of {target} stopped and nothing of it was "
                    "recorded — the device is failing there: check it (dmesg, smartctl) and "
                    "copy what it still holds before anything else"
                ) from None
            finally:
                repo.local.release()
            report.chunks = len(table) // len(ZERO_ID)
            report.bytes_skipped = view.size - report.bytes_read
            meter.finish("committing")
        # The view is closed: its undo ran, and only now is it known that the copy was
        # good (an LVM snapshot that overflowed is found as it closes, and raises).
        findings.extend(view.all_findings)
        report.findings = findings
        report.duration = (datetime.now(UTC) - meter_t0).total_seconds()
        manifest = ImageManifest(
            id=report.image_id,
            volume=volume_record(
                vol.device,
                key=key,
                mount_point=vol.device.mount_points[0] if vol.device.mount_points else None,
                size=view.size,
            ),
            imagetype=view.imagetype.value,
            fuzzy=view.fuzzy,
            started=started,
            finished=now_iso(),
            chunk_size=chunk_size,
            size=view.size,
            table=bytes(table),
            findings=tuple(f.to_dict() for f in findings),
            stats=report.to_dict(),
            label=_label_record(label),
        )
        repo.put_image(manifest)
    return report


def _label_record(label: Any) -> dict[str, Any] | None:
    if label is None:
        return None
    return {
        "kind": label.kind.value,
        "ranges": [[r.start, r.end] for r in (*label.label_ranges, *label.backup_ranges)],
    }


def _previous_digests(repo: Repository, key: str) -> set[bytes]:
    """Digests of the newest image of the same volume that are still stored.

    One batch lookup up front instead of one per chunk; a chunk ``repo check`` found
    missing is then simply stored again by this backup.
    """
    mine = [e for e in catalog(repo) if e.manifest.volume.key == key]
    return repo.stored_chunks(mine[0].manifest.stored_digests()) if mine else set()


def _run_pipeline(
    view: ReadView,
    repo: Repository,
    work: Sequence[tuple[int, list[tuple[int, int]]]],
    chunk_size: int,
    table: bytearray,
    known: set[bytes],
    report: BackupReport,
    meter: Meter,
    options: BackupOptions,
) -> None:
    lock = threading.Lock()
    in_flight: set[bytes] = set()
    threads = min(options.workers or 2 * (os.cpu_count() or 1), max(1, len(work)))

    def worker(take: Iterator[tuple[int, list[tuple[int, int]]]]) -> None:
        # One chunk per read: measured here, larger spans per worker (8 and 16 MiB)
        # were slower with four workers reading at once.
        reader = ChunkReader(view.path, view.offset, chunk_size)
        try:
            for index, ranges in take:
                start = index * chunk_size
                length = min(chunk_size, view.size - start)
                data = reader.read(length, ranges, start)
                nread = sum(e - s for s, e in ranges)
                if reader.is_zero(0, length):
                    with lock:
                        report.bytes_read += nread
                        report.bytes_zero += nread
                        report.chunks_zero += 1
                    meter.add(nread, zero=1)
                    continue
                digest = _store_chunk(repo, data, known, in_flight, lock, report)
                table[index * 32 : index * 32 + 32] = digest
                with lock:
                    report.bytes_read += nread
                meter.add(nread)
        finally:
            reader.close()

    run_workers(work, worker, threads=threads, check_cancel=meter.check_cancel, name="bv-backup")


def _store_chunk(
    repo: Repository,
    data: memoryview,
    known: set[bytes],
    in_flight: set[bytes],
    lock: threading.Lock,
    report: BackupReport,
) -> bytes:
    digest = repo.digest(data)
    size = len(data)
    with lock:
        seen = digest in known or digest in in_flight
        if not seen:
            in_flight.add(digest)
    if not seen and repo.stored_chunks([digest]):
        seen = True
        with lock:
            known.add(digest)
            in_flight.discard(digest)
    if seen:
        with lock:
            report.bytes_dedup += size
            report.chunks_dedup += 1
        return digest
    stored = encode_chunk(data)
    repo.put_chunk(digest, stored, size)
    with lock:
        known.add(digest)
        in_flight.discard(digest)
        report.bytes_new += size
        report.bytes_stored_new += sum(len(part) for part in stored)
        report.chunks_new += 1
    return digest
