"""A repository whose disk fills up: the backup fails, one line, rc 12, and records nothing.

The repository lives on a small ext4 loop volume this test made and mounted, so
ENOSPC comes from a real file system, at whatever point the data stops fitting.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cliutil import blockvault

from core.engine.backup import BackupOptions, backup_image
from core.repo.repository import Repository
from core.snapshots import ImageType

pytestmark = pytest.mark.loop

MIB = 1 << 20


@pytest.fixture
def small_repo(loopkit) -> Path:
    """A repository on a mounted 24 MiB ext4 volume of its own."""
    vol = loopkit.volume("24M", "ext4")
    assert vol.mount_point is not None
    path = vol.mount_point / "repo"
    Repository.init(str(path))
    return path


def fill_random(directory: Path, total: int, piece: int = 4 * MIB) -> None:
    """Write ``total`` bytes of incompressible files into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(total // piece):
        (directory / f"random-{i:03d}.bin").write_bytes(os.urandom(piece))


def bv(repo: Path, *args: str):
    return blockvault(*args, "--repo", str(repo), "--no-agent", "--json", timeout=300)


def test_an_increment_that_runs_out_of_repository_space_fails_and_records_nothing(
    loopkit, small_repo
):
    vol = loopkit.volume("128M", "ext4")
    assert vol.mount_point is not None
    (vol.mount_point / "kept.txt").write_text("in the image\n")
    repo = Repository.open(str(small_repo), create=False)
    backup_image(str(vol.mount_point), repo, BackupOptions(imagetype=ImageType.STATIC))
    fill_random(vol.mount_point / "new", 48 * MIB)  # twice what the repository can hold

    res = bv(small_repo, "backup", "image", str(vol.mount_point), "--mode", "incremental")

    assert res.rc == 12, res.out + res.err
    assert "internal error" not in res.err
    message = res.json()["error"]
    assert "its file system is full" in message and str(small_repo) in message
    assert "nothing of this backup was recorded" in message
    # Not an increment with skipped files: no increment at all, so a later
    # --deletefiles replay can never take the unstored files for deleted ones.
    assert Repository.open(str(small_repo), create=False).increment_ids() == []
    assert len(res.err.strip().splitlines()) == 1, res.err


def test_an_image_backup_into_a_full_repository_fails_with_one_line_and_no_image(
    loopkit, small_repo
):
    vol = loopkit.volume("96M", None)
    with open(vol.device, "r+b") as dev:  # a raw volume of incompressible data
        for _ in range(64):
            dev.write(os.urandom(MIB))

    res = bv(small_repo, "backup", "image", vol.device, "--imagetype", "dynamic")

    assert res.rc == 12, res.out + res.err
    assert "internal error" not in res.err
    assert "its file system is full" in res.json()["error"]
    assert Repository.open(str(small_repo), create=False).image_ids() == []
