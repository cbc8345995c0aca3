"""The restore guards' judgement on crafted facts: findings, their words, and nothing read.

The facts are built here as a machine would report them; the loop-device tests in
``test_restore_guards.py`` check that the machine is read into such facts.
"""

from __future__ import annotations

import builtins
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from core.devices import BlockDevice, DeviceKind, DeviceTree, Extent, LoopInfo
from core.engine.guards import (
    FileRestoreFacts,
    RestoreFacts,
    Unresolved,
    judge_file_restore,
    judge_restore,
)
from core.findings import Severity
from core.labels import ByteRange, DiskLabel, LabelKind, LabelPartition
from core.mounts import Mount, ProcessUse
from core.repo.format import ID_BYTES, ZERO_ID, ImageManifest, VolumeRecord
from core.signatures import FsType, Signature

MiB = 1 << 20
REPO = "/var/lib/blockvault/repo"
GPT_FRONT = (
    ByteRange(0, 512, "protective MBR"),
    ByteRange(512, 1024, "primary GPT header"),
    ByteRange(1024, 17408, "primary GPT entries"),
)


def gpt(size: int, *partitions: LabelPartition) -> DiskLabel:
    """A GPT of a ``size``-byte disk, its backup at the end."""
    tail = (
        ByteRange(size - 16896, size - 512, "backup GPT entries"),
        ByteRange(size - 512, size, "backup GPT header"),
    )
    return DiskLabel(
        LabelKind.GPT, 512, partitions, GPT_FRONT + tail, backup_ranges=tail, disk_size=size
    )


def device(name: str, minor: int, size: int, **kw: Any) -> BlockDevice:
    kind = kw.pop("kind", DeviceKind.LOOP)
    return BlockDevice(name, f"/dev/{name}", kind, 7, minor, size, 512, False, **kw)


def mounted_at(mount_point: str, minor: int) -> tuple[Mount, ...]:
    """The mounts of loop device ``minor`` when it is mounted at ``mount_point``."""
    return (Mount(1, 0, 7, minor, "/", mount_point, ("rw",), "ext4", f"/dev/loop{minor}", ()),)


def tree(*devices: BlockDevice) -> DeviceTree:
    return DeviceTree({d.name: d for d in devices}, tuple(d.name for d in devices))


def image(size: int, *, chunks: int = 1, **kw: Any) -> ImageManifest:
    """An image of ``size`` bytes whose first ``chunks`` chunks hold data."""
    count = -(-size // (4 * MiB))
    table = b"\x01" * ID_BYTES * min(chunks, count) + ZERO_ID * max(0, count - chunks)
    volume = VolumeRecord(**({"key": "/src", "device": "/dev/src"} | kw.pop("volume", {})))
    return ImageManifest(
        id="20250310T210004Z-9b04e7",
        volume=volume,
        imagetype=kw.pop("imagetype", "snapshot"),
        fuzzy=kw.pop("fuzzy", False),
        started="2025-03-10T21:00:04+00:00",
        finished="2025-03-10T21:03:37+00:00",
        chunk_size=4 * MiB,
        size=size,
        table=table,
        **kw,
    )


def facts(dest: BlockDevice, machine: DeviceTree, **kw: Any) -> RestoreFacts:
    return RestoreFacts(dest.path, machine, dest, REPO, **kw)


def by_code(plan) -> dict[str, Any]:
    return {f.code: f for f in plan.findings}


# --- a block device -----------------------------------------------------------------------


def test_a_mounted_partition_blocks_a_restore_onto_its_disk():
    part = device("loop1", 1, 8 * MiB, parent="loop0", mounts=mounted_at("/srv", 1))
    disk = device("loop0", 0, 16 * MiB, children=("loop1",))
    plan = judge_restore(image(16 * MiB), facts(disk, tree(disk, part)))
    found = by_code(plan)["DEST_MOUNTED"]
    assert found.severity is Severity.BLOCKER
    assert found.message == "/dev/loop0 is mounted at /srv; unmount it first"
    assert found.details == {"mount_points": ["/srv"]}
    assert plan.blocked and plan.device == disk and plan.confirm_name == "/dev/loop0"


def test_a_destination_smaller_than_the_image_is_a_blocker_naming_both_sizes():
    dest = device("loop0", 0, 8 * MiB)
    plan = judge_restore(image(16 * MiB), facts(dest, tree(dest)))
    assert [f.code for f in plan.findings] == ["DEST_TOO_SMALL"]
    found = plan.findings[0]
    assert found.severity is Severity.BLOCKER
    assert found.message == (
        "/dev/loop0 holds 8.0 MiB (8388608 bytes) but the image needs 16.0 MiB "
        "(16777216 bytes); choose a larger destination"
    )
    assert found.details == {"dest_size": 8 * MiB, "image_size": 16 * MiB}


def test_a_larger_destination_is_told_in_human_units_and_not_blocked():
    dest = device("loop0", 0, 24 * MiB)
    plan = judge_restore(image(16 * MiB), facts(dest, tree(dest)))
    assert not plan.blocked
    assert [(f.code, f.message) for f in plan.findings] == [
        (
            "DEST_LARGER",
            "/dev/loop0 is 8.0 MiB larger than the image; the bytes beyond it are left as they are",
        )
    ]


def test_preserve_label_protects_the_slice_label_and_the_disk_label_inside_it():
    """A slice at sector 0 of a GPT disk: its own GPT, and the disk's structures it covers."""
    disk_size = 64 * MiB
    disk_label = gpt(disk_size, LabelPartition(1, 0, 32 * MiB, "data"))
    own = gpt(32 * MiB, LabelPartition(1, 0, 32 * MiB, "data"))
    disk = device("loop0", 0, disk_size, label=disk_label)
    part = device("loop1", 1, 32 * MiB, label=own, extent=Extent("/dev/loop0", 0, 32 * MiB))
    machine = tree(disk, part)
    given = facts(part, machine, own_label=own, container_label=disk_label)

    warned = judge_restore(image(32 * MiB), given)
    assert by_code(warned)["RESTORE_OVERWRITES_LABEL"].message == (
        "/dev/loop1 covers the label of /dev/loop0 (LABEL_SECTOR0): restoring overwrites "
        "that disk's label; add --preserve-label to leave /dev/loop1's label area alone"
    )
    assert warned.protected == ()

    kept = judge_restore(image(32 * MiB), given, preserve_label=True)
    end = 32 * MiB
    own_tail = ((end - 16896, end - 512), (end - 512, end))
    assert kept.protected == ((0, 512), (512, 1024), (1024, 17408), *own_tail)
    found = by_code(kept)["LABEL_PRESERVED"]
    assert found.severity is Severity.INFO
    assert found.details == {"ranges": [list(r) for r in kept.protected]}
    assert found.message.startswith(
        "--preserve-label: /dev/loop1's label area (bytes 0-511, bytes 512-1023, bytes 1024-17407,"
    )
    assert "RESTORE_OVERWRITES_LABEL" not in by_code(kept)


def test_preserve_label_without_a_readable_label_keeps_the_first_sector():
    """The image carries a label, the destination has none to read: TSM's first sector."""
    dest = device("loop0", 0, 16 * MiB)
    labelled = image(16 * MiB, label={"kind": "gpt"})
    plan = judge_restore(labelled, facts(dest, tree(dest)), preserve_label=True)
    assert plan.protected == ((0, 512),)
    assert by_code(plan)["LABEL_PRESERVED"].message == (
        "--preserve-label: /dev/loop0's label area (bytes 0-511) is left untouched"
    )


def test_a_disk_under_the_repository_is_a_blocker():
    part = device("loop1", 1, 8 * MiB, kind=DeviceKind.PARTITION, parent="loop0")
    disk = device("loop0", 0, 16 * MiB, children=("loop1",))
    given = facts(disk, tree(disk, part), repository_device="loop1")
    found = by_code(judge_restore(image(16 * MiB), given))["DEST_HOLDS_REPOSITORY"]
    assert found.severity is Severity.BLOCKER
    assert found.message == f"/dev/loop0 holds the repository {REPO}; restore to another device"


def test_a_member_disk_of_the_root_array_is_a_blocker():
    md = device("md0", 9, 16 * MiB, kind=DeviceKind.MD, slaves=("loop0", "loop1"))
    first = device("loop0", 0, 16 * MiB, holders=("md0",), children=("md0",))
    second = device("loop1", 1, 16 * MiB, holders=("md0",), children=("md0",))
    given = facts(second, tree(first, second, md), root_device="md0")
    found = by_code(judge_restore(image(16 * MiB), given))
    assert found["DEST_HOLDS_ROOT"].message == "/dev/loop1 holds the root file system"
    assert found["DEST_IN_USE"].message == "/dev/loop1 is in use by /dev/md0; stop it first"


def test_a_second_loop_device_of_a_mounted_file_is_refused_as_mounted():
    backing = LoopInfo("/srv/disk.img", 0, 0, False)
    first = device("loop0", 0, 16 * MiB, loop=backing, mounts=mounted_at("/mnt/a", 0))
    second = device("loop1", 1, 16 * MiB, loop=backing)
    plan = judge_restore(image(16 * MiB), facts(second, tree(first, second)))
    assert [f.code for f in plan.findings] == ["DEST_SHARED_STORAGE", "DEST_MOUNTED"]
    assert plan.findings[0].message == (
        "/dev/loop1 shares its storage with /dev/loop0; they are checked as part of it"
    )
    assert plan.findings[1].message == "/dev/loop1 is mounted at /mnt/a; unmount it first"


def test_processes_holding_the_device_open_and_swap_are_blockers():
    dest = device("loop0", 0, 16 * MiB)
    users = (ProcessUse(42, "dd", "device", "/dev/loop0"), ProcessUse(43, "cat", "device", "x"))
    given = facts(dest, tree(dest), processes=users, swaps=("/dev/loop0",))
    found = by_code(judge_restore(image(16 * MiB), given))
    assert found["DEST_OPEN"].message == (
        "pid 42 (dd) holds open /dev/loop0 and 1 more; close it first"
    )
    assert found["DEST_OPEN"].details == {
        "processes": [{"pid": 42, "name": "dd"}, {"pid": 43, "name": "cat"}]
    }
    assert found["DEST_SWAP"].message == "/dev/loop0 is active swap; run swapoff first"


def test_a_target_that_names_no_device_is_refused_in_the_resolvers_words():
    given = RestoreFacts(
        "/nowhere", tree(), Unresolved("TARGET_MISSING", "/nowhere: no such file"), REPO
    )
    plan = judge_restore(image(16 * MiB), given)
    assert [(f.code, f.severity, f.message) for f in plan.findings] == [
        ("TARGET_MISSING", Severity.BLOCKER, "/nowhere: no such file")
    ]
    assert plan.device is None and plan.dest == "/nowhere"


def test_a_mount_point_is_refused_as_not_a_block_device():
    dest = device("loop0", 0, 16 * MiB)
    given = RestoreFacts("/srv", tree(dest), dest, REPO, block_node=False)
    plan = judge_restore(image(16 * MiB), given)
    assert [f.code for f in plan.findings] == ["DEST_NOT_BLOCK_DEVICE"]
    assert plan.device is None


def test_findings_keep_their_order_data_source_and_fuzzy_last():
    fs = Signature(FsType.EXT4, "7c1e5a0b", "srv", 4096, "1.0")
    dest = device("loop0", 0, 16 * MiB, signature=fs)
    taken = image(16 * MiB, fuzzy=True, volume={"device": "/dev/loop0", "uuid": "7c1e5a0b"})
    plan = judge_restore(taken, facts(dest, tree(dest)))
    assert [f.code for f in plan.findings] == ["DEST_HAS_DATA", "DEST_IS_SOURCE", "IMAGE_FUZZY"]
    assert plan.findings[0].message == (
        "/dev/loop0 holds ext4 'srv' (UUID 7c1e5a0b), the same file system as the image; "
        "everything on it will be replaced"
    )


# --- --imagetofile ------------------------------------------------------------------------


def file_facts(path: str, **kw: Any) -> FileRestoreFacts:
    kw.setdefault("parent_free", 1 << 40)
    return FileRestoreFacts(path, path, path, REPO, REPO, **kw)


def test_imagetofile_into_the_repository_is_a_blocker():
    plan = judge_file_restore(image(16 * MiB), file_facts(f"{REPO}/restored.img"))
    assert [(f.code, f.severity, f.message) for f in plan.findings] == [
        (
            "DEST_IN_REPOSITORY",
            Severity.BLOCKER,
            f"{REPO}/restored.img lies inside the repository {REPO}; restore somewhere else",
        )
    ]
    assert plan.to_file and plan.device is None and plan.confirm_name == f"{REPO}/restored.img"


def test_imagetofile_next_to_the_repository_is_not_inside_it():
    plan = judge_file_restore(image(16 * MiB), file_facts(f"{REPO}-copy.img"))
    assert plan.findings == ()


def test_imagetofile_onto_a_backing_file_or_a_link_is_a_blocker():
    backing = judge_file_restore(image(16 * MiB), file_facts("/x.img", backs=("/dev/loop3",)))
    assert [f.code for f in backing.findings] == ["DEST_BACKS_DEVICE"]
    link = judge_file_restore(image(16 * MiB), file_facts("/x.img", is_link=True))
    assert [(f.code, f.message) for f in link.findings] == [
        ("DEST_NOT_FILE", "/x.img is a symbolic link; give the file's own path")
    ]


def test_imagetofile_into_a_missing_directory_is_a_blocker_and_measures_nothing():
    plan = judge_file_restore(image(16 * MiB), file_facts("/no/x.img", parent_free=None))
    assert [(f.code, f.message) for f in plan.findings] == [
        ("DEST_DIR_MISSING", "/no does not exist; create it first")
    ]


def test_imagetofile_over_a_file_warns_and_over_a_device_node_blocks():
    over_file = file_facts("/x.img", mode=stat.S_IFREG | 0o600)
    assert [f.code for f in judge_file_restore(image(16 * MiB), over_file).findings] == [
        "DEST_EXISTS"
    ]
    over_node = file_facts("/x.img", mode=stat.S_IFBLK | 0o600)
    assert [f.code for f in judge_file_restore(image(16 * MiB), over_node).findings] == [
        "DEST_NOT_FILE"
    ]


def test_imagetofile_without_room_for_the_stored_data_is_a_blocker():
    """Three chunks of data need 12 MiB; zero chunks take no room in a sparse file."""
    plan = judge_file_restore(image(32 * MiB, chunks=3), file_facts("/x.img", parent_free=MiB))
    [found] = plan.findings
    assert found.code == "DEST_NO_SPACE"
    assert found.message.startswith("/ has 1.0 MiB free but the image holds 12.0 MiB of data")
    assert (found.details["free"], found.details["needed"]) == (MiB, 12 * MiB)


# --- nothing read -------------------------------------------------------------------------


@contextmanager
def machine_unread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every way of looking at the machine fail the test while the block runs."""

    def looked(*args: object, **kw: object) -> None:
        raise AssertionError(f"the machine was looked at: {args}")

    with monkeypatch.context() as m:
        for module, names in (
            (os, ("stat", "lstat", "open", "statvfs", "readlink", "listdir", "scandir", "getcwd")),
            (os.path, ("realpath", "exists", "isdir", "islink")),
            (builtins, ("open",)),
        ):
            for name in names:
                m.setattr(module, name, looked)
        yield


def test_the_judgement_reads_nothing_of_the_machine(monkeypatch):
    part_label = gpt(32 * MiB, LabelPartition(1, 0, 32 * MiB, "data"))
    disk = device("loop0", 0, 64 * MiB, label=gpt(64 * MiB), children=("loop1",))
    part = device("loop1", 1, 32 * MiB, parent="loop0", extent=Extent("/dev/loop0", 0, 32 * MiB))
    given = facts(part, tree(disk, part), own_label=part_label, container_label=disk.label)
    labelled = image(32 * MiB, label={"kind": "gpt"}, fuzzy=True)
    with machine_unread(monkeypatch):
        plans = [
            judge_restore(labelled, given, preserve_label=True),
            judge_restore(labelled, facts(disk, tree(disk, part), root_device="loop1")),
            judge_file_restore(labelled, file_facts("/x.img", mode=stat.S_IFREG)),
        ]
    assert all(p.findings for p in plans)


def test_the_scene_plans_every_restore_without_reading_the_machine(monkeypatch):
    """The recorded scene feeds the real judgement; it never looks at this machine."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from screenshots.scene import CATALOG, DEVICES, SceneServices

    services = SceneServices()
    with machine_unread(monkeypatch):
        plans = [
            services.plan_restore(entry, dest, preserve_label=keep)
            for entry in CATALOG.images
            for dest in [d.path for d in DEVICES] + ["/srv", "/dev/nowhere"]
            for keep in (False, True)
        ]
    assert all(p.findings for p in plans)
