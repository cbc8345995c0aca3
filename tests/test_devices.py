"""Device discovery on real loop devices: the tree, its facts, and the CLI that prints it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


def relations(tree, path: str) -> dict[str, str]:
    dev = tree.by_path(path)
    assert dev is not None
    return {o.path: o.relation.value for o in dev.overlaps}


def test_devices_over_the_same_bytes_know_how_they_overlap(loopkit):
    """Loop disks and slices over one file: by byte range, whatever path attached them."""
    image = loopkit.image("64M")
    alias = image.with_name(image.name + "-hardlink")
    os.link(image, alias)  # another path to the same inode
    disk = loopkit.attach(image)
    twin = loopkit.attach(alias)  # the whole file again
    first = loopkit.attach(image, offset=1 << 20, size_limit=8 << 20)  # [1, 9) MiB
    second = loopkit.attach(alias, offset=16 << 20, size_limit=8 << 20)  # [16, 24) MiB
    straddling = loopkit.attach(image, offset=4 << 20, size_limit=16 << 20)  # [4, 20) MiB
    # A loop device over the disk's device node: [32, 64) MiB of the same file.
    stacked = loopkit.attach(Path(disk), offset=32 << 20)
    elsewhere = loopkit.attach(loopkit.image("64M"))
    tree = scan()
    assert relations(tree, disk) == {
        twin: "same",
        first: "contains",
        second: "contains",
        straddling: "contains",
        stacked: "contains",
    }
    assert relations(tree, first) == {disk: "inside", twin: "inside", straddling: "partial"}
    assert relations(tree, second) == {disk: "inside", twin: "inside", straddling: "partial"}
    assert relations(tree, straddling) == {
        disk: "inside",
        twin: "inside",
        first: "partial",
        second: "partial",
    }
    assert relations(tree, stacked) == {disk: "inside", twin: "inside"}
    assert relations(tree, elsewhere) == {}
    node = tree.by_path(first)
    assert node is not None
    assert {o["path"]: o["relation"] for o in node.to_dict()["overlaps"]} == {
        disk: "inside",
        twin: "inside",
        straddling: "partial",
    }


def test_loop_device_backed_by_a_file_on_a_mounted_volume_is_its_loop_user(loopkit):
    host = loopkit.volume("64M", "ext4")
    assert host.mount_point is not None
    other = loopkit.volume("64M", "ext4")
    backing = loopkit.image("16M", "unused")  # not on the host: no user of it
    inner = host.mount_point / "inner.img"
    with open(inner, "wb") as f:
        f.truncate(16 << 20)
    writer = loopkit.attach(inner)
    reader = loopkit.attach(inner, read_only=True)
    loopkit.attach(backing)
    tree = scan()
    dev = tree.by_path(host.device)
    assert dev is not None
    assert [(u.path, u.backing_file, u.read_only) for u in dev.loop_users] == [
        (writer, str(inner), False),
        (reader, str(inner), True),
    ]
    assert dev.to_dict()["loop_users"][0] == {
        "path": writer,
        "backing_file": str(inner),
        "read_only": False,
    }
    other_dev = tree.by_path(other.device)
    assert other_dev is not None and other_dev.loop_users == ()
