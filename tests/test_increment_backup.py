"""File-level increments of mounted ext4 loop volumes: what is read, sent, classified, kept.

Every volume is a loop device this test made; every repository lives in tmp_path,
either as a directory or behind a real ``blockvault serve`` (each test runs on both).
The full image each increment builds on is taken with the image engine itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from cliutil import ROOT
from imagekit import tree_digest

from core.engine.backup import BackupOptions, backup_image
from core.engine.restore import restore_image
from core.increments.backup import (
    IncrementReport,
    NoFullImage,
    VolumeNotMounted,
    backup_increment,
)
from core.increments.replay import replay
from core.increments.scan import scan_tree
from core.progress import Cancelled, Progress
from core.repo.filemanifest import FILE_CHUNK, FileManifest, entries_sorted
from core.repo.format import ZERO_ID
from core.repo.repository import Repository
from core.snapshots import ImageType

pytestmark = pytest.mark.loop

MIB = 1 << 20


@pytest.fixture
def repo(repo_location) -> Repository:
    return Repository.open(repo_location)


@pytest.fixture
def mp(loopkit) -> Path:
    """The mount point of a fresh, mounted 128 MiB ext4 loop volume."""
    vol = loopkit.volume("128M", "ext4")
    assert vol.mount_point is not None
    return vol.mount_point


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def take_image(mp: Path, repo: Repository) -> str:
    os.sync()
    return backup_image(str(mp), repo, BackupOptions(imagetype=ImageType.STATIC)).image_id


def increment(mp: Path, repo: Repository, **kw) -> tuple[IncrementReport, FileManifest]:
    report = backup_increment(str(mp), repo, **kw)
    return report, repo.increment(report.increment_id)


def content(repo: Repository, m: FileManifest, path: str) -> bytes:
    """Return a file's bytes as the manifest's pieces give them (hard links followed)."""
    e = m.by_path()[path]
    if e.link is not None:
        e = m.by_path()[e.link]
    data = b"".join(bytes(FILE_CHUNK) if d == ZERO_ID else repo.get_chunk(d) for d in e.chunks)
    return data[: e.size]


def live_paths(mp: Path) -> set[str]:
    out = {"."}
    for dirpath, dirs, files in os.walk(mp):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, name), mp))
    return out


def codes(report: IncrementReport) -> set[str]:
    return {f.code for f in report.findings}


def basic_tree(mp: Path) -> dict[str, bytes]:
    files = {
        "docs/readme.txt": b"hello\n" * 1000,
        "docs/notes.txt": b"notes " * 5000,
        "data/a.bin": rand(300_000, 1),
        "data/b.bin": rand(2 * MIB + 12_345, 2),
        "data/empty": b"",
        "top.txt": b"top level\n",
    }
    for rel, data in files.items():
        write(mp / rel, data)
    return files


# --- the first and the unchanged increment ------------------------------------------------------


def test_first_increment_stores_every_file_and_lists_every_path(mp, repo):
    files = basic_tree(mp)
    image = take_image(mp, repo)
    report, m = increment(mp, repo)
    assert report.return_code == 0, report.findings
    assert report.base_image == image and report.previous is None
    assert m.base_image == image and m.previous is None
    assert m.volume.key == str(mp) and m.volume.mount_point == str(mp)
    assert {e.path for e in m.entries} == live_paths(mp)
    assert m.entries == entries_sorted(m.entries)
    assert report.files_scanned == report.files_new == len(m.entries)
    total = sum(len(d) for d in files.values())
    assert report.bytes_read == total
    assert report.bytes_new + report.bytes_dedup == total
    assert 0 < report.bytes_sent < report.bytes_new  # the text compresses
    for rel, data in files.items():
        assert content(repo, m, rel) == data
        e = m.by_path()[rel]
        st = os.lstat(mp / rel)
        assert (e.mode, e.uid, e.gid, e.mtime_ns, e.ino) == (
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            st.st_ino,
        )
    assert m.by_path()["data/empty"].chunks == ()


def test_unchanged_increment_reads_and_sends_nothing(mp, repo):
    basic_tree(mp)
    take_image(mp, repo)
    first, m1 = increment(mp, repo)
    second, m2 = increment(mp, repo)
    assert second.previous == first.increment_id and m2.previous == first.increment_id
    assert second.bytes_read == 0 and second.bytes_sent == 0 and second.files_read == 0
    assert second.files_unchanged == second.files_scanned == len(m1.entries)
    assert second.files_new == second.files_changed == second.files_deleted == 0
    assert m2.entries == m1.entries
    assert second.return_code == 0


def test_increments_taken_within_one_second_chain_in_order(mp, repo):
    write(mp / "f", b"0")
    take_image(mp, repo)
    ids = []
    for i in range(5):
        write(mp / "f", str(i).encode() * (i + 1))
        report, m = increment(mp, repo)
        assert m.previous == (ids[-1] if ids else None)
        ids.append(report.increment_id)
    assert repo.increment_ids() == ids
    assert content(repo, repo.increment(ids[-1]), "f") == b"44444"


def test_hash_all_rereads_every_file_and_sends_nothing_new(mp, repo):
    files = basic_tree(mp)
    take_image(mp, repo)
    increment(mp, repo)
    report, _ = increment(mp, repo, hash_all=True)
    assert report.bytes_read == sum(len(d) for d in files.values())
    assert report.bytes_sent == 0 and report.bytes_new == 0
    assert report.files_unchanged == report.files_scanned


# --- classification ------------------------------------------------------------------------------


def test_new_changed_and_deleted_files_are_classified(mp, repo):
    basic_tree(mp)
    take_image(mp, repo)
    increment(mp, repo)
    write(mp / "docs/new.txt", b"brand new\n")  # docs/ gets a new entry
    with open(mp / "data/a.bin", "ab") as f:  # content changed in place
        f.write(b"more")
    (mp / "top.txt").unlink()  # the root directory loses an entry
    report, m = increment(mp, repo)
    assert report.files_new == 1
    assert report.files_changed == 1
    assert report.files_deleted == 1
    # The two directories whose entries changed: same "content", new mtime.
    assert report.files_metadata_only == 2
    assert report.files_unchanged == report.files_scanned - 1 - 1 - 2
    assert "top.txt" not in m.by_path()
    assert content(repo, m, "data/a.bin") == rand(300_000, 1) + b"more"
    assert content(repo, m, "docs/new.txt") == b"brand new\n"
    # Only the two files with new content were read.
    assert report.bytes_read == 300_004 + 10
    assert report.files_read == 2


def test_chmod_chown_and_touch_are_metadata_only_and_send_nothing(mp, repo):
    basic_tree(mp)
    take_image(mp, repo)
    _, m1 = increment(mp, repo)
    os.chmod(mp / "docs/readme.txt", 0o600)
    os.chown(mp / "docs/notes.txt", 1234, 5678)
    os.utime(mp / "data/b.bin", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    report, m2 = increment(mp, repo)
    assert report.files_metadata_only == 3
    assert report.files_changed == report.files_new == report.files_deleted == 0
    assert report.bytes_sent == 0 and report.bytes_new == 0
    # Their ctime moved, so they were read again to be sure the content did not change.
    assert report.files_read == 3
    after = m2.by_path()
    assert after["docs/readme.txt"].mode == 0o600
    assert (after["docs/notes.txt"].uid, after["docs/notes.txt"].gid) == (1234, 5678)
    assert after["data/b.bin"].mtime_ns == 1_600_000_000_123_456_789
    for rel in ("docs/readme.txt", "docs/notes.txt", "data/b.bin"):
        assert after[rel].chunks == m1.by_path()[rel].chunks


def test_one_changed_byte_in_a_20_mib_file_sends_one_piece(mp, repo):
    data = bytearray(rand(20 * MIB, 3))
    write(mp / "big.bin", bytes(data))
    take_image(mp, repo)
    _, m1 = increment(mp, repo)
    with open(mp / "big.bin", "r+b") as f:
        f.seek(7 * MIB + 12345)
        f.write(b"\x00" if data[7 * MIB + 12345] else b"\x01")
    report, m2 = increment(mp, repo)
    assert report.files_changed == 1
    assert report.bytes_read == 20 * MIB
    assert report.bytes_new == FILE_CHUNK
    assert 0.9 * FILE_CHUNK < report.bytes_sent < 1.1 * FILE_CHUNK
    old, new = m1.by_path()["big.bin"].chunks, m2.by_path()["big.bin"].chunks
    assert [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b] == [7]


# --- what a file system holds -----------------------------------------------------------------


def test_hard_links_are_read_and_stored_once(mp, repo):
    write(mp / "a/first.bin", rand(3 * MIB, 4))
    (mp / "b").mkdir()
    os.link(mp / "a/first.bin", mp / "b/second.bin")
    os.link(mp / "a/first.bin", mp / "b/third.bin")
    take_image(mp, repo)
    report, m = increment(mp, repo)
    assert report.bytes_read == 3 * MIB and report.bytes_new == 3 * MIB
    by = m.by_path()
    assert by["a/first.bin"].link is None and len(by["a/first.bin"].chunks) == 3
    for rel in ("b/second.bin", "b/third.bin"):
        assert by[rel].link == "a/first.bin" and by[rel].chunks == ()
        assert by[rel].nlink == 3 and by[rel].ino == by["a/first.bin"].ino
    assert content(repo, m, "b/third.bin") == rand(3 * MIB, 4)


def test_symlinks_empty_dirs_fifos_devices_and_sparse_files(mp, repo):
    (mp / "empty").mkdir()
    os.symlink("../empty", mp / "rel-link")
    os.symlink("/nowhere/at/all", mp / "dangling")
    os.mkfifo(mp / "pipe", 0o640)
    os.mknod(mp / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with open(mp / "sparse.img", "wb") as f:
        f.truncate(64 * MIB)
        f.seek(32 * MIB)
        f.write(rand(MIB, 5))
    name = os.fsdecode(b"caf\xe9-latin1")  # not UTF-8: kept with a surrogate escape
    write(mp / name, b"x")
    take_image(mp, repo)
    report, m = increment(mp, repo)
    assert report.return_code == 0, report.findings
    by = m.by_path()
    assert by["empty"].kind == "d"
    assert (by["rel-link"].kind, by["rel-link"].target) == ("l", "../empty")
    assert (by["dangling"].kind, by["dangling"].target) == ("l", "/nowhere/at/all")
    assert (by["pipe"].kind, by["pipe"].mode) == ("p", 0o640)
    assert (by["null"].kind, by["null"].rdev) == ("c", os.makedev(1, 3))
    sparse = by["sparse.img"]
    assert sparse.size == 64 * MIB and len(sparse.chunks) == 64
    assert [i for i, d in enumerate(sparse.chunks) if d != ZERO_ID] == [32]
    # The holes were skipped, not read: about the one MiB of data (and the tiny file).
    assert report.bytes_read <= MIB + 4096
    assert content(repo, m, "sparse.img")[32 * MIB : 33 * MIB] == rand(MIB, 5)
    assert by[name].kind == "f" and content(repo, m, name) == b"x"


def test_a_mount_point_below_is_recorded_but_not_entered(loopkit, mp, repo):
    write(mp / "sub/hidden-underneath.txt", b"under the mount")
    write(mp / "keep.txt", b"keep")
    take_image(mp, repo)
    increment(mp, repo)
    inner = loopkit.volume("32M", "ext4", mount=False)
    loopkit.mount(inner.device, mp / "sub")
    write(mp / "sub/on-the-other-volume.txt", b"other")
    report, m = increment(mp, repo)
    by = m.by_path()
    assert "sub" in by and by["sub"].kind == "d"
    assert "sub/on-the-other-volume.txt" not in by
    # What the mount hides is still on the volume: the previous entry stands.
    assert "sub/hidden-underneath.txt" in by
    assert report.files_deleted == 0
    assert "INCREMENT_MOUNTS_BELOW" in codes(report)
    assert report.return_code == 0


def test_scan_order_and_hard_links_do_not_depend_on_threads(mp):
    for d in range(30):
        for f in range(20):
            write(mp / f"d{d:02d}" / f"s{f % 3}" / f"f{f}", b"")
    os.link(mp / "d29/s0/f0", mp / "d00/link-to-d29")
    one = scan_tree(str(mp), workers=1)
    two = scan_tree(str(mp), workers=2)
    assert one.entries == two.entries
    assert tuple(one.entries) == entries_sorted(one.entries)
    # Built without the dataclass constructor, yet the same values as with it.
    rebuilt = [replace(e) for e in one.entries]
    assert rebuilt == one.entries and [hash(e) for e in rebuilt] == [hash(e) for e in one.entries]
    by = {e.path: e for e in one.entries}
    assert by["d00/link-to-d29"].link is None  # first in path order
    assert by["d29/s0/f0"].link == "d00/link-to-d29"
    assert one.problems == [] and one.mount_points == []


# --- trouble during the backup -------------------------------------------------------------------


def test_a_file_deleted_during_the_backup_is_a_vanished_warning(mp, repo):
    write(mp / "big.bin", rand(8 * MIB, 6))  # the lowest inode: read first
    victims = [f"victims/v{i}.bin" for i in range(5)]
    for i, rel in enumerate(victims):
        write(mp / rel, rand(64 << 10, 10 + i))
    take_image(mp, repo)
    deleted: list[str] = []

    def delete_victims(p: Progress) -> None:
        if p.phase == "reading" and not deleted:
            for rel in victims:
                (mp / rel).unlink()
                deleted.append(rel)

    report, m = increment(mp, repo, progress=delete_victims, workers=1)
    assert deleted == victims
    assert report.return_code == 8
    (vanished,) = [f for f in report.findings if f.code == "INCREMENT_VANISHED"]
    gone = set(vanished.details["paths"])
    # Every victim not already being read when the callback ran vanished.
    assert gone <= set(victims) and len(gone) >= len(victims) - 1
    by = m.by_path()
    assert not gone & set(by)
    assert content(repo, m, "big.bin") == rand(8 * MIB, 6)
    assert {p["path"] for p in m.problems if p["kind"] == "vanished"} == gone


APPENDER = """
import sys
with open(sys.argv[1], "ab", buffering=0) as f:
    f.write(b"first line\\n")
    print("appending", flush=True)
    while True:
        f.write(b"line\\n")
"""


def test_a_file_that_keeps_changing_while_read_is_a_changed_warning(mp, repo):
    write(mp / "growing.log", rand(16 * MIB, 7))
    take_image(mp, repo)
    # A writer that never pauses, as a busy log; a process of its own, so that it keeps
    # writing whatever this one's threads do.
    writer = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(mp / "growing.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "appending\n"
        report, m = increment(mp, repo, workers=1)
    finally:
        writer.kill()
        writer.wait()
    assert report.return_code == 8
    (changed,) = [f for f in report.findings if f.code == "INCREMENT_CHANGED"]
    assert changed.details["paths"] == ["growing.log"]
    # What was read is kept, consistent with itself: the pieces cover the size recorded.
    e = m.by_path()["growing.log"]
    assert e.size >= 16 * MIB
    assert len(e.chunks) == (e.size + FILE_CHUNK - 1) // FILE_CHUNK
    assert content(repo, m, "growing.log")[: 16 * MIB] == rand(16 * MIB, 7)


UNPRIVILEGED_ROOT = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]
"""Root without the capabilities that let it read any file: mode 000 means EACCES."""

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[3])
from core.increments.backup import backup_increment
from core.repo.repository import Repository
r = backup_increment(sys.argv[1], Repository.open(sys.argv[2], create=False))
print(json.dumps({"report": r.to_dict(), "rc": int(r.return_code)}))
"""


def test_unreadable_files_are_skipped_keeping_their_previous_version(mp, repo):
    write(mp / "secret.txt", b"old secret")
    write(mp / "locked/inner.txt", b"inside a locked directory")
    write(mp / "open.txt", b"readable")
    take_image(mp, repo)
    _, m1 = increment(mp, repo)
    # Make the files unreadable to root without DAC capabilities: root owns them, mode 000.
    os.chmod(mp / "secret.txt", 0)
    write(mp / "new-secret.txt", b"never read")
    os.chmod(mp / "new-secret.txt", 0)
    os.chmod(mp / "locked", 0)
    probe = subprocess.run(
        [*UNPRIVILEGED_ROOT, "cat", str(mp / "secret.txt")], capture_output=True, check=False
    )
    assert probe.returncode != 0, "setpriv did not take the DAC capabilities away"

    child = subprocess.run(
        [*UNPRIVILEGED_ROOT, sys.executable, "-c", CHILD, str(mp), repo.location, ROOT],
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout)
    report = out["report"]
    assert out["rc"] == 4  # TSM: some objects skipped
    findings = {f["code"]: f for f in report["findings"]}
    unreadable = findings["INCREMENT_UNREADABLE"]["details"]
    assert sorted(unreadable["paths"]) == ["new-secret.txt", "secret.txt"]
    assert unreadable["kept_previous"] == ["secret.txt"]
    assert findings["INCREMENT_NOT_SCANNED"]["details"]["paths"] == ["locked"]
    assert report["files_skipped"] == 3
    m2 = repo.increment(report["increment_id"])
    by = m2.by_path()
    # The previous version stands (a replay must not delete it); the new one is left out.
    assert by["secret.txt"] == m1.by_path()["secret.txt"]
    assert "new-secret.txt" not in by
    assert by["locked/inner.txt"] == m1.by_path()["locked/inner.txt"]
    assert report["files_deleted"] == 0
    assert content(repo, m2, "open.txt") == b"readable"


def test_cancel_leaves_no_increment(mp, repo):
    write(mp / "big.bin", rand(8 * MIB, 8))
    take_image(mp, repo)
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        backup_increment(str(mp), repo, progress=lambda _p: cancel.set(), cancel=cancel)
    assert repo.increment_ids() == []
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):  # already during the scan
        backup_increment(str(mp), repo, cancel=cancel)
    assert repo.increment_ids() == []
    report, _ = increment(mp, repo)  # and a later run is whole
    assert report.bytes_read == 8 * MIB


# --- refusals -------------------------------------------------------------------------------------


def test_without_a_full_image_the_increment_is_refused(mp, repo):
    write(mp / "f", b"x")
    with pytest.raises(NoFullImage) as e:
        backup_increment(str(mp), repo)
    assert e.value.message == (
        f"no image of {mp}: take one first with 'blockvault backup image {mp}'"
    )
    assert repo.increment_ids() == []


def test_an_unmounted_volume_is_refused(loopkit, repo):
    vol = loopkit.volume("32M", "ext4", mount=False)
    with pytest.raises(VolumeNotMounted, match="is not mounted; mount it first"):
        backup_increment(vol.device, repo)
    raw = loopkit.volume("8M", None)
    with pytest.raises(VolumeNotMounted, match="holds no file system"):
        backup_increment(raw.device, repo)


def test_an_image_of_another_volume_does_not_count(loopkit, mp, repo):
    other = loopkit.volume("32M", "ext4")
    take_image(other.mount_point, repo)
    with pytest.raises(NoFullImage):
        backup_increment(str(mp), repo)


# --- the guide's example, end to end --------------------------------------------------------------


def test_monday_to_thursday_replays_to_thursday(loopkit, repo):
    """The guide's example: image on Monday, increments Tuesday to Thursday, restore + replay."""
    vol = loopkit.volume("64M", "ext4")
    mp = vol.mount_point
    for i in (1, 2, 3):
        write(mp / f"file{i}", f"file {i} on Monday\n".encode() * 100)
    image = take_image(mp, repo)
    write(mp / "file4", b"created on Tuesday\n")
    increment(mp, repo)
    (mp / "file2").unlink()
    write(mp / "file3", b"changed on Wednesday\n")
    increment(mp, repo)
    (mp / "file1").unlink()
    thursday, m = increment(mp, repo)
    assert thursday.base_image == image and thursday.files_deleted == 1
    expected = tree_digest(mp)

    dest = loopkit.attach(loopkit.image("64M"))
    restore_image(repo.image(image), dest, repo, confirm=dest)
    restored = loopkit.mount(dest)
    assert sorted(p.name for p in restored.glob("file*")) == ["file1", "file2", "file3"]
    replay(m, restored, repo, delete=True)
    assert tree_digest(restored) == expected
    assert (
        hashlib.sha256((restored / "file3").read_bytes()).hexdigest()
        == hashlib.sha256(b"changed on Wednesday\n").hexdigest()
    )
    loopkit.umount(restored)
