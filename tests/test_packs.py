"""Small objects packed: thousands of small files become a few pack objects, on every backend.

Real loop volumes, real repositories: a directory, a real ``blockvault serve`` over
TLS, a real Ceph RGW bucket (``repo_location``). Objects are counted, damaged and
read back as they lie in the store (``s3kit``), not through blockvault.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from cliutil import blockvault
from imagekit import device_digest
from s3kit import damage_chunk, datastore_of, object_keys

from core.engine.backup import BackupOptions, backup_image
from core.increments.backup import backup_increment
from core.repo.format import DamagedObject, chunk_digest, encode_chunk
from core.repo.packs import MAX_PACK, PACK_TARGET, encode_pack, verify_pack
from core.repo.repository import Repository
from core.snapshots import ImageType

pytestmark = pytest.mark.loop

MIB = 1 << 20
FILES = 1500


def bv(location: str, *args: str):
    return blockvault(*args, env={"BLOCKVAULT_REPO": location}, timeout=300)


def objects(location: str) -> set[str]:
    return {k for kind in ("chunks", "packs") for k in object_keys(location, kind)}


def small_files(root: Path, count: int, seed: int) -> dict[str, bytes]:
    """Write ``count`` files of 1 to 8 KiB of random bytes; return their content by path."""
    rng = random.Random(seed)
    files = {}
    for i in range(count):
        rel = f"d{i % 30:02d}/f{i:05d}.txt"
        data = rng.randbytes(rng.randint(1024, 8192))
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    os.sync()
    return files


def read_file(repo: Repository, increment_id: str, rel: str) -> bytes:
    entry = repo.increment(increment_id).by_path()[rel]
    return b"".join(repo.get_chunk(d) for d in entry.chunks)


def test_an_increment_of_thousands_of_small_files_is_a_few_packs(loopkit, repo_location):
    vol = loopkit.volume("128M", "ext4")
    mp = vol.mount_point
    assert mp is not None
    backup_image(str(mp), Repository.open(repo_location), BackupOptions(imagetype=ImageType.STATIC))
    before = objects(repo_location)
    files = small_files(mp, FILES, seed=1)

    report = backup_increment(str(mp), Repository.open(repo_location))

    new = objects(repo_location) - before
    packs = [k for k in new if k.startswith("packs/")]
    total = sum(len(v) for v in files.values())
    assert report.chunks_new == FILES
    assert 1 <= len(packs) <= total // PACK_TARGET + 2, sorted(new)
    assert len(new) == len(packs)  # not one small file became an object of its own
    fresh = Repository.open(repo_location)  # reads what is stored, not what one process kept
    for rel in random.Random(2).sample(sorted(files), 200):
        assert read_file(fresh, report.increment_id, rel) == files[rel], rel
    check = bv(repo_location, "repo", "check", "--json")
    if "://" not in repo_location or repo_location.startswith("s3://"):
        assert check.rc == 0, check.out + check.err
        assert check.json()["packs"] == len(packs) + len(
            [k for k in before if k.startswith("packs/")]
        )


def test_a_flipped_byte_in_a_packed_piece_is_found_and_refused(loopkit, repo_location):
    vol = loopkit.volume("64M", "ext4")
    mp = vol.mount_point
    assert mp is not None
    backup_image(str(mp), Repository.open(repo_location), BackupOptions(imagetype=ImageType.STATIC))
    files = small_files(mp, 200, seed=3)
    report = backup_increment(str(mp), Repository.open(repo_location))
    victim = "d07/f00007.txt"
    digest = Repository.open(repo_location).increment(report.increment_id).by_path()[victim]
    key = damage_chunk(repo_location, digest.chunks[0].hex(), at=len(files[victim]) // 2)
    assert key.startswith("packs/")

    check = bv(datastore_of(repo_location), "repo", "check", "--json")
    assert check.rc == 12, check.out
    found = check.json()["findings"]
    assert any(f["code"] == "CHUNK_DAMAGED" and digest.chunks[0].hex() in f["message"]
               for f in found), found
    assert any(f["code"] == "INCREMENT_DAMAGED" and f["details"]["path"] == victim
               for f in found), found
    fresh = Repository.open(repo_location)
    with pytest.raises(DamagedObject):
        read_file(fresh, report.increment_id, victim)
    assert read_file(fresh, report.increment_id, "d08/f00008.txt") == files["d08/f00008.txt"]


def pieces_volume(loopkit, chunks: list[int]):
    """A raw loop device of 4 MiB chunks, each 16 KiB of random bytes (from ``seed``) then
    zeros: every chunk compresses to a small piece, so the image is packed."""
    vol = loopkit.volume(f"{4 * len(chunks)}M", None)
    with open(vol.device, "r+b") as f:
        for seed in chunks:
            f.write(random.Random(seed).randbytes(16 << 10) + bytes((4 << 20) - (16 << 10)))
    return vol


def test_prune_deletes_dead_packs_and_rewrites_mostly_dead_ones(loopkit, tmp_path):
    location = str(tmp_path / "repo")
    first = pieces_volume(loopkit, list(range(100, 116)))
    second = pieces_volume(loopkit, [100, 101, *range(200, 214)])  # shares two chunks
    assert bv(location, "backup", "image", first.device, "--no-agent").rc == 0
    assert bv(location, "backup", "image", second.device, "--no-agent").rc == 0
    images = bv(location, "query", "image", "--json").json()["images"]
    assert len(images) == 2 and len(object_keys(location, "packs")) == 2
    assert object_keys(location, "chunks") == []

    gone = images[0]["id"] if images[0]["device"] == first.device else images[1]["id"]
    assert bv(location, "delete", "backup", "--objtype", "image", "--image", gone).rc == 0
    pruned = bv(location, "repo", "prune", "--json").json()

    # The first image's pack held 16 pieces of which 2 are still needed: rewritten.
    assert (pruned["packs_repacked"], pruned["packs_written"]) == (1, 1), pruned
    assert pruned["packs_deleted"] == 0 and pruned["bytes_freed"] > 0
    assert len(object_keys(location, "packs")) == 2
    assert bv(location, "repo", "check", "--json").rc == 0
    target = loopkit.attach(loopkit.image(f"{16 * 4}M"))
    res = bv(location, "restore", "image", second.device, target, "--confirm", target,
             "--no-agent")
    assert res.rc == 0, res.out + res.err
    assert device_digest(target) == device_digest(second.device)

    remaining = bv(location, "query", "image", "--json").json()["images"]
    assert bv(location, "delete", "backup", "--objtype", "image", "--image",
              remaining[0]["id"]).rc == 0
    pruned = bv(location, "repo", "prune", "--json").json()
    assert pruned["packs_deleted"] == 2 and object_keys(location, "packs") == []


def test_a_prune_run_again_after_it_was_cut_off_between_writes_and_deletes_keeps_every_piece(
    loopkit, tmp_path
):
    """The state a prune leaves when it stops after storing the rewritten pack and before
    deleting the old one (here: the old pack put back as it was): the next prune keeps
    every piece a manifest needs, whichever of the two packs sorts first."""
    location = str(tmp_path / "repo")
    first = pieces_volume(loopkit, list(range(300, 316)))
    second = pieces_volume(loopkit, [300, 301, *range(400, 414)])
    assert bv(location, "backup", "image", first.device, "--no-agent").rc == 0
    assert bv(location, "backup", "image", second.device, "--no-agent").rc == 0
    saved = {k: (tmp_path / "repo" / "packs" / k[6:8] / k[6:]).read_bytes()
             for k in object_keys(location, "packs")}
    images = bv(location, "query", "image", "--json").json()["images"]
    gone = next(i["id"] for i in images if i["device"] == first.device)
    assert bv(location, "delete", "backup", "--objtype", "image", "--image", gone).rc == 0
    assert bv(location, "repo", "prune", "--json").json()["packs_repacked"] == 1
    for key, data in saved.items():  # the old packs back, beside the rewritten one
        path = tmp_path / "repo" / "packs" / key[6:8] / key[6:]
        if not path.exists():
            path.write_bytes(data)

    pruned = bv(location, "repo", "prune", "--json")
    assert pruned.rc == 0, pruned.out
    check = bv(location, "repo", "check", "--json")
    assert check.rc == 0, check.out
    target = loopkit.attach(loopkit.image(f"{16 * 4}M"))
    res = bv(location, "restore", "image", second.device, target, "--confirm", target,
             "--no-agent")
    assert res.rc == 0, res.out + res.err
    assert device_digest(target) == device_digest(second.device)


def test_a_pack_over_its_bounds_is_refused_unread():
    """What a hostile node could upload: a piece larger than any packed chunk, a pack
    larger than any pack. Neither verifies (the server answers 422)."""
    big = os.urandom(1 << 20)
    key, parts = encode_pack([(chunk_digest(big), encode_chunk(big))])
    with pytest.raises(DamagedObject, match="a piece of"):
        verify_pack(key, b"".join(parts), sealed=False)
    small = [os.urandom(200 << 10) for _ in range(MAX_PACK // (200 << 10) + 2)]
    key, parts = encode_pack([(chunk_digest(s), encode_chunk(s)) for s in small])
    with pytest.raises(DamagedObject, match="more than any pack"):
        verify_pack(key, b"".join(parts), sealed=False)
