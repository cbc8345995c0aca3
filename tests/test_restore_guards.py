"""Restore guards on real situations: each refuses, and the destination's bytes stay unchanged."""

from __future__ import annotations

import os

import pytest
from cliutil import blockvault
from imagekit import device_digest
from labelkit import make_sun_label, sfdisk_image, write_image

from core.engine.restore import RestoreRefused, plan_restore, restore_image
from core.repo.repository import Repository

pytestmark = pytest.mark.loop


@pytest.fixture
def repo(tmp_path) -> str:
    return str(tmp_path / "repo")


def bv(repo: str, *args: str):
    return blockvault(*args, env={"BLOCKVAULT_REPO": repo})


@pytest.fixture
def imaged(loopkit, repo):
    """A 16 MiB raw volume of random bytes with one image in the repository."""
    vol = loopkit.volume("16M", None)
    with open(vol.device, "r+b") as f:
        f.write(os.urandom(16 << 20))
    assert bv(repo, "backup", "image", vol.device).rc == 0
    return vol


def codes(findings) -> set[str]:
    return {f["code"] for f in findings}


def refused(repo, source, dest, *extra):
    before = device_digest(dest)
    res = bv(repo, "restore", "image", source, dest, "--json", *extra)
    assert res.rc == 12, res.out + res.err
    assert device_digest(dest) == before, "a refused restore changed the destination"
    return res


def test_mounted_destination_is_a_blocker_that_confirm_cannot_override(loopkit, repo, imaged):
    dest = loopkit.volume("16M", "ext4", mount=False)
    # Mounted read-only: a read-write ext4 writes its own bytes (lazy init, journal).
    loopkit.mount(dest.device, None, "ro")
    res = refused(repo, imaged.device, dest.device, "--confirm", dest.device)
    assert "DEST_MOUNTED" in codes(res.json()["findings"])
    # The refusal names the blocker, not only that there is one.
    assert res.json()["error"].startswith("refused: DEST_MOUNTED: ")
    assert f"blockvault: refused: DEST_MOUNTED: {dest.device} is mounted" in res.err


def test_smaller_destination_is_a_blocker(loopkit, repo, imaged):
    dest = loopkit.attach(loopkit.image("8M"))
    res = refused(repo, imaged.device, dest, "--confirm", dest)
    assert "DEST_TOO_SMALL" in codes(res.json()["findings"])


def test_destination_held_open_is_a_blocker(loopkit, repo, imaged):
    dest = loopkit.attach(loopkit.image("16M"))
    with open(dest, "rb"):
        res = refused(repo, imaged.device, dest, "--confirm", dest)
    assert "DEST_OPEN" in codes(res.json()["findings"])


def test_destination_holding_the_repository_is_a_blocker(loopkit, imaged, repo):
    home = loopkit.volume("64M", "ext4")
    other_repo = str(home.mount_point / "repo")
    assert bv(other_repo, "backup", "image", imaged.device).rc == 0
    # Read-only, so that only a restore could change its bytes while the test looks.
    loopkit.umount(home.mount_point)
    loopkit.mount(home.device, home.mount_point, "ro")
    res = refused(other_repo, imaged.device, home.device, "--confirm", home.device)
    assert {"DEST_HOLDS_REPOSITORY", "DEST_MOUNTED"} <= codes(res.json()["findings"])


def test_root_file_system_device_is_a_blocker_in_the_plan():
    """Planned only: the plan must refuse before any write path exists for /dev/vda."""
    repo = Repository.init("/tmp/blockvault-tests-plan-repo-" + str(os.getpid()))
    try:
        from core.devices import scan

        tree = scan()
        root = next(d for d in tree if "/" in d.mount_points)
        fake = _manifest_of_size(1 << 20)
        plan = plan_restore(fake, root.path, repo, tree=tree)
        assert plan.blocked
        assert {"DEST_HOLDS_ROOT", "DEST_MOUNTED"} <= {f.code for f in plan.findings}
        with pytest.raises(RestoreRefused):
            restore_image(fake, root.path, repo, confirm=root.path)
    finally:
        import shutil

        shutil.rmtree(repo.location)


def _manifest_of_size(size: int):
    from core.repo.format import ZERO_ID, ImageManifest, VolumeRecord

    return ImageManifest(
        id="plan-only",
        volume=VolumeRecord(key="/x", device="/dev/none"),
        imagetype="static",
        fuzzy=False,
        started="2026-11-25T00:00:00+00:00",
        finished="2026-11-25T00:00:01+00:00",
        chunk_size=4 << 20,
        size=size,
        table=ZERO_ID,
    )


def test_missing_confirmation_is_refused_without_a_terminal(loopkit, repo, imaged):
    dest = loopkit.attach(loopkit.image("16M"))
    res = refused(repo, imaged.device, dest)
    assert f"--confirm {dest}" in res.err


def test_wrong_confirmation_is_refused(loopkit, repo, imaged):
    dest = loopkit.attach(loopkit.image("16M"))
    other = loopkit.attach(loopkit.image("16M"))
    res = refused(repo, imaged.device, dest, "--confirm", other)
    assert "does not name" in res.err


def test_noprompt_is_refused_with_a_pointer_to_confirm(loopkit, repo, imaged):
    dest = loopkit.attach(loopkit.image("16M"))
    res = refused(repo, imaged.device, dest, "-noprompt")
    assert "--confirm" in res.err


def test_fuzzy_image_warns(loopkit, repo):
    vol = loopkit.volume("32M", "ext4")
    assert bv(repo, "backup", "image", vol.device, "--imagetype", "dynamic").rc == 8
    dest = loopkit.attach(loopkit.image("32M"))
    res = refused(repo, vol.device, dest)
    assert "IMAGE_FUZZY" in codes(res.json()["findings"])


HEADS, SPT, CYLS = 16, 64, 64
CYL = HEADS * SPT * 512


def test_cylinder0_image_warns_and_preserve_label_keeps_the_destination_vtoc(loopkit, repo):
    """A Sun slice at cylinder 0 is imaged; restored onto another disk's cylinder-0 slice."""

    def sun_disk(name: str, volname: bytes) -> str:
        slices = [(2, 0, 0, 8 * HEADS * SPT), (0, 0, 0, 0), (5, 1, 0, CYLS * HEADS * SPT)]
        label = bytearray(make_sun_label(HEADS, SPT, CYLS, slices))
        return str(write_image(loopkit.workdir / name, CYLS * CYL, {0: bytes(label), CYL: volname}))

    src_img = sun_disk("src.img", b"source-data" * 100)
    dst_img = sun_disk("dst.img", b"dest-data")
    loopkit.attach(src_img)
    src_slice = loopkit.attach(src_img, offset=0, size_limit=8 * CYL)
    loopkit.attach(dst_img)
    dst_slice = loopkit.attach(dst_img, offset=0, size_limit=8 * CYL)
    res = bv(repo, "backup", "image", src_slice, "--json")
    assert res.rc == 8, res.out + res.err  # the cylinder-0 warning is in the report
    assert "LABEL_CYLINDER0" in codes(res.json()["findings"])

    warned = refused(repo, src_slice, dst_slice)
    assert "RESTORE_OVERWRITES_LABEL" in codes(warned.json()["findings"])

    with open(dst_slice, "rb") as f:
        dst_label = f.read(512)
    res = bv(
        repo,
        "restore",
        "image",
        src_slice,
        dst_slice,
        "--confirm",
        dst_slice,
        "--preserve-label",
        "--verifyimage",
        "--json",
    )
    assert res.rc in (0, 8), res.out + res.err
    # A finished restore's JSON carries the image restore's findings under "image".
    assert "LABEL_PRESERVED" in codes(res.json()["image"]["findings"])
    with open(dst_slice, "rb") as f:
        assert f.read(512) == dst_label  # the destination's VTOC survived
        f.seek(CYL)
        assert f.read(1100) == b"source-data" * 100  # the data came from the image


def test_gpt_disk_image_warns_that_the_label_is_overwritten(loopkit, repo):
    img = sfdisk_image(loopkit.workdir / "g.img", "label: gpt\nsize=8M, type=L\n", size=16 << 20)
    src = loopkit.attach(img)
    assert bv(repo, "backup", "image", src).rc == 8  # VOLUME_HOLDS_LABEL
    dest = loopkit.attach(loopkit.image("16M"))
    res = refused(repo, src, dest)
    assert "RESTORE_OVERWRITES_LABEL" in codes(res.json()["findings"])


def test_second_loop_of_a_mounted_file_is_refused_as_mounted(loopkit, repo, imaged):
    """Two loop devices of one file share storage: writing one writes under the other."""
    image = loopkit.image("16M")
    first = loopkit.attach(image)
    loopkit.mkfs(first, "ext4")
    second = loopkit.attach(image)
    loopkit.mount(first, None, "ro")
    res = refused(repo, imaged.device, second, "--confirm", second)
    assert {"DEST_SHARED_STORAGE", "DEST_MOUNTED"} <= codes(res.json()["findings"])


def test_imagetofile_onto_a_loop_devices_backing_file_is_refused(loopkit, repo, imaged):
    image = loopkit.image("16M")
    loopkit.attach(image)
    before = device_digest(str(image))
    res = bv(
        repo,
        "restore",
        "image",
        imaged.device,
        str(image),
        "--imagetofile",
        "--confirm",
        str(image),
        "--json",
    )
    assert res.rc == 12
    assert "DEST_BACKS_DEVICE" in codes(res.json()["findings"])
    assert device_digest(str(image)) == before


def test_imagetofile_into_the_repository_is_refused(repo, imaged):
    target = os.path.join(repo, "restored.img")
    res = bv(
        repo,
        "restore",
        "image",
        imaged.device,
        target,
        "--imagetofile",
        "--confirm",
        target,
        "--json",
    )
    assert res.rc == 12
    assert "DEST_IN_REPOSITORY" in codes(res.json()["findings"])
    assert not os.path.exists(target)


def test_destination_that_changed_since_confirmation_is_refused(loopkit, repo, imaged):
    """What the user confirmed (device, size, backing file) must still hold at write time."""
    dest = loopkit.attach(loopkit.image("16M"))
    r = Repository.open(repo, create=False)
    manifest = r.images()[0]
    plan = plan_restore(manifest, dest, r)
    stale = (*plan.identity[:3], plan.identity[3] + 512, *plan.identity[4:])
    before = device_digest(dest)
    with pytest.raises(RestoreRefused, match="changed since"):
        restore_image(manifest, dest, r, confirm=dest, expected=stale)
    assert device_digest(dest) == before
