"""A failing disk, source or target: one line naming the device, the bytes, the state, the fix.

The failing disk is a fake, because this machine has no device-mapper (no dm-error):
a real loop device over a file of a FUSE file system (tests/fusekit.py) whose chosen
byte ranges answer EIO, as a bad disk's sectors do. Everything above the loop device
is the real thing.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from cliutil import blockvault
from fusekit import drop_cached, failing_file, physical_ranges
from loopkit import run
from test_agent import raw_volume

pytestmark = pytest.mark.loop
MIB = 1 << 20


@pytest.fixture
def failing(tmp_path):
    """``(loop device over a failing 12 MiB file of random bytes, set_bad(ranges))``."""
    with failing_device(tmp_path, os.urandom(12 * MIB)) as pair:
        yield pair


@contextlib.contextmanager
def failing_device(workdir: Path, content: bytes | int):
    """Yield ``(loop device, set_bad)`` over a FUSE file of ``content`` (bytes, or a size)."""
    backing = workdir / "backing.img"
    if isinstance(content, int):
        with open(backing, "wb") as f:
            f.truncate(content)
    else:
        backing.write_bytes(content)
    with failing_file(backing, workdir) as (path, control):

        def set_bad(*ranges: tuple[int, int]) -> None:
            control.write_text(json.dumps([list(r) for r in ranges]))

        # Attached here, not by the kit: it must be detached before the FUSE file goes.
        dev = run("losetup", "--find", "--show", str(path)).strip()
        try:
            yield dev, set_bad
        finally:
            set_bad()
            run("losetup", "--detach", dev)


def bv(repo: Path, *args: str):
    return blockvault(*args, "--repo", str(repo), "--no-agent", timeout=120)


@pytest.mark.parametrize("at", [4 * MIB, 5 * MIB + 4096, 12 * MIB - 4096])
def test_a_source_that_fails_to_read_fails_the_backup_and_records_nothing(failing, tmp_path, at):
    dev, set_bad = failing
    repo = tmp_path / "repo"
    assert blockvault("repo", "init", "--repo", str(repo)).rc == 0
    set_bad((at, at + 4096))

    res = bv(repo, "backup", "image", dev, "--imagetype", "dynamic")

    assert res.rc == 12, res.out + res.err
    [line] = res.err.strip().splitlines()
    assert dev in line and "Input/output error" in line and "nothing of it was recorded" in line
    assert "internal error" not in line
    chunk_start = at - at % (4 * MIB)
    assert any(f"byte {n}" in line for n in range(chunk_start, at + 1, 4096)), line
    assert not (repo / "images").exists() or list((repo / "images").rglob("*")) == []


def test_a_source_that_fails_at_its_start_is_refused_as_failing(failing, tmp_path):
    dev, set_bad = failing
    repo = tmp_path / "repo"
    set_bad((0, 4096))  # where its signature is read, before the backup starts

    res = bv(repo, "backup", "image", dev, "--imagetype", "dynamic")

    assert res.rc == 12, res.out + res.err
    [line] = res.err.strip().splitlines()
    assert dev in line and "Input/output error" in line and "failing" in line, line
    assert "device policy" not in line and not repo.exists()


@pytest.mark.parametrize("chunk", [0, 1, 2])
def test_a_target_that_fails_to_write_stops_the_restore_naming_what_is_written(
    failing, loopkit, tmp_path, chunk
):
    """rc 12 and one line: the device, the error, that it is partly written, and what to do.

    The failing range is a whole 4 MiB chunk. The kit's fake disk cannot fail a few
    sectors faithfully: when the FUSE file fails a write part-way through one of the
    loop driver's requests (the server did answer EIO), the write was still reported
    done about once in 15 restores — an error lost between the loop driver and FUSE,
    which a real disk's driver does not lose. A request wholly inside the range fails.
    """
    dev, set_bad = failing
    source = raw_volume(loopkit, 12)
    repo = tmp_path / "repo"
    assert bv(repo, "backup", "image", source.device).rc == 0
    set_bad((chunk * 4 * MIB, (chunk + 1) * 4 * MIB))

    res = bv(repo, "restore", "image", source.device, dev, "--confirm", dev)

    assert res.rc == 12, res.out + res.err
    [line] = res.err.strip().splitlines()
    assert dev in line and "Input/output error" in line and "internal error" not in line, line
    assert "restore again" in line, line
    assert "partly written (between bytes" in line or "not yet written" in line, line
    # The mark of an unfinished restore stays: the device is not the image.
    assert "RESTORE_UNFINISHED" in blockvault("check-volume", dev).out


@contextlib.contextmanager
def mounted(device: str, where: Path):
    """Mount ``device`` at ``where`` for the block; unmounted on every exit."""
    where.mkdir()
    run("mount", device, str(where))
    try:
        yield where
    finally:
        run("umount", str(where))


def test_a_file_that_fails_to_read_is_kept_by_a_deletefiles_replay(loopkit, tmp_path):
    """EIO reading one file: the increment keeps it as not backed up; the replay keeps it."""
    with failing_device(tmp_path, 64 * MIB) as (dev, set_bad):
        run("mkfs.ext4", "-q", "-F", dev)
        repo = tmp_path / "repo"
        with mounted(dev, tmp_path / "mnt") as mnt:
            (mnt / "data.db").write_bytes(b"image's version\n" * 4096)
            (mnt / "gone.txt").write_text("deleted after the image\n")
            os.sync()
            assert bv(repo, "backup", "image", str(mnt), "--imagetype", "dynamic").rc <= 8
            (mnt / "data.db").write_bytes(b"today's version!\n" * 4096)
            (mnt / "gone.txt").unlink()
            drop_cached(mnt / "data.db")
            set_bad(*physical_ranges(mnt / "data.db"))

            inc = bv(repo, "backup", "image", str(mnt), "--mode", "incremental", "--json")

            set_bad()
        assert inc.rc == 4, inc.out + inc.err  # TSM: some files skipped
        unreadable = {f["code"]: f for f in inc.json()["findings"]}["INCREMENT_UNREADABLE"]
        assert unreadable["details"]["paths"] == ["data.db"], unreadable

    dest = loopkit.attach(loopkit.image("64M"))
    res = bv(
        repo, "restore", "image", dev, dest, "--incremental", "--deletefiles",
        "--confirm", dest, "--json",
    )  # fmt: skip
    assert res.rc == 8, res.out + res.err
    assert "data.db" in json.dumps(res.json()["replay"]), res.out
    where = loopkit.mount(dest)
    try:
        assert (where / "data.db").read_bytes() == b"image's version\n" * 4096
        assert not (where / "gone.txt").exists()  # a real deletion is still replayed
    finally:
        loopkit.umount(where)


def test_a_chunk_the_repository_disk_fails_to_read_stops_the_restore_in_one_line(
    loopkit, tmp_path
):
    """EIO reading a chunk file: rc 12, the chunk and image byte named, the target's state."""
    source = raw_volume(loopkit, 16)
    with failing_device(tmp_path, 64 * MIB) as (dev, set_bad):
        run("mkfs.ext4", "-q", "-F", dev)
        with mounted(dev, tmp_path / "mnt") as mnt:
            repo = mnt / "repo"
            assert bv(repo, "backup", "image", source.device).rc == 0
            chunks = sorted(p for p in (repo / "chunks").rglob("*") if p.is_file())
            victim = chunks[len(chunks) // 2]
            drop_cached(victim)
            set_bad(*physical_ranges(victim))
            dest = loopkit.attach(loopkit.image("16M"))

            res = bv(repo, "restore", "image", source.device, dest, "--confirm", dest)

            set_bad()
    assert res.rc == 12, res.out + res.err
    [line] = res.err.strip().splitlines()
    assert "internal error" not in line and "Input/output error" in line, line
    assert victim.name in line and "image byte" in line, line
    assert dest in line and ("partly written" in line or "not yet written" in line), line
