"""repo check (read and verify everything) and repo prune (free chunks no image needs)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import blake3

from core import findings as F
from core.findings import Finding
from core.progress import Meter, ProgressFn
from core.repo.crypto import check_sealed
from core.repo.filemanifest import FileManifest
from core.repo.format import ZERO_ID, DamagedObject, ImageManifest, chunk_key, verify_chunk
from core.repo.packs import PACK_MAGIC, parse_tail, verify_piece
from core.repo.repository import Repository, digest_of_key
from core.repo.s3 import S3Store
from core.repo.store import ObjectMissing, RepositoryError
from core.report import JobReport
from core.workers import run_workers


@dataclass
class CheckReport(JobReport):
    """What ``repo check`` found: 0 when everything verified, 12 when anything is damaged."""

    images: int = 0
    increments: int = 0
    chunks: int = 0
    packs: int = 0
    """Pack objects verified (each holds many small chunks, counted in ``chunks``)."""
    bytes_checked: int = 0
    duration: float = 0.0
    requests: int | None = None
    """Requests sent to the object store (a bucket's; None for a directory or a server)."""
    findings: list[Finding] = field(default_factory=list)


_Manifest = TypeVar("_Manifest", ImageManifest, FileManifest)


def _readable(
    report: CheckReport, what: str, ids: Iterable[str], load: Callable[[str], _Manifest]
) -> Iterator[tuple[str, _Manifest]]:
    """Yield ``(id, manifest)`` for each manifest ``load`` can read; a finding for each it cannot.

    ``what`` ("image", "increment") names the kind in the finding and its details.
    """
    for manifest_id in ids:
        try:
            yield manifest_id, load(manifest_id)
        except (DamagedObject, ObjectMissing) as e:
            report.findings.append(
                F.blocker("MANIFEST_DAMAGED", f"{what} {manifest_id}: {e}", **{what: manifest_id})
            )


def check_repository(
    repo: Repository,
    *,
    read_data: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> CheckReport:
    """Read every object, verify every hash and every manifest reference.

    In an encrypted repository a chunk's checksum over its sealed bytes is verified
    (no key needed); ``read_data`` opens each chunk and verifies its content against
    its id too. Opened without its keys (``Repository.open(locked=True)``), every
    object's checksum is verified, and what the manifests name is not (they are
    sealed): a finding says so. Holds the shared lock, so that no prune deletes
    objects under the check.
    """
    if repo.encrypted and repo.keys is None and read_data:
        raise RepositoryError(
            f"repo check --read-data opens every chunk: {repo.location} is encrypted, "
            "give its passphrase"
        )
    before = _requests(repo)
    with repo.lock():
        if repo.encrypted and repo.keys is None:
            report = _check_sealed(repo, progress, cancel)
        else:
            report = _check(repo, progress, cancel, read_data or not repo.encrypted)
    if before is not None:
        report.requests = (_requests(repo) or 0) - before
    return report


def _requests(repo: Repository) -> int | None:
    """Requests the repository's bucket was sent so far (None: no bucket)."""
    return repo.local.request_total if isinstance(repo.local, S3Store) else None


def _check_sealed(
    repo: Repository, progress: ProgressFn | None, cancel: threading.Event | None
) -> CheckReport:
    """Verify the checksum of every object of an encrypted repository without its keys."""
    report = CheckReport()
    keys = [
        f"{kind}/{name}"
        for kind, names in (("images", repo.image_ids()), ("increments", repo.increment_ids()))
        for name in names
    ] + [chunk_key(d) for d in repo.chunk_digests()]
    packs = list(repo.local.list("packs"))
    meter = Meter("checking", len(keys) + len(packs), progress, cancel)
    lock = threading.Lock()

    def verify(take: Iterator[str]) -> None:
        for key in take:
            try:
                data = repo.local.get(key)
                if key.startswith("packs/"):
                    ok, bad, findings = _verify_pack(repo, key, data, deep=False)
                    with lock:
                        report.chunks += len(ok) + len(bad)
                        report.findings.extend(findings)
                else:
                    check_sealed(key, data)
                with lock:
                    report.bytes_checked += len(data)
            except (DamagedObject, ObjectMissing) as e:
                code = {"chunks": "CHUNK_DAMAGED", "packs": "PACK_DAMAGED"}.get(
                    key.split("/", 1)[0], "MANIFEST_DAMAGED"
                )
                with lock:
                    report.findings.append(F.blocker(code, e.message, key=key))
            meter.add(1)

    run_workers(
        keys + packs,
        verify,
        threads=repo.store.readers,
        check_cancel=meter.check_cancel,
        name="bv-check",
    )
    report.images, report.increments = len(repo.image_ids()), len(repo.increment_ids())
    report.chunks += len(keys) - report.images - report.increments
    report.packs = len(packs)
    report.findings.append(
        F.info(
            "CHECKED_WITHOUT_KEY",
            f"{repo.location} is encrypted and no passphrase was given: every object's "
            "checksum was verified, not what the manifests refer to; give the passphrase "
            "to check that too",
        )
    )
    report.findings.extend(_strays_and_leftovers(repo))
    meter.finish("done")
    report.duration = meter.elapsed
    return report


def _check(
    repo: Repository,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    read_data: bool,
) -> CheckReport:
    report = CheckReport()
    manifests = [m for _, m in _readable(report, "image", repo.image_ids(), repo.image)]
    report.images = len(manifests)
    digests = repo.chunk_digests()
    packs = list(repo.local.list("packs"))  # none through a server: it serves their pieces
    meter = Meter("checking", len(digests) + len(packs), progress, cancel)
    seen: set[bytes] = set()
    """Chunks with a copy stored (an object, a piece of a pack)."""
    good: set[bytes] = set()
    """Chunks with a copy that verified: those in ``seen`` and not here are damaged."""
    lock = threading.Lock()

    def verify_pack(key: str) -> None:
        try:
            data = repo.local.get(key)
            ok, bad, findings = _verify_pack(repo, key, data, deep=read_data)
        except (DamagedObject, ObjectMissing) as e:
            with lock:
                report.findings.append(F.blocker("PACK_DAMAGED", e.message, key=key))
            return
        with lock:
            report.chunks += len(ok) + len(bad)
            report.bytes_checked += len(data)
            report.findings.extend(findings)
            seen.update(ok, bad)
            good.update(ok)

    def verify(take: Iterator[bytes | str]) -> None:
        for digest in take:
            if isinstance(digest, str):
                verify_pack(digest)
                meter.add(1)
                continue
            key = chunk_key(digest)
            try:
                if read_data:
                    size = verify_chunk(repo.store.get(key), digest, name=repo.digest)
                else:  # sealed: the checksum of what is stored, not opened
                    size = len(check_sealed(key, repo.local.get(key)))
                with lock:
                    report.bytes_checked += size
                    good.add(digest)
            except (DamagedObject, ObjectMissing) as e:
                with lock:
                    report.findings.append(
                        F.blocker("CHUNK_DAMAGED", e.message, chunk=digest.hex(), key=key)
                    )
            meter.add(1)

    seen.update(digests)
    work: list[bytes | str] = [*packs, *digests]
    run_workers(
        work,
        verify,
        threads=repo.store.readers,
        check_cancel=meter.check_cancel,
        name="bv-check",
    )
    report.chunks += len(digests)
    report.packs = len(packs)
    stored, damaged = seen, seen - good

    for m in manifests:
        for index, digest in m.chunks():
            if digest == ZERO_ID:
                continue
            offset = index * m.chunk_size
            if digest not in stored:
                report.findings.append(
                    F.blocker(
                        "CHUNK_MISSING",
                        f"image {m.id} needs chunk {digest.hex()} (byte {offset}), "
                        "which is not stored",
                        image=m.id,
                        chunk=digest.hex(),
                        offset=offset,
                    )
                )
            elif digest in damaged:
                report.findings.append(
                    F.blocker(
                        "IMAGE_DAMAGED",
                        f"image {m.id} uses damaged chunk {digest.hex()} at byte {offset}",
                        image=m.id,
                        chunk=digest.hex(),
                        offset=offset,
                    )
                )
    increment_ids = repo.increment_ids()
    present = set(increment_ids)
    images = set(repo.image_ids())
    for increment_id, inc in _readable(report, "increment", increment_ids, repo.increment):
        report.increments += 1
        report.findings.extend(_missing_references(increment_id, inc, present, images))
        for entry in inc.entries:
            for piece, digest in enumerate(entry.chunks):
                if digest == ZERO_ID or (digest in stored and digest not in damaged):
                    continue
                what = "damaged" if digest in stored else "missing"
                report.findings.append(
                    F.blocker(
                        "INCREMENT_DAMAGED",
                        f"increment {increment_id}: {entry.path} needs {what} chunk "
                        f"{digest.hex()} (piece {piece})",
                        increment=increment_id,
                        path=entry.path,
                        chunk=digest.hex(),
                    )
                )
    report.findings.extend(_strays_and_leftovers(repo))
    meter.finish("done")
    report.duration = meter.elapsed
    return report


def _verify_pack(
    repo: Repository, key: str, data: bytes, *, deep: bool
) -> tuple[list[bytes], list[bytes], list[Finding]]:
    """Return the chunk ids of pack ``key`` whose pieces verify, those that do not, and
    the findings.

    Every piece is verified as its chunk object would be: a sealed one by its checksum
    (``deep``: opened and hashed too, which needs the key), a plain one decoded and
    hashed. A pack whose index does not read has no pieces to name: one finding.
    """
    if data[: len(PACK_MAGIC)] != PACK_MAGIC:
        raise DamagedObject(f"{key} is damaged: no pack header")
    entries = parse_tail(key, data, len(data))
    assert not isinstance(entries, int)  # the whole object is its own tail
    ok: list[bytes] = []
    bad: list[bytes] = []
    findings: list[Finding] = []
    view = memoryview(data)
    for digest, e in entries:
        piece = view[e.offset : e.offset + e.length]
        try:
            verify_piece(digest, piece, sealed=repo.encrypted, where=key)
            if deep and repo.encrypted:
                verify_chunk(repo.open_piece(digest, bytes(piece)), digest, name=repo.digest)
            ok.append(digest)
        except DamagedObject as err:
            bad.append(digest)
            findings.append(
                F.blocker("CHUNK_DAMAGED", err.message, chunk=digest.hex(), key=key)
            )
    if blake3.blake3(data).hexdigest() != key.split("/", 1)[1] and not bad:
        findings.append(F.blocker("PACK_DAMAGED", f"{key} is damaged: its content does not "
                                  "match its name (its pieces verify)", key=key))
    return ok, bad, findings


def _strays_and_leftovers(repo: Repository) -> list[Finding]:
    out = [
        F.warning(
            "STRAY_OBJECT",
            f"{where} {why}; it is not read, listed or pruned — move it out of the "
            "repository (or where it belongs)",
            path=where,
        )
        for where, why in repo.strays()
    ]
    leftovers = list(repo.local.temp_files())
    if leftovers:
        out.append(
            F.info(
                "TEMP_FILES",
                f"{len(leftovers)} unfinished writes of interrupted backups; "
                "'blockvault repo prune' removes them",
            )
        )
    return out


def _missing_references(
    increment_id: str, inc: FileManifest, increments: set[str], images: set[str]
) -> list[Finding]:
    """Return a finding for each manifest ``inc`` names that the repository lacks."""
    out: list[Finding] = []
    if inc.previous is not None and inc.previous not in increments:
        # No command deletes an increment: a missing one is damage, and a restore to a
        # time it covers would silently bring back an older state.
        out.append(
            F.blocker(
                "INCREMENT_MISSING",
                f"increment {increment_id} builds on increment {inc.previous}, which is "
                "missing from the repository; restores to a time between them are refused",
                increment=increment_id,
                missing=inc.previous,
            )
        )
    if inc.base_image not in images:
        out.append(
            F.warning(
                "BASE_IMAGE_MISSING",
                f"increment {increment_id} was taken on image {inc.base_image}, which is no "
                "longer in the repository (deleted?); a restore of its time uses an older image",
                increment=increment_id,
                missing=inc.base_image,
            )
        )
    return out


@dataclass
class PruneReport(JobReport):
    """What ``repo prune`` freed; a warning when a damaged manifest kept it from freeing chunks."""

    chunks_deleted: int = 0
    bytes_freed: int = 0
    temp_files_removed: int = 0
    chunks_kept: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    """Packs mostly unused that were rewritten: their live pieces moved to new packs."""
    packs_written: int = 0
    duration: float = 0.0
    requests: int | None = None
    """Requests sent to the object store (a bucket's; None for a directory or a server)."""
    findings: list[Finding] = field(default_factory=list)


def prune_repository(repo: Repository) -> PruneReport:
    """Delete chunks that no image or increment names, and leftovers of interrupted writes.

    While a manifest is unreadable the chunks it needs are unknown, so no chunk is
    deleted (each such manifest is named, with how to delete it); leftovers still are.
    Entries that are no object (:meth:`Repository.strays`) are never touched.
    """
    report = PruneReport()
    started = time.monotonic()
    before = _requests(repo)
    with repo.lock(exclusive=True):
        referenced = {d for m in repo.images() for d in m.stored_digests()}
        referenced |= {d for m in repo.increments() for d in m.stored_digests()}
        if repo.damaged:
            for key, damage in sorted(repo.damaged.items()):
                kind, object_id = key.split("/", 1)
                report.findings.append(
                    F.warning(
                        "PRUNE_HELD",
                        f"no chunk was deleted: {damage.message}; the chunks it needs are "
                        f"unknown — delete it with {_delete_command(kind, object_id)}, "
                        "then prune again",
                        **{kind.removesuffix("s"): object_id},
                    )
                )
        elif isinstance(repo.local, S3Store):
            # One listing gives names and sizes; deletes go a thousand per request.
            # A name that is no chunk's is a stray: never touched (check reports it).
            doomed = []
            for key, size in repo.local.sizes("chunks").items():
                if (digest := digest_of_key(key)) is None:
                    continue
                if digest in referenced:
                    report.chunks_kept += 1
                else:
                    doomed.append(key)
                    report.bytes_freed += size
            repo.local.delete_many(doomed)
            report.chunks_deleted = len(doomed)
        else:
            for digest in repo.chunk_digests():
                if digest in referenced:
                    report.chunks_kept += 1
                    continue
                key = chunk_key(digest)
                report.bytes_freed += repo.store.size_of(key)
                repo.store.delete(key)
                report.chunks_deleted += 1
        if not repo.damaged:
            _prune_packs(repo, referenced, report)
        for path in list(repo.local.temp_files()):
            report.bytes_freed += os.stat(path).st_size
            os.unlink(path)
            report.temp_files_removed += 1
    report.duration = time.monotonic() - started
    if before is not None:
        report.requests = (_requests(repo) or 0) - before
    return report


REPACK_BELOW = 0.5
"""A pack is rewritten when less than this share of its bytes is still needed."""


def _prune_packs(repo: Repository, referenced: set[bytes], report: PruneReport) -> None:
    """Delete packs no manifest needs; rewrite those mostly unneeded.

    A piece counts once: where the pack map finds its chunk (a chunk also stored as
    an object of its own, or in an earlier pack, is a spare copy). Live pieces move
    unopened (no key is needed), verified first; the new packs are durable before an
    old one is deleted. A pack whose index does not read is never touched.
    """
    assert repo.packs is not None
    packs = repo.packs.packs()
    objects = set(repo.chunk_digests())
    doomed: list[str] = []
    for key, entries in sorted(packs.items()):
        live = [
            (d, e) for d, e in entries
            if d in referenced and d not in objects and repo.packs.locate(d) == e
        ]
        size = sum(e.length for _, e in entries)
        if not live:
            doomed.append(key)
            report.bytes_freed += size
            report.packs_deleted += 1
            continue
        live_bytes = sum(e.length for _, e in live)
        if live_bytes >= REPACK_BELOW * size:
            report.chunks_kept += len(live)
            continue
        try:
            data = repo.local.get(key)
            entries_now = parse_tail(key, data, len(data))
            assert not isinstance(entries_now, int)
            for d, e in live:
                piece = memoryview(data)[e.offset : e.offset + e.length]
                plain = verify_piece(d, piece, sealed=repo.encrypted, where=key)
                repo.packer.add(d, [bytes(piece)], plain)
        except (DamagedObject, ObjectMissing) as err:
            report.findings.append(
                F.warning("PACK_KEPT", f"{key} was not rewritten: {err.message}", key=key)
            )
            report.chunks_kept += len(live)
            continue
        doomed.append(key)
        report.bytes_freed += size - live_bytes
        report.packs_repacked += 1
        report.chunks_kept += len(live)
    written = repo.packer.packs_written
    repo.flush()
    report.packs_written = repo.packer.packs_written - written
    repo.local.sync()
    # A pack rewritten into the very bytes of one listed as dead (a prune interrupted
    # between its writes and its deletes, run again) is the new home of its pieces.
    kept = [key for key in doomed if key in repo.packer.written]
    for key in kept:
        doomed.remove(key)
        report.packs_deleted -= 1
        report.bytes_freed -= sum(e.length for _, e in packs[key])
    if isinstance(repo.local, S3Store):
        repo.local.delete_many(doomed)
    else:
        for key in doomed:
            repo.store.delete(key)
    repo.packs.refresh()


def _delete_command(kind: str, object_id: str) -> str:
    if kind == "images":
        return f"'blockvault delete backup --objtype image --image {object_id}'"
    return f"'blockvault delete backup --objtype increment --increment {object_id}'"
