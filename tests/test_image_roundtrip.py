"""Image backup and restore on real loop devices: round trips, dedup, versions, damage.

Every destination is a loop device this test attached to a file it created. Tests
taking ``repo`` run twice: on a directory, and through a real ``blockvault serve``
(TLS on 127.0.0.1); those taking ``dir_repo`` look into the directory itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from children import holder
from cliutil import ROOT, blockvault
from imagekit import device_digest, fsck_clean, populate, tree_digest

pytestmark = pytest.mark.loop


@pytest.fixture
def repo(repo_location) -> str:
    return repo_location


@pytest.fixture
def dir_repo(tmp_path) -> str:
    return str(tmp_path / "repo")


def bv(repo: str, *args: str, timeout: float = 300):
    return blockvault(*args, env={"BLOCKVAULT_REPO": repo}, timeout=timeout)


def ext4_with_files(loopkit, size="128M"):
    vol = loopkit.volume(size, "ext4")
    populate(vol.mount_point)
    return vol, tree_digest(vol.mount_point)


def restore_and_compare(loopkit, repo, vol, expected, size="128M", *extra: str):
    dest = loopkit.attach(loopkit.image(size))
    res = bv(repo, "restore", "image", vol.device, dest, "--confirm", dest, "--json", *extra)
    assert res.rc in (0, 8), res.out + res.err
    clean, out = fsck_clean(dest)
    assert clean, out
    mp = loopkit.mount(dest, None, "ro")
    assert tree_digest(mp) == expected
    loopkit.umount(mp)
    return dest, res.json()


@pytest.mark.parametrize("imagetype", ["static", "dynamic"])
def test_ext4_round_trip_gives_identical_files(loopkit, repo, imagetype):
    vol, expected = ext4_with_files(loopkit)
    res = bv(repo, "backup", "image", str(vol.mount_point), "--imagetype", imagetype, "--json")
    assert res.rc in (0, 8), res.out + res.err
    report = res.json()
    assert report["imagetype"] == imagetype
    assert report["fuzzy"] is (imagetype == "dynamic")
    if imagetype == "static":
        # Only used blocks were read: far less than the volume.
        assert report["used_method"] == "ext-bitmap"
        assert report["bytes_read"] < report["bytes_volume"] * 0.6
        assert report["bytes_skipped"] > 0
    else:
        # Mounted and in use, its bitmaps may lag the journal: every block is read.
        assert report["used_method"] == "whole"
        assert "USED_BLOCKS_FALLBACK" in {f["code"] for f in report["findings"]}
    # The duplicated 12 MiB files (each spans a whole aligned chunk) were stored once.
    assert report["bytes_dedup"] > 0
    # Static mode left the volume writable.
    (vol.mount_point / "after.txt").write_text("still writable")
    _, restored = restore_and_compare(loopkit, repo, vol, expected)
    if imagetype == "dynamic":
        assert any(f["code"] == "IMAGE_FUZZY" for f in restored["image"]["findings"])
        assert any(f["code"].startswith("FSCK") for f in restored["image"]["findings"])


def test_snapshot_round_trip_of_a_loop_volume_on_xfs(loopkit, repo):
    host = loopkit.volume("512M", "xfs")
    backing = host.mount_point / "vol.img"
    with open(backing, "wb") as f:
        f.truncate(128 << 20)
    dev = loopkit.attach(backing)
    loopkit.mkfs(dev, "ext4")
    mp = loopkit.mount(dev)
    populate(mp)
    expected = tree_digest(mp)
    res = bv(repo, "backup", "image", dev, "--imagetype", "snapshot", "--json")
    assert res.rc in (0, 8), res.out + res.err
    report = res.json()
    assert report["provider"] == "reflink" and report["fuzzy"] is False
    # The volume stayed mounted read-write throughout.
    (mp / "during.txt").write_text("online")
    dest = loopkit.attach(loopkit.image("128M"))
    res = bv(repo, "restore", "image", dev, dest, "--confirm", dest)
    assert res.rc in (0, 8), res.out + res.err
    clean, out = fsck_clean(dest)
    assert clean, out
    rmp = loopkit.mount(dest, None, "ro")
    assert tree_digest(rmp) == expected
    loopkit.umount(rmp)
    assert not list(host.mount_point.glob("*snap*")), "the snapshot clone was left behind"


def test_raw_volume_restores_bit_identical(loopkit, repo):
    vol = loopkit.volume("40M", None)
    with open(vol.device, "r+b") as f:  # our own loop device: random head, zeros, a tail
        f.write(os.urandom(5 << 20))
        f.seek(30 << 20)
        f.write(os.urandom(3 << 20 | 4096))
    res = bv(repo, "backup", "image", vol.device, "--json")
    assert res.rc == 0, res.out + res.err
    report = res.json()
    assert report["used_method"] == "whole" and report["bytes_read"] == 40 << 20
    assert report["chunks_zero"] >= 5
    dest = loopkit.attach(loopkit.image("40M"))
    with open(dest, "r+b") as f:
        f.write(b"\xff" * (40 << 20))  # old content must not survive in zero chunks
    res = bv(repo, "restore", "image", vol.device, dest, "--confirm", dest, "--verifyimage")
    assert res.rc == 0, res.out + res.err
    assert device_digest(dest) == device_digest(vol.device)


def test_unchanged_volume_stores_almost_nothing_new(loopkit, repo):
    vol, _ = ext4_with_files(loopkit)
    first = bv(repo, "backup", "image", vol.device, "--imagetype", "static", "--json").json()
    second = bv(repo, "backup", "image", vol.device, "--imagetype", "static", "--json").json()
    assert first["bytes_stored_new"] > 10 << 20
    # Mounting and remounting touches a superblock chunk or two at most.
    assert second["bytes_stored_new"] <= 2 * (4 << 20) * 0.5
    assert second["chunks_dedup"] >= first["chunks_new"] - 2


def test_static_backup_refused_while_a_process_writes(loopkit, dir_repo):
    vol = loopkit.volume("32M", "ext4")
    target = vol.mount_point / "busy.log"
    with holder(f"f = open({str(target)!r}, 'w')") as p:
        res = bv(dir_repo, "backup", "image", vol.device, "--imagetype", "static")
    assert res.rc == 12
    assert f"pid {p.pid}" in res.err
    assert not os.path.exists(dir_repo)  # a refused first backup leaves no repository behind
    (vol.mount_point / "rw.txt").write_text("writable")  # still read-write


def test_versions_beyond_keep_become_inactive_and_prune_frees_chunks(loopkit, dir_repo):
    vol = loopkit.volume("32M", None)
    assert bv(dir_repo, "repo", "init", "--keep-versions", "2").rc == 0
    ids = []
    for _ in range(3):
        with open(vol.device, "r+b") as f:  # each version has its own first chunk
            f.write(os.urandom(4 << 20))
        ids.append(bv(dir_repo, "backup", "image", vol.device, "--json").json()["image_id"])
    active = bv(dir_repo, "query", "image", vol.device, "--json").json()["images"]
    assert [e["id"] for e in active] == [ids[2], ids[1]]
    everything = bv(dir_repo, "query", "image", vol.device, "--inactive", "--json").json()["images"]
    assert [(e["id"], e["active"]) for e in everything][-1] == (ids[0], False)
    assert bv(dir_repo, "delete", "backup", vol.device, "--objtype", "image", "--inactive").rc == 0
    pruned = bv(dir_repo, "repo", "prune", "--json").json()
    assert pruned["chunks_deleted"] == 1  # the first chunk only the first image had
    assert bv(dir_repo, "repo", "check").rc == 0
    # The remaining newest image still restores exactly.
    dest = loopkit.attach(loopkit.image("32M"))
    assert bv(dir_repo, "restore", "image", vol.device, dest, "--confirm", dest).rc == 0
    assert device_digest(dest) == device_digest(vol.device)


def test_damaged_chunk_is_named_by_check_and_stops_restore(loopkit, dir_repo):
    vol = loopkit.volume("16M", None)
    with open(vol.device, "r+b") as f:
        f.write(os.urandom(16 << 20))
    assert bv(dir_repo, "backup", "image", vol.device).rc == 0
    chunks = sorted(Path(dir_repo, "chunks").rglob("*"))
    victim = next(p for p in chunks if p.is_file())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    check = bv(dir_repo, "repo", "check", "--json")
    assert check.rc == 12
    assert any(victim.name in f["message"] for f in check.json()["findings"])
    dest = loopkit.attach(loopkit.image("16M"))
    res = bv(dir_repo, "restore", "image", vol.device, dest, "--confirm", dest)
    assert res.rc == 12
    assert victim.name in res.err and "damaged" in res.err and "image byte" in res.err
    assert device_digest(dest) != device_digest(vol.device)


def test_backup_killed_midway_leaves_no_image_and_rerun_stores_only_the_rest(loopkit, dir_repo):
    vol = loopkit.volume("512M", None)
    with open(vol.device, "r+b") as f:
        for _ in range(128):
            f.write(os.urandom(4 << 20))
    env = {**os.environ, "BLOCKVAULT_REPO": dir_repo}
    p = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "backup", "image", vol.device, "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    chunk_dir = Path(dir_repo, "chunks")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if chunk_dir.exists() and sum(1 for _ in chunk_dir.rglob("*")) > 20:
            break
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    stored_before = sum(
        1 for c in chunk_dir.rglob("*") if c.is_file() and not c.name.startswith(".")
    )
    assert 0 < stored_before < 128, "kill the backup while it runs"
    assert bv(dir_repo, "query", "image", "--json").json()["images"] == []
    assert bv(dir_repo, "repo", "check").rc == 0
    rerun = bv(dir_repo, "backup", "image", vol.device, "--json").json()
    assert rerun["chunks_new"] + rerun["chunks_dedup"] == 128
    assert rerun["chunks_dedup"] >= stored_before - 2  # a write cut by the kill is redone
    dest = loopkit.attach(loopkit.image("512M"))
    assert bv(dir_repo, "restore", "image", vol.device, dest, "--confirm", dest).rc == 0
    assert device_digest(dest) == device_digest(vol.device)


def test_imagetofile_writes_a_sparse_file_that_mounts(loopkit, repo, tmp_path):
    vol, expected = ext4_with_files(loopkit)
    assert bv(repo, "backup", "image", vol.device, "--imagetype", "static").rc in (0, 8)
    out = tmp_path / "restored.img"
    res = bv(repo, "restore", "image", vol.device, str(out), "--imagetofile", "--confirm", str(out))
    assert res.rc == 0, res.out + res.err
    assert out.stat().st_size == 128 << 20
    assert out.stat().st_blocks * 512 < 128 << 20  # zeros were not written
    dev = loopkit.attach(out, read_only=True)
    mp = loopkit.mount(dev, None, "ro")
    assert tree_digest(mp) == expected


@pytest.mark.loop
def test_a_backup_reports_its_rate_over_what_it_read_and_no_ratio_over_unread_space(
    loopkit, repo
):
    """A sparse ext4: new chunks span unread free space, so no compression ratio is claimed."""
    vol = loopkit.volume("256M", "ext4")
    (vol.mount_point / "data.bin").write_bytes(os.urandom(3 << 20))
    res = bv(repo, "backup", "image", str(vol.mount_point), "--json")
    assert res.rc in (0, 8), res.err
    doc = res.json()
    assert doc["bytes_skipped"] > 0 and doc["compression_ratio"] is None
    assert doc["throughput"] == pytest.approx(doc["bytes_read"] / doc["duration"], rel=0.05)
    text = bv(repo, "backup", "image", str(vol.mount_point)).out
    assert "read from device" in text and "×" not in text, text
