"""Device discovery on real loop devices: the tree, its facts, and the CLI that prints it."""

from __future__ import annotations

import os
import subprocess

import pytest
from cliutil import blockvault

from core.devices import DeviceKind, scan
from core.targets import resolve

pytestmark = pytest.mark.loop


def blkid(dev: str, tag: str) -> str:
    return subprocess.run(
        ["blkid", "-p", "-s", tag, "-o", "value", dev], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_mounted_ext4_volume_has_size_fs_uuid_mount_point_and_backing_file(loopkit):
    vol = loopkit.volume("64M", "ext4", label="bvdata")
    dev = scan().by_path(vol.device)
    assert dev is not None
    assert dev.kind is DeviceKind.LOOP
    assert dev.size == 64 << 20
    assert dev.sector_size == 512
    assert dev.fstype == "ext4"
    assert dev.fs_label == "bvdata"
    assert dev.uuid == blkid(vol.device, "UUID")
    assert dev.mount_points == (str(vol.mount_point),)
    assert dev.loop is not None
    assert dev.loop.backing_file == str(vol.image)
    assert (dev.loop.offset, dev.loop.size_limit) == (0, 0)
    assert not dev.is_raw and not dev.read_only


def test_volume_without_file_system_is_raw(loopkit):
    vol = loopkit.volume("16M", None)
    dev = scan().by_path(vol.device)
    assert dev is not None
    assert dev.is_raw
    assert dev.fstype is None
    assert not dev.mounted


@pytest.mark.parametrize("fstype", ["ext2", "xfs", "vfat"])
def test_other_file_systems_are_recognised(loopkit, fstype):
    vol = loopkit.volume("320M" if fstype == "xfs" else "32M", fstype, mount=False, label="BVX")
    dev = scan().by_path(vol.device)
    assert dev is not None
    assert dev.fstype == fstype
    assert dev.uuid == blkid(vol.device, "UUID")
    assert dev.fs_label == "BVX"


def test_read_only_loop_device_is_flagged_read_only(loopkit):
    image = loopkit.image("8M")
    dev_path = loopkit.attach(image, read_only=True)
    dev = scan().by_path(dev_path)
    assert dev is not None and dev.read_only


def test_loop_slice_is_a_child_of_the_loop_that_maps_its_file_whole(loopkit):
    image = loopkit.image("32M")
    disk = loopkit.attach(image)
    part = loopkit.attach(image, offset=1 << 20, size_limit=8 << 20)
    tree = scan()
    disk_dev, part_dev = tree.by_path(disk), tree.by_path(part)
    assert disk_dev is not None and part_dev is not None
    assert part_dev.parent == disk_dev.name
    assert part_dev.name in disk_dev.children
    assert part_dev.extent is not None
    assert (part_dev.extent.container, part_dev.extent.start, part_dev.extent.size) == (
        disk,
        1 << 20,
        8 << 20,
    )
    assert part_dev.name not in tree.roots
    depth = {d.name: depth for depth, d in tree.walk()}
    assert depth[part_dev.name] == depth[disk_dev.name] + 1


def test_loop_slice_of_an_unattached_file_points_at_the_file(loopkit):
    image = loopkit.image("32M")
    part = loopkit.attach(image, offset=2 << 20, size_limit=4 << 20)
    dev = scan().by_path(part)
    assert dev is not None and dev.extent is not None
    assert dev.extent.container == str(image)
    assert dev.extent.start == 2 << 20


def test_target_resolves_symlinks_and_mount_points(loopkit, tmp_path):
    vol = loopkit.volume("32M", "ext4")
    link = tmp_path / "by-uuid-link"
    link.symlink_to(vol.device)
    tree = scan()
    assert resolve(str(link), tree).device.path == vol.device
    by_mount = resolve(str(vol.mount_point), tree)
    assert by_mount.device.path == vol.device
    assert by_mount.mount is not None and by_mount.mount.mount_point == str(vol.mount_point)


def test_devices_json_is_one_document_with_our_volume(loopkit):
    vol = loopkit.volume("32M", "ext4", label="jsonvol")
    res = blockvault("devices", "--json")
    assert res.rc == 0, res.err
    doc = res.json()

    def find(nodes):
        for n in nodes:
            if n["path"] == vol.device:
                return n
            hit = find(n["children"])
            if hit:
                return hit
        return None

    node = find(doc["devices"])
    assert node is not None
    assert node["fstype"] == "ext4" and node["fs_label"] == "jsonvol"
    assert node["mounts"][0]["mount_point"] == str(vol.mount_point)
    assert node["loop"]["backing_file"] == str(vol.image)


def test_devices_tree_shows_our_volume_with_its_badges(loopkit):
    vol = loopkit.volume("32M", None)
    res = blockvault("devices")
    assert res.rc == 0, res.err
    line = next(line for line in res.out.splitlines() if vol.device in line)
    assert "raw" in line and "32.0 MiB" in line and str(vol.image) in line


def test_scan_reads_only_a_few_kib_per_device(loopkit):
    """The scan must stay cheap: it reads signatures and labels, never whole devices."""
    vol = loopkit.volume("64M", "ext4")
    name = os.path.basename(vol.device)
    before = _sectors_read(name)
    scan()
    assert (_sectors_read(name) - before) * 512 < 1 << 20


def _sectors_read(name: str) -> int:
    with open(f"/sys/block/{name}/stat") as f:
        return int(f.read().split()[2])
