"""A repository holding what is not a regular file: never followed, never hung on.

The repository and its volume are made by the test; the FIFO and the symlink are
put into it by hand, where an attacker or a confused admin would leave them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cliutil import blockvault

pytestmark = pytest.mark.loop

MIB = 1 << 20


def bv(repo: Path, *args: str):
    # A FIFO read would block forever: a hang fails the test at the timeout.
    return blockvault(*args, "--repo", str(repo), "--json", timeout=60)


@pytest.fixture
def backed_up(loopkit, tmp_path) -> tuple[Path, str]:
    """A repository with one image of a 16 MiB raw volume, and that image's id."""
    repo = tmp_path / "repo"
    dev = loopkit.attach(loopkit.image("16M"))
    with open(dev, "r+b") as f:
        f.write(os.urandom(8 * MIB))
    res = bv(repo, "backup", "image", dev, "--imagetype", "dynamic", "--no-agent")
    assert res.rc in (0, 8), res.out + res.err
    return repo, res.json()["image_id"]


def a_chunk(repo: Path) -> Path:
    return next(p for p in sorted((repo / "chunks").rglob("*")) if p.is_file())


def test_a_fifo_in_place_of_a_chunk_is_damage_not_a_hang(backed_up):
    repo, _ = backed_up
    chunk = a_chunk(repo)
    chunk.unlink()
    os.mkfifo(chunk)

    res = bv(repo, "repo", "check")

    assert res.rc == 12, res.out + res.err
    damaged = [f for f in res.json()["findings"] if f["code"] == "CHUNK_DAMAGED"]
    assert len(damaged) == 1 and "a FIFO, not a regular file" in damaged[0]["message"]


def test_a_chunk_that_is_a_symlink_out_of_the_repository_is_not_followed(backed_up, tmp_path):
    repo, _ = backed_up
    chunk = a_chunk(repo)
    outside = tmp_path / "outside"
    outside.write_bytes(chunk.read_bytes())  # the right content, so only the link is wrong
    chunk.unlink()
    chunk.symlink_to(outside)
    before = outside.stat()

    res = bv(repo, "repo", "check")

    assert res.rc == 12, res.out + res.err
    assert any(
        f["code"] == "CHUNK_DAMAGED" and "a symbolic link" in f["message"]
        for f in res.json()["findings"]
    )
    assert outside.stat().st_mtime_ns == before.st_mtime_ns  # never written through


def test_a_fifo_in_place_of_an_image_manifest_is_reported_not_read(backed_up):
    repo, image_id = backed_up
    manifest = repo / "images" / image_id[:2] / image_id
    manifest.unlink()
    os.mkfifo(manifest)

    res = bv(repo, "query", "image")  # returns at once: the FIFO is never opened for reading

    assert res.rc == 8, res.out + res.err
    [finding] = res.json()["findings"]
    assert finding["code"] == "MANIFEST_DAMAGED" and finding["details"]["image"] == image_id
    assert "a FIFO, not a regular file" in finding["message"]


def test_prune_never_deletes_through_a_symlinked_fan_out_directory(backed_up, tmp_path):
    repo, _ = backed_up
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / ("ee" + "0" * 62)  # named like an unreferenced chunk
    victim.write_bytes(b"not the repository's")
    fan = repo / "chunks" / "ee"
    if fan.exists():
        for p in fan.iterdir():
            p.rename(outside / p.name)
        fan.rmdir()
    fan.symlink_to(outside)

    res = bv(repo, "repo", "prune")

    assert res.rc == 0, res.out + res.err
    assert victim.read_bytes() == b"not the repository's"


def test_a_backup_never_writes_through_a_symlinked_fan_out_directory(loopkit, backed_up, tmp_path):
    repo, image_id = backed_up
    outside = tmp_path / "outside"
    fan = repo / "images" / image_id[:2]  # where the next image's manifest goes too
    fan.rename(outside)
    fan.symlink_to(outside)
    before = sorted(p.name for p in outside.iterdir())
    dev = loopkit.attach(loopkit.image("8M"))

    res = bv(repo, "backup", "image", dev, "--imagetype", "dynamic", "--no-agent")

    assert res.rc == 12, res.out + res.err
    assert "is a symbolic link, not a directory" in res.json()["error"]
    assert sorted(p.name for p in outside.iterdir()) == before
