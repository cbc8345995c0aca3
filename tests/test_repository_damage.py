"""One damaged object never takes the repository down: it is reported, the rest works.

The repositories and volumes are made by the test; the damage (a flipped byte, a
truncated or lost object, stray and misplaced files) is done by hand, as a failing
disk, an interrupted copy or a confused admin would leave it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cliutil import blockvault
from imagekit import device_digest

from core.repo.format import ZERO_ID
from core.repo.repository import Repository

pytestmark = pytest.mark.loop

MIB = 1 << 20


def bv(repo: Path, *args: str):
    return blockvault(*args, "--repo", str(repo), "--json", timeout=120)


def backup(repo: Path, dev: str) -> str:
    res = bv(repo, "backup", "image", dev, "--imagetype", "dynamic", "--no-agent")
    assert res.rc in (0, 8), res.out + res.err
    return res.json()["image_id"]


def object_path(repo: Path, kind: str, name: str) -> Path:
    return repo / kind / name[:2] / name


def chunk_paths(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "chunks").rglob("*") if p.is_file())


def flip(path: Path, at: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped-early": lambda p: flip(p, 0.1),
    "flipped-late": lambda p: flip(p, 0.9),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "emptied": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(300)),
}


@pytest.fixture
def two_volumes(loopkit, tmp_path):
    """A repository holding an image of each of two raw volumes: (repo, [(dev, image id)])."""
    repo = tmp_path / "repo"
    out = []
    for seed in (1, 2):
        dev = loopkit.attach(loopkit.image("12M"))
        with open(dev, "r+b") as f:
            f.write(bytes([seed]) * MIB + os.urandom(6 * MIB))
        out.append((dev, backup(repo, dev)))
    return repo, out


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_image_is_reported_and_the_others_stay_usable(two_volumes, loopkit, damage):
    repo, [(bad_dev, bad_id), (good_dev, good_id)] = two_volumes
    DAMAGE[damage](object_path(repo, "images", bad_id))

    listed = bv(repo, "query", "image")
    assert listed.rc == 8, listed.out + listed.err
    doc = listed.json()
    assert [i["id"] for i in doc["images"]] == [good_id]
    [finding] = doc["findings"]
    assert finding["code"] == "MANIFEST_DAMAGED" and finding["details"] == {"image": bad_id}
    assert "internal error" not in listed.err

    # The intact image restores; the damaged one is refused by name, nothing written.
    dest = loopkit.attach(loopkit.image("12M"))
    ok = bv(repo, "restore", "image", good_dev, dest, "--confirm", dest, "--no-agent")
    assert ok.rc in (0, 8), ok.out + ok.err
    assert device_digest(dest) == device_digest(good_dev)
    other = loopkit.attach(loopkit.image("12M"))
    before = device_digest(other)
    refused = bv(
        repo, "restore", "image", bad_dev, other, "--image", bad_id, "--confirm", other,
        "--no-agent",
    )  # fmt: skip
    assert refused.rc == 12, refused.out + refused.err
    assert bad_id in refused.err and "is damaged" in refused.err
    assert "internal error" not in refused.err
    assert device_digest(other) == before

    # Prune keeps every chunk while the damaged manifest may name them, and says why.
    chunks = chunk_paths(repo)
    held = bv(repo, "repo", "prune")
    assert held.rc == 8, held.out + held.err
    assert [f["code"] for f in held.json()["findings"]] == ["PRUNE_HELD"]
    assert bad_id in held.json()["findings"][0]["message"]
    assert chunk_paths(repo) == chunks

    # The way out: delete the damaged image by its id, then prune frees its chunks.
    gone = bv(repo, "delete", "backup", "--objtype", "image", "--image", bad_id)
    assert gone.rc == 0, gone.out + gone.err
    assert gone.json() == {"deleted": [bad_id]}
    pruned = bv(repo, "repo", "prune")
    assert pruned.rc == 0, pruned.out + pruned.err
    assert pruned.json()["chunks_deleted"] > 0
    assert bv(repo, "repo", "check").rc == 0


def test_delete_by_id_of_another_volume_s_image_is_refused(two_volumes):
    repo, [(dev_a, _), (_, id_b)] = two_volumes
    res = bv(repo, "delete", "backup", dev_a, "--objtype", "image", "--image", id_b)
    assert res.rc == 12 and "is not one of" in res.err, res.out + res.err
    assert [i["id"] for i in bv(repo, "query", "image").json()["images"]].count(id_b) == 1


def test_a_damaged_increment_can_be_deleted_by_id_and_an_intact_one_cannot(loopkit, tmp_path):
    repo = tmp_path / "repo"
    vol = loopkit.volume("32M", "ext4")
    loopkit.fill(vol, files=5)
    backup(repo, vol.device)
    incs = []
    for _ in range(2):
        (vol.mount_point / "more").write_bytes(os.urandom(1000))
        res = bv(repo, "backup", "image", str(vol.mount_point), "--mode", "incremental",
                 "--no-agent")  # fmt: skip
        assert res.rc in (0, 8), res.out + res.err
        incs.append(res.json()["increment_id"])
    refused = bv(repo, "delete", "backup", "--objtype", "increment", "--increment", incs[0])
    assert refused.rc == 12 and "is intact" in refused.err, refused.out + refused.err

    flip(object_path(repo, "increments", incs[1]), 0.5)
    check = bv(repo, "repo", "check")
    assert check.rc == 12
    assert any(
        f["code"] == "MANIFEST_DAMAGED" and incs[1] in f["message"]
        for f in check.json()["findings"]
    )
    gone = bv(repo, "delete", "backup", "--objtype", "increment", "--increment", incs[1])
    assert gone.rc == 0, gone.out + gone.err
    assert bv(repo, "repo", "check").rc == 0


STRAYS = {
    "images/xy/name with spaces": b"x",
    "images/20/.hidden": b"x",
    "chunks/zz/zz-not-a-digest": b"x",
    "chunks/ab/README": b"x",
    "increments/no-fan-dir-file": b"x",
}


def test_stray_and_misplaced_objects_are_reported_and_never_touched(two_volumes):
    repo, [(_, image_a), (_, image_b)] = two_volumes
    for rel, data in STRAYS.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    # A manifest moved into another fan-out directory would never be found by its id.
    misplaced = repo / "images" / "zz" / image_a
    misplaced.parent.mkdir(exist_ok=True)
    object_path(repo, "images", image_a).rename(misplaced)
    # A chunk-named file in a chunk directory, but not of that directory.
    wrong_chunk = chunk_paths(repo)[0]
    moved_chunk = repo / "chunks" / "zz" / wrong_chunk.name
    moved_chunk.parent.mkdir(exist_ok=True)
    os.link(wrong_chunk, moved_chunk)

    check = bv(repo, "repo", "check")
    assert "internal error" not in check.err, check.err
    strays = {f["details"]["path"] for f in check.json()["findings"] if f["code"] == "STRAY_OBJECT"}
    for rel in STRAYS:
        if rel.count("/") == 2:
            assert str(repo / rel) in strays, rel
    assert str(repo / "increments" / "no-fan-dir-file") in strays
    assert str(misplaced) in strays and str(moved_chunk) in strays
    [where] = [
        f["message"] for f in check.json()["findings"] if f["details"]["path"] == str(misplaced)
    ]
    assert str(object_path(repo, "images", image_a)) in where  # says where it belongs

    listed = bv(repo, "query", "image")
    assert listed.rc == 0 and [i["id"] for i in listed.json()["images"]] == [image_b]
    pruned = bv(repo, "repo", "prune")
    assert pruned.rc == 0, pruned.out + pruned.err
    for rel, data in STRAYS.items():
        assert (repo / rel).read_bytes() == data  # prune never deletes what is no object
    assert misplaced.exists() and moved_chunk.exists()


LOSSES = {
    "deleted": lambda p: p.unlink(),
    "emptied": lambda p: p.write_bytes(b""),
    "headless": lambda p: p.write_bytes(p.read_bytes()[:3]),
    "a-directory": lambda p: (p.unlink(), p.mkdir()),
}


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("which", ["first", "last"])
def test_a_restore_missing_a_chunk_is_refused_before_the_first_write(
    two_volumes, loopkit, loss, which
):
    repo, [(dev, image_id), _] = two_volumes
    m = Repository.open(str(repo), create=False).image(image_id)
    table = [d.hex() for _, d in m.chunks() if d != ZERO_ID]
    victim = object_path(repo, "chunks", table[0 if which == "first" else -1])
    LOSSES[loss](victim)
    dest = loopkit.attach(loopkit.image("12M"))
    with open(dest, "r+b") as f:
        f.write(b"\x5a" * 12 * MIB)
    before = device_digest(dest)

    res = bv(repo, "restore", "image", dev, dest, "--image", image_id, "--confirm", dest,
             "--no-agent")  # fmt: skip

    assert res.rc == 12, res.out + res.err
    assert "nothing was written" in res.err and victim.name in res.err, res.err
    assert "image byte" in res.err and "internal error" not in res.err
    assert device_digest(dest) == before


def test_an_incremental_restore_missing_an_increment_chunk_writes_nothing(loopkit, tmp_path):
    """Which files the replay reads depends on the image; every chunk it lists must be there."""
    repo = tmp_path / "repo"
    vol = loopkit.volume("32M", "ext4")
    loopkit.fill(vol, files=3)
    backup(repo, vol.device)
    (vol.mount_point / "today.bin").write_bytes(os.urandom(300_000))
    inc = bv(repo, "backup", "image", str(vol.mount_point), "--mode", "incremental", "--no-agent")
    assert inc.rc in (0, 8), inc.out + inc.err
    manifest = Repository.open(str(repo), create=False).increment(inc.json()["increment_id"])
    [entry] = [e for e in manifest.entries if e.path == "today.bin"]
    object_path(repo, "chunks", entry.chunks[0].hex()).unlink()
    dest = loopkit.attach(loopkit.image("32M"))
    with open(dest, "r+b") as f:
        f.write(b"\x5a" * 32 * MIB)
    before = device_digest(dest)

    res = bv(repo, "restore", "image", vol.device, dest, "--incremental", "--confirm", dest,
             "--no-agent")  # fmt: skip

    assert res.rc == 12, res.out + res.err
    said = res.json()["error"] if res.out.strip() else res.err
    assert inc.json()["increment_id"] in said and "today.bin" in said, said
    assert "nothing was written" in said and "internal error" not in res.err
    assert device_digest(dest) == before
