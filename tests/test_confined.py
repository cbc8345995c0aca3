"""Beneath: paths below a root descriptor open without following a symlink or leaving its device.

Every behaviour is checked both ways: with openat2 doing the resolving, and with the
component-by-component walk that stands in for it where the kernel has no openat2
(forced here by a syscall that answers ENOSYS, as such a kernel or a seccomp filter does).
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import confined
from core.confined import Beneath, OtherFileSystem
from core.engine.backup import BackupOptions, backup_image
from core.increments.backup import backup_increment
from core.progress import Progress
from core.repo.filemanifest import FILE_CHUNK
from core.repo.format import ZERO_ID
from core.repo.repository import Repository
from core.snapshots import ImageType

READ = os.O_RDONLY


class _NoOpenat2:
    """Stands in for libc: the openat2 syscall "does not exist"."""

    @staticmethod
    def syscall(*_args: object) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Either the kernel resolves (openat2), or it has no openat2 and the walk does."""
    if request.param == "walk":
        monkeypatch.setattr(confined, "_libc", _NoOpenat2())
    return str(request.param)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``root/`` with ``d/e/file`` and symlinks out to ``outside/``, which holds a secret."""
    outside = tmp_path / "outside"
    (outside / "e").mkdir(parents=True)
    (outside / "secret").write_text("secret")
    (outside / "e" / "file").write_text("secret too")
    root = tmp_path / "root"
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "file").write_text("inside")
    os.symlink(outside, root / "link")  # a directory component that points outside
    os.symlink(outside / "e", root / "d" / "elink")
    os.symlink(outside / "secret", root / "flink")  # the last component points outside
    return root


@pytest.fixture
def root_fd(tree: Path) -> Iterator[int]:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def _open_fds(tree: Path) -> Counter[str]:
    """Return what this process holds open in the test's own directories, by path.

    By target, not by number: other threads of the test process open and close
    descriptors meanwhile, and a number closed by them and reused would look unchanged.
    """
    top = str(tree.parent)
    held: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target == top or target.startswith(top + "/"):
            held[target] += 1
    return held


def test_a_file_below_the_root_opens(mode, root_fd):
    beneath = Beneath(root_fd)
    assert _read(beneath.open("d/e/file", READ)) == b"inside"
    assert beneath.openat2 is (mode == "openat2")


def test_a_symlinked_directory_pointing_outside_is_refused_not_followed(mode, tree, root_fd):
    beneath = Beneath(root_fd)
    before = _open_fds(tree)
    for path in ("link/secret", "link/e/file", "d/elink/file"):
        with pytest.raises(OSError) as info:
            beneath.open(path, READ)
        assert info.value.errno in (errno.ELOOP, errno.ENOTDIR), path
    assert beneath.directory(("link",)) is None
    assert beneath.directory(("link", "e")) is None
    assert beneath.directory(("d", "elink")) is None
    beneath.close()
    assert _open_fds(tree) == before  # the walk left nothing open on the way


def test_a_symlink_as_the_last_component_is_refused(mode, root_fd):
    with pytest.raises(OSError) as info:
        Beneath(root_fd).open("flink", READ)
    assert info.value.errno == errno.ELOOP


@pytest.mark.parametrize("path", ["../outside/secret", "d/../../outside/secret", "/etc/hostname"])
def test_a_path_that_climbs_out_of_the_root_is_refused(mode, root_fd, path):
    with pytest.raises(OSError) as info:
        Beneath(root_fd).open(path, READ)
    assert info.value.errno == errno.EXDEV
    assert not isinstance(info.value, OtherFileSystem)


def test_a_directory_walk_refuses_names_that_climb_out(root_fd):
    beneath = Beneath(root_fd)
    for parts in (("..",), ("d", ".."), ("d/e",), ("",)):
        with pytest.raises(OSError) as info:
            beneath.directory(parts)
        assert info.value.errno == errno.EXDEV, parts
    beneath.close()


def test_a_missing_path_is_enoent_and_a_file_on_the_way_enotdir(mode, root_fd):
    beneath = Beneath(root_fd)
    with pytest.raises(FileNotFoundError):
        beneath.open("d/nothing", READ)
    with pytest.raises(NotADirectoryError):
        beneath.open("d/e/file/below", READ)
    assert beneath.directory(("d", "nothing")) is None
    assert beneath.directory(("d", "e", "file")) is None


def test_directory_walks_share_leading_directories_and_close_releases_them(tree, root_fd):
    before = _open_fds(tree)
    (tree / "d" / "f").mkdir()
    beneath = Beneath(root_fd)
    assert beneath.directory(()) == root_fd
    e = beneath.directory(("d", "e"))
    assert e is not None and os.fstat(e).st_ino == (tree / "d" / "e").stat().st_ino
    f = beneath.directory(("d", "f"))
    assert f is not None and os.fstat(f).st_ino == (tree / "d" / "f").stat().st_ino
    # "d" kept open once, "e" closed, "f" open
    assert _open_fds(tree) - before == Counter([str(tree / "d"), str(tree / "d" / "f")])
    beneath.close()
    assert _open_fds(tree) == before


# --- other file systems below the root ------------------------------------------------------


@pytest.mark.loop
def test_another_file_system_below_the_root_is_refused(loopkit, mode):
    root = loopkit.volume("16M", "ext4").mount_point
    inner = loopkit.volume("16M", "ext4", mount=False)
    (root / "mnt").mkdir()
    mp = loopkit.mount(inner.device, root / "mnt")
    (mp / "inner.txt").write_text("inner")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        beneath = Beneath(fd)
        with pytest.raises(OtherFileSystem) as info:
            beneath.open("mnt/inner.txt", READ)
        assert info.value.errno == errno.EXDEV
        with pytest.raises(OtherFileSystem) as info:
            beneath.directory(("mnt",))
        assert info.value.filename == "mnt"
        beneath.close()
    finally:
        os.close(fd)


@pytest.mark.loop
def test_openat2_also_refuses_a_bind_mount_of_the_same_file_system(loopkit):
    root = loopkit.volume("16M", "ext4").mount_point
    (root / "real").mkdir()
    (root / "real" / "file").write_text("data")
    loopkit.bind(root / "real", root / "bound")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OtherFileSystem):
            Beneath(fd).open("bound/file", READ)
    finally:
        os.close(fd)


# --- the increment reads through it ----------------------------------------------------------


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.loop
def test_an_increment_never_reads_through_a_directory_swapped_for_a_symlink(
    loopkit, tmp_path, mode
):
    mp = loopkit.volume("128M", "ext4").mount_point
    (mp / "big.bin").write_bytes(_rand(8 << 20, 1))  # the lowest inode: read first
    (mp / "data").mkdir()
    mine = {f"data/f{i}.bin": _rand(64 << 10, 10 + i) for i in range(5)}
    for rel, data in mine.items():
        (mp / rel).write_bytes(data)
    outside = tmp_path / "outside"
    outside.mkdir()
    secrets = {rel: _rand(64 << 10, 100 + i) for i, rel in enumerate(mine)}
    for rel, data in secrets.items():
        (outside / Path(rel).name).write_bytes(data)
    repo = Repository.init(str(tmp_path / "repo"))
    os.sync()
    backup_image(str(mp), repo, BackupOptions(imagetype=ImageType.STATIC))
    swapped: list[bool] = []

    def swap(p: Progress) -> None:
        # Once the reading has begun (on big.bin), "data" becomes a symlink to outside.
        if p.phase == "reading" and not swapped:
            (mp / "data").rename(mp / "data.moved")
            os.symlink(outside, mp / "data")
            swapped.append(True)

    report = backup_increment(str(mp), repo, progress=swap, workers=1)
    m = repo.increment(report.increment_id)

    assert swapped
    stored = {d for e in m.entries for d in e.chunks if d != ZERO_ID}
    assert not any(repo.get_chunk(d) in secrets.values() for d in stored)
    by = m.by_path()
    (vanished,) = [f for f in report.findings if f.code == "INCREMENT_VANISHED"]
    assert set(vanished.details["paths"]) == set(mine)  # not reachable at their path now
    assert not set(mine) & set(by)
    big = by["big.bin"]
    assert len(big.chunks) == (8 << 20) // FILE_CHUNK
