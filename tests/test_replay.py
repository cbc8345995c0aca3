"""Replaying a file manifest onto a mounted ext4 loop volume: content, metadata, deletions, safety.

Manifests are built here entry by entry; their content chunks are stored in a real
repository, as a backup would store them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from core import progress
from core.findings import Severity
from core.increments.replay import (
    TEMP_PREFIX,
    HostileManifest,
    ReplayDamaged,
    ReplayError,
    replay,
)
from core.progress import Cancelled, Progress
from core.repo.filemanifest import FILE_CHUNK, FileEntry, FileManifest
from core.repo.format import ZERO_ID, VolumeRecord, chunk_digest, encode_chunk
from core.repo.repository import Repository

pytestmark = pytest.mark.loop

T0 = 1_700_000_000_123_456_789
"""A modification time with nanoseconds, so that lost precision shows."""


@pytest.fixture
def repo(tmp_path) -> Repository:
    return Repository.init(str(tmp_path / "repo"))


@pytest.fixture
def root(loopkit) -> Path:
    """The mount point of a fresh ext4 volume (it holds only lost+found), as a restored image."""
    mp = loopkit.volume("64M", "ext4").mount_point
    assert mp is not None
    return mp


@pytest.fixture
def canary(tmp_path) -> Path:
    """A directory outside every root, which no replay may touch."""
    top = tmp_path / "outside"
    (top / "sub").mkdir(parents=True)
    (top / "x").write_text("canary")
    (top / "file").write_text("canary file")
    (top / "sub" / "y").write_text("canary y")
    return top


# --- building manifests ---------------------------------------------------------------------


def store(repo: Repository, data: bytes) -> tuple[bytes, ...]:
    """Store ``data`` as 1 MiB pieces; return their ids (ZERO_ID for all-zero pieces)."""
    ids = []
    for off in range(0, len(data), FILE_CHUNK):
        piece = data[off : off + FILE_CHUNK]
        if piece == bytes(len(piece)):
            ids.append(ZERO_ID)
            continue
        digest = chunk_digest(piece)
        repo.put_chunk(digest, encode_chunk(piece), len(piece))
        ids.append(digest)
    repo.store.sync()
    return tuple(ids)


def d(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = T0) -> FileEntry:
    return FileEntry(path, "d", mode, uid, gid, 4096, mtime, mtime, 0, 2)


def f(
    repo: Repository,
    path: str,
    data: bytes,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = T0,
    nlink: int = 1,
) -> FileEntry:
    chunks = store(repo, data)
    return FileEntry(path, "f", mode, uid, gid, len(data), mtime, mtime, 0, nlink, chunks=chunks)


def hard(path: str, first: FileEntry) -> FileEntry:
    return FileEntry(
        path,
        "f",
        first.mode,
        first.uid,
        first.gid,
        first.size,
        first.mtime_ns,
        first.ctime_ns,
        0,
        first.nlink,
        chunks=first.chunks,
        link=first.path,
    )


def sym(path: str, target: str, uid: int = 0, mtime: int = T0) -> FileEntry:
    return FileEntry(path, "l", 0o777, uid, 0, len(target), mtime, mtime, 0, 1, target=target)


def node(path: str, kind: str, mode: int = 0o600, rdev: int = 0, mtime: int = T0) -> FileEntry:
    return FileEntry(path, kind, mode, 0, 0, 0, mtime, mtime, 0, 1, rdev=rdev)


def manifest(*entries: FileEntry, mid: str = "m1") -> FileManifest:
    return FileManifest(
        mid,
        VolumeRecord(key="/mnt", device="/dev/mnt"),
        "image-1",
        None,
        "start",
        "end",
        tuple(entries),
    )


def written_len(data: bytes) -> int:
    """Return how many bytes of ``data`` are not in all-zero pieces (holes)."""
    pieces = (data[i : i + FILE_CHUNK] for i in range(0, len(data), FILE_CHUNK))
    return sum(len(p) for p in pieces if p != bytes(len(p)))


# --- looking at the disk ---------------------------------------------------------------------


def state(p: Path) -> tuple:
    st = p.lstat()
    if stat.S_ISLNK(st.st_mode):
        extra = os.readlink(p)
    elif stat.S_ISREG(st.st_mode):
        extra = hashlib.sha256(p.read_bytes()).hexdigest()
    else:
        extra = ""
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino, extra)


def snapshot(top: Path) -> dict[str, tuple]:
    """Return every path under ``top`` (and ``top`` itself) with type, owner, times, content."""
    out = {".": state(top)}
    for dirpath, dirs, files in os.walk(top):  # does not follow symlinks to directories
        for name in dirs + files:
            p = Path(dirpath, name)
            out[str(p.relative_to(top))] = state(p)
    return out


def leftovers(top: Path) -> list[str]:
    """Return temporary names a replay left behind."""
    return [
        os.path.join(dirpath, n)
        for dirpath, dirs, files in os.walk(top)
        for n in dirs + files
        if n.startswith(TEMP_PREFIX)
    ]


def assert_matches(root: Path, e: FileEntry) -> None:
    """Assert that the path of ``e`` under ``root`` has its type, mode, owner and mtime."""
    st = (root / e.path).lstat()
    want = {"d": stat.S_ISDIR, "f": stat.S_ISREG, "l": stat.S_ISLNK, "p": stat.S_ISFIFO}
    want |= {"c": stat.S_ISCHR, "b": stat.S_ISBLK}
    assert want[e.kind](st.st_mode), e.path
    if e.kind != "l":
        assert stat.S_IMODE(st.st_mode) == e.mode, e.path
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (e.uid, e.gid, e.mtime_ns), e.path


# --- creating ---------------------------------------------------------------------


def full_manifest(repo: Repository) -> tuple[FileManifest, dict[str, bytes]]:
    """Return a manifest with every kind of entry, and the content of its regular files."""
    rng = random.Random(5)
    data = {
        "docs/a.txt": b"hello\n" * 1000,
        "docs/big.bin": rng.randbytes(2 * FILE_CHUNK + 12345),
        "docs/deeper/empty": b"",
        "setuid": b"#!/bin/sh\necho hi\n",
        # Data, two all-zero pieces, a short tail: two holes in the middle.
        "sparse.img": rng.randbytes(FILE_CHUNK) + bytes(2 * FILE_CHUNK) + b"tail",
        # The file ends in a hole: only ftruncate gives it its size.
        "tailhole.img": rng.randbytes(100) + bytes(FILE_CHUNK - 100) + bytes(FILE_CHUNK),
    }
    a_txt = f(repo, "docs/a.txt", data["docs/a.txt"], 0o640, 1234, 2345, T0 + 3, nlink=2)
    m = manifest(
        d(".", 0o755, mtime=T0 + 1),
        hard("aa-hard", a_txt),  # sorts before its first path: made after all files
        d("docs", 0o750, 1234, 2345, T0 + 2),
        a_txt,
        f(repo, "docs/big.bin", data["docs/big.bin"], 0o600, mtime=T0 + 4),
        d("docs/deeper", 0o700, mtime=T0 + 5),
        f(repo, "docs/deeper/empty", b"", 0o444, 7, 8, T0 + 6),
        sym("link", "docs/a.txt", uid=1234, mtime=T0 + 7),
        sym("escape", "../../../etc/passwd", mtime=T0 + 8),  # a target is data, never followed
        node("pipe", "p", 0o620, mtime=T0 + 9),
        node("null", "c", 0o666, os.makedev(1, 3), T0 + 10),
        node("blk", "b", 0o660, os.makedev(7, 200), T0 + 11),
        f(repo, "setuid", data["setuid"], 0o4755, 1234, 1234, T0 + 12),
        f(repo, "sparse.img", data["sparse.img"], mtime=T0 + 13),
        f(repo, "tailhole.img", data["tailhole.img"], mtime=T0 + 14),
        node("sock", "s", 0o755, mtime=T0 + 15),
    )
    return m, data


def test_replay_creates_every_kind_with_content_owners_modes_and_times(root, repo):
    m, data = full_manifest(repo)
    seen: list[Progress] = []
    report = replay(m, root, repo, delete=True, progress=seen.append)

    for e in m.entries:
        if e.kind != "s":
            assert_matches(root, e)
    for rel, content in data.items():
        assert (root / rel).read_bytes() == content, rel
    # Hard link: one inode, two names.
    assert (root / "aa-hard").stat().st_ino == (root / "docs/a.txt").stat().st_ino
    assert (root / "docs/a.txt").stat().st_nlink == 2
    assert os.readlink(root / "link") == "docs/a.txt"
    assert os.readlink(root / "escape") == "../../../etc/passwd"
    assert (root / "null").lstat().st_rdev == os.makedev(1, 3)
    assert (root / "blk").lstat().st_rdev == os.makedev(7, 200)
    # chown came before chmod, so the set-user-ID bit survived.
    assert stat.S_IMODE((root / "setuid").stat().st_mode) == 0o4755
    # Holes stayed holes: only the data pieces take blocks.
    assert (root / "sparse.img").stat().st_blocks * 512 < FILE_CHUNK + (64 << 10)
    assert (root / "tailhole.img").stat().st_blocks * 512 < FILE_CHUNK + (64 << 10)
    # The socket is not made; a finding says so. lost+found is kept although unlisted.
    assert not (root / "sock").exists()
    assert [x.code for x in report.findings] == ["REPLAY_SOCKETS_SKIPPED"]
    assert report.findings[0].details["paths"] == ["sock"]
    assert (root / "lost+found").is_dir()
    assert leftovers(root) == []

    assert report.bytes_written == sum(written_len(v) for v in data.values())
    assert report.files_created == len(m.entries) - 2  # not "." and not the socket
    assert (report.files_replaced, report.deleted) == (0, 0)
    assert report.metadata_updated == 1  # the root directory's mode and time
    assert int(report.return_code) == 0
    json.dumps(report.to_dict())
    assert seen[-1].phase == "done"
    assert seen[-1].done == seen[-1].total == report.bytes_written


def test_replaying_the_same_manifest_again_changes_nothing(root, repo):
    m, _ = full_manifest(repo)
    replay(m, root, repo, delete=True)
    before = snapshot(root)
    again = replay(m, root, repo, delete=True)
    assert snapshot(root) == before  # same inodes, times, directory times
    assert again.unchanged == len(m.entries) - 1  # all but the socket
    assert (again.files_created, again.files_replaced, again.metadata_updated) == (0, 0, 0)
    assert (again.bytes_written, again.deleted) == (0, 0)


# --- replacing ---------------------------------------------------------------------


def put(path: Path, data: bytes, mtime: int = T0, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime, mtime))


def test_replay_replaces_what_changed_and_leaves_the_rest_alone(root, repo):
    # The restored image's state.
    put(root / "keep.txt", b"same")
    put(root / "change.txt", b"old")
    put(root / "meta.txt", b"meta")
    put(root / "quick.txt", b"disk")
    (root / "was_dir").mkdir()
    put(root / "was_dir" / "inner.txt", b"inner")
    put(root / "was_file", b"a file")
    os.symlink("a", root / "link")
    put(root / "hl_a", b"linked")
    os.link(root / "hl_a", root / "hl_b")
    os.utime(root, ns=(T0, T0))
    inode = {n: (root / n).lstat().st_ino for n in ("keep.txt", "meta.txt", "quick.txt", "hl_a")}

    m = manifest(
        d(".", stat.S_IMODE(root.stat().st_mode), mtime=T0 + 1),
        f(repo, "keep.txt", b"same"),
        f(repo, "change.txt", b"new content", mtime=T0 + 1),
        f(repo, "meta.txt", b"meta", 0o600, 1234, 1234),
        # Same size and mtime, other bytes: the quick check trusts the disk (as rsync).
        f(repo, "quick.txt", b"mani"),
        f(repo, "was_dir", b"now a file"),
        d("was_file"),
        f(repo, "was_file/new.txt", b"new"),
        sym("link", "b"),
        # Separate files in the manifest, one inode on disk: the link is broken.
        f(repo, "hl_a", b"linked"),
        f(repo, "hl_b", b"linked"),
    )
    report = replay(m, root, repo, delete=False)

    for e in m.entries:
        if e.path != "quick.txt":
            assert_matches(root, e)
    assert (root / "keep.txt").lstat().st_ino == inode["keep.txt"]
    assert (root / "meta.txt").lstat().st_ino == inode["meta.txt"]
    assert (root / "quick.txt").read_bytes() == b"disk"
    assert (root / "quick.txt").lstat().st_ino == inode["quick.txt"]
    assert (root / "change.txt").read_bytes() == b"new content"
    assert (root / "was_dir").read_bytes() == b"now a file"
    assert (root / "was_file" / "new.txt").read_bytes() == b"new"
    assert os.readlink(root / "link") == "b"
    assert (root / "hl_a").stat().st_ino != (root / "hl_b").stat().st_ino
    assert (root / "hl_a").stat().st_nlink == (root / "hl_b").stat().st_nlink == 1
    # change.txt, was_dir, was_file, link, hl_a; inner.txt went with was_dir.
    assert report.files_replaced == 5
    assert report.files_created == 1
    assert report.metadata_updated == 2  # meta.txt and the root's mtime
    assert report.unchanged == 3  # keep.txt, quick.txt, hl_b
    assert report.deleted == 1
    assert report.bytes_written == len(b"new content" + b"now a file" + b"new" + b"linked")


# --- deleting ---------------------------------------------------------------------


@pytest.mark.parametrize("delete", [True, False], ids=["deletefiles", "keepfiles"])
def test_deletefiles_removes_unlisted_paths_and_keeps_lost_found(root, repo, canary, delete):
    put(root / "keep.txt", b"keep")
    put(root / "gone.txt", b"gone")
    (root / "docs").mkdir()
    put(root / "docs" / "stale.txt", b"stale")
    (root / "olddir" / "sub").mkdir(parents=True)
    put(root / "olddir" / "sub" / "deep.txt", b"deep")
    os.symlink(canary, root / "olddir" / "escape")  # a tree removal must not follow it
    os.symlink(canary / "x", root / "badlink")
    outside = snapshot(canary)
    before = snapshot(root)

    m = manifest(d("."), f(repo, "keep.txt", b"keep"), d("docs"))
    report = replay(m, root, repo, delete=delete)

    assert snapshot(canary) == outside
    assert (root / "lost+found").is_dir()
    if delete:
        assert sorted(os.listdir(root)) == ["docs", "keep.txt", "lost+found"]
        assert os.listdir(root / "docs") == []
        # gone.txt, docs/stale.txt, badlink, olddir, olddir/sub, sub/deep.txt, olddir/escape
        assert report.deleted == 7
    else:
        assert set(snapshot(root)) == set(before)
        assert (root / "olddir" / "sub" / "deep.txt").read_bytes() == b"deep"
        assert report.deleted == 0


def not_backed_up(*problems: tuple[str, str]) -> tuple[dict[str, str], ...]:
    return tuple(
        {"kind": kind, "path": path, "error": "Input/output error"} for kind, path in problems
    )


@pytest.mark.parametrize(
    "kind, path, kept",
    [
        ("unreadable", "data.db", ["data.db"]),  # a file that returned EIO when read
        ("unreadable", "docs", ["docs/stale.txt"]),  # a directory it could not list
        ("unstattable", "docs/stale.txt", ["docs/stale.txt"]),
        ("unknown-type", "data.db", ["data.db"]),
    ],
)
def test_deletefiles_keeps_what_the_increment_could_not_back_up(root, repo, kind, path, kept):
    """Present but not backed up this time is never a deletion: the image's version stays."""
    put(root / "data.db", b"the image's version")
    (root / "docs").mkdir()
    put(root / "docs" / "stale.txt", b"stale")
    put(root / "gone.txt", b"really deleted")
    m = replace(
        manifest(d("."), d("docs") if path != "docs" else d("other")),
        problems=not_backed_up((kind, path)),
    )

    report = replay(m, root, repo, delete=True)

    for p in kept:
        assert (root / p).exists(), f"{p} was deleted although it was only not backed up"
    if "data.db" in kept:
        assert (root / "data.db").read_bytes() == b"the image's version"
    assert not (root / "gone.txt").exists()  # what the increment knows is gone still goes
    finding = next(f for f in report.findings if f.code == "REPLAY_KEPT_NOT_BACKED_UP")
    assert finding.severity is Severity.WARNING and m.id in finding.message
    assert report.kept_not_backed_up == len(finding.details["paths"]) > 0


def test_hostile_problem_records_protect_nothing_outside_and_break_nothing(root, repo, canary):
    put(root / "gone.txt", b"gone")
    m = replace(
        manifest(d(".")),
        problems=(
            {"kind": "unreadable", "path": "../" + canary.name},
            {"kind": "unreadable", "path": 7},
            "not a record",
            {"kind": "vanished", "path": "gone.txt"},
        ),
    )
    outside = snapshot(canary)

    report = replay(m, root, repo, delete=True)

    assert not (root / "gone.txt").exists() and report.kept_not_backed_up == 0
    assert snapshot(canary) == outside


# --- hostile manifests ---------------------------------------------------------------------


def hostile_cases(repo: Repository, canary: Path) -> dict[str, tuple[list[FileEntry], str]]:
    """Return case → (entries added to a sound manifest, the path the refusal must name)."""
    new = f(repo, "new.txt", b"new")
    return {
        "dotdot": ([f(repo, "../outside/x", b"pwned")], "../outside/x"),
        "absolute": ([f(repo, str(canary / "x"), b"pwned")], str(canary / "x")),
        "dot-component": ([f(repo, "a/./b", b"pwned")], "a/./b"),
        "empty-component": ([f(repo, "a//b", b"pwned")], "a//b"),
        "trailing-slash": ([f(repo, "a/", b"pwned")], "a/"),
        "nul": ([f(repo, "a/b\0c", b"pwned")], "a/b\0c"),
        "duplicate": ([f(repo, "new.txt", b"pwned")], "new.txt"),
        "link-dotdot": ([replace(hard("a/l", new), link="../outside/x")], "a/l"),
        "link-to-directory": ([replace(hard("l", new), link="a")], "l"),
        "parent-is-a-file": ([f(repo, "new.txt/x", b"pwned")], "new.txt/x"),
        "parent-missing": ([f(repo, "nodir/x", b"pwned")], "nodir/x"),
    }


HOSTILE = [
    "dotdot",
    "absolute",
    "dot-component",
    "empty-component",
    "trailing-slash",
    "nul",
    "duplicate",
    "link-dotdot",
    "link-to-directory",
    "parent-is-a-file",
    "parent-missing",
    "no-root-entry",
]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_manifest_is_refused_before_any_change(root, repo, case):
    (root / "a").mkdir()
    put(root / "a" / "b", b"original")
    put(root / "unlisted", b"would be deleted")
    # The canary sits where "../outside" from the root leads (the kit's own directory).
    canary = root.parent / "outside"
    canary.mkdir()
    (canary / "x").write_text("canary")
    sound = [d(".", mtime=T0 + 99), d("a", mtime=T0 + 99), f(repo, "new.txt", b"new")]
    if case == "no-root-entry":
        entries, bad = sound[1:], "."
    else:
        extra, bad = hostile_cases(repo, canary)[case]
        entries = sound + extra
    before, outside = snapshot(root), snapshot(canary)

    with pytest.raises(HostileManifest) as refused:
        replay(manifest(*entries), root, repo, delete=True)

    assert repr(bad) in refused.value.message
    assert "nothing was changed" in refused.value.message
    assert snapshot(root) == before
    assert snapshot(canary) == outside


# --- symlink swap ---------------------------------------------------------------------


@pytest.mark.parametrize("swapped", ["d", "d/e"])
@pytest.mark.parametrize("delete", [True, False], ids=["deletefiles", "keepfiles"])
def test_symlink_swapped_for_a_directory_is_replaced_never_followed(
    root, repo, canary, swapped, delete
):
    (root / swapped).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(canary, root / swapped)  # where the manifest has a directory
    outside = snapshot(canary)
    entries = [d("."), d("d", 0o751)]
    if swapped == "d/e":
        entries.append(d("d/e", 0o751))
    entries.append(f(repo, f"{swapped}/file", b"replayed"))

    report = replay(manifest(*entries), root, repo, delete=delete)

    assert snapshot(canary) == outside
    assert (root / swapped).lstat().st_mode == stat.S_IFDIR | 0o751
    assert os.listdir(root / swapped) == ["file"]
    assert (root / swapped / "file").read_bytes() == b"replayed"
    assert report.files_replaced == 1  # the symlink became a directory
    assert report.deleted == 0  # the link itself was displaced, nothing behind it removed


def test_symlink_where_a_file_belongs_is_replaced_not_written_through(root, repo, canary):
    os.symlink(canary / "x", root / "victim")
    os.symlink(canary / "file", root / "meta-only")
    outside = snapshot(canary)
    m = manifest(
        d("."),
        f(repo, "victim", b"new"),
        # Same size and mtime as the canary file behind the link: still not "unchanged".
        f(
            repo,
            "meta-only",
            b"canary file",
            0o600,
            1234,
            mtime=(canary / "file").stat().st_mtime_ns,
        ),
    )
    replay(m, root, repo, delete=False)
    assert snapshot(canary) == outside
    assert (root / "victim").read_bytes() == b"new"
    assert not (root / "meta-only").is_symlink()
    assert_matches(root, m.entries[2])


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "unlisted"])
def test_replay_never_enters_a_file_system_mounted_below_root(loopkit, root, repo, listed):
    inner = loopkit.volume("16M", "ext4", mount=False)
    (root / "mnt").mkdir()
    mp = loopkit.mount(inner.device, root / "mnt")
    put(mp / "inner.txt", b"inner")
    before = snapshot(mp)
    entries = [d(".")]
    if listed:  # to write into it
        entries += [d("mnt"), f(repo, "mnt/new.txt", b"new")]
    # else: to delete it, with -deletefiles

    with pytest.raises(ReplayError, match="another file system mounted there"):
        replay(manifest(*entries), root, repo, delete=True)

    assert snapshot(mp) == before


# --- damage and cancel ---------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped", "missing"])
def test_damaged_chunk_stops_the_replay_naming_path_and_chunk(root, repo, damage):
    rng = random.Random(9)
    m = manifest(
        d("."),
        f(repo, "ok.txt", b"fine"),
        d("z"),
        f(repo, "z/broken.bin", rng.randbytes(2 * FILE_CHUNK)),
    )
    digest = m.entries[-1].chunks[1]
    obj = Path(repo.location) / "chunks" / digest.hex()[:2] / digest.hex()
    if damage == "flipped":
        raw = bytearray(obj.read_bytes())
        raw[-1] ^= 0xFF
        obj.write_bytes(raw)
    else:
        obj.unlink()

    with pytest.raises(ReplayDamaged) as stopped:
        replay(m, root, repo, delete=False)

    assert stopped.value.path == "z/broken.bin" and stopped.value.chunk == digest
    assert "'z/broken.bin'" in stopped.value.message and digest.hex() in stopped.value.message
    assert not (root / "z" / "broken.bin").exists()  # never half-written under its name
    assert leftovers(root) == []


def test_cancel_stops_the_replay_and_a_second_run_finishes_it(root, repo, monkeypatch):
    monkeypatch.setattr(progress, "EMIT_EVERY", 0.0)  # every step reports, so the cancel lands
    rng = random.Random(3)
    files = {f"f{i:02d}.bin": rng.randbytes(2 * FILE_CHUNK) for i in range(8)}
    m = manifest(d("."), *(f(repo, n, data) for n, data in files.items()))
    cancel = threading.Event()

    def cancel_after_three_mib(p: Progress) -> None:
        if p.done >= 3 * FILE_CHUNK:
            cancel.set()

    with pytest.raises(Cancelled):
        replay(m, root, repo, delete=False, progress=cancel_after_three_mib, cancel=cancel)

    assert (root / "f00.bin").read_bytes() == files["f00.bin"]
    assert not (root / "f01.bin").exists()  # cancelled mid-file: nothing under its name
    assert leftovers(root) == []
    report = replay(m, root, repo, delete=False)
    assert (report.files_created, report.unchanged) == (7, 1)  # f00.bin was done
    assert report.metadata_updated == 1  # the root's mtime, which the cancelled run never set
    for name, data in files.items():
        assert (root / name).read_bytes() == data


def test_cancel_before_the_start_changes_nothing(root, repo):
    put(root / "unlisted", b"stays")
    before = snapshot(root)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        replay(manifest(d("."), f(repo, "new", b"x")), root, repo, delete=True, cancel=cancel)
    assert snapshot(root) == before
