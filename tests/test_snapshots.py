"""consistent_view on real loop devices: static remounts, reflink snapshots, fake LVM, dynamic."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from children import holder
from cliutil import ROOT
from loopkit import MKFS, LoopKit, run

from core.devices import DeviceKind, scan
from core.mounts import Mount, read_mounts
from core.snapshots import (
    SNAPSHOT_NAME_PREFIX,
    FreezeError,
    ImageType,
    SnapshotOverflow,
    SnapshotUnavailable,
    StaticRefused,
    UndoError,
    consistent_view,
    default_imagetype,
    live_mounts,
    reflink,
    snapshot_provider_for,
    static,
)
from core.targets import Volume, resolve

FAKE_LVM = Path(__file__).parent / "fake_lvm"
MiB = 1 << 20


# --- helpers --------------------------------------------------------------------------


def volume_of(target: str | Path) -> Volume:
    """Resolve a device path or mount point against a fresh scan, as the CLI does."""
    return resolve(str(target), scan())


def mount_at(mount_point: Path) -> Mount:
    """Return the (topmost) mount at ``mount_point`` from /proc/self/mountinfo."""
    return next(m for m in reversed(read_mounts()) if m.mount_point == str(mount_point))


def codes(findings) -> list[str]:
    return [f.code for f in findings]


def clone_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if SNAPSHOT_NAME_PREFIX in p.name)


def thaw(mount_point: Path) -> None:
    """Thaw ``mount_point``, ignoring "not frozen": the safety net of the freeze tests."""
    subprocess.run(["fsfreeze", "-u", str(mount_point)], capture_output=True, check=False)


@contextmanager
def always_thawed(mount_point: Path) -> Iterator[None]:
    """Thaw ``mount_point`` when the block ends, so a bug cannot leave the test run hung."""
    try:
        yield
    finally:
        thaw(mount_point)


def write_completes(mount_point: Path, name: str, timeout: float = 20) -> bool:
    """Write and fsync a file in a child process; False when it blocks (a frozen fs).

    A child, because a write to a frozen file system sleeps uninterruptibly: the test
    itself must never be the one that blocks.
    """
    code = (
        "import os, sys\n"
        "with open(sys.argv[1], 'w') as f:\n"
        "    f.write('written')\n"
        "    f.flush()\n"
        "    os.fsync(f.fileno())\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(mount_point / name)])
    try:
        return p.wait(timeout) == 0
    except subprocess.TimeoutExpired:
        thaw(mount_point)  # the child can only be reaped once the file system thaws
        p.kill()
        p.wait()
        return False


@dataclass
class InnerVolume:
    """A loop device whose backing file lies on another loop volume's file system."""

    device: str
    backing: Path
    mount_point: Path | None


HOST_SIZE = {"xfs": "320M", "btrfs": "256M", "ext4": "64M"}


def inner_volume(
    kit: LoopKit,
    host_fs: str,
    *,
    inner_fs: str | None = "ext4",
    mount: bool = True,
    xfs_reflink: bool = True,
    offset: int = 0,
    size_limit: int = 0,
) -> InnerVolume:
    """Make a ``host_fs`` volume, a 64 MiB image file in it, and attach that as a loop device."""
    host = kit.volume(HOST_SIZE[host_fs], None)
    run(*MKFS[host_fs], *([] if xfs_reflink else ["-m", "reflink=0"]), host.device)
    host_mp = kit.mount(host.device)
    backing = host_mp / "volume.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    dev = kit.attach(backing, offset=offset, size_limit=size_limit)
    mp = None
    if inner_fs:
        kit.mkfs(dev, inner_fs)
        if mount:
            mp = kit.mount(dev)
    return InnerVolume(dev, backing, mp)


# --- static ----------------------------------------------------------------------------


@pytest.mark.loop
def test_static_remounts_read_only_for_the_copy_then_exactly_as_before(loopkit):
    vol = loopkit.volume("32M", "ext4", mount=False)
    mp = loopkit.mount(vol.device, None, "nosuid", "nodev", "noatime")
    before = mount_at(mp)
    with consistent_view(volume_of(vol.device), ImageType.STATIC) as view:
        assert (view.path, view.offset, view.size) == (vol.device, 0, 32 * MiB)
        assert (view.imagetype, view.provider, view.fuzzy) == (
            ImageType.STATIC,
            "remount-ro",
            False,
        )
        during = mount_at(mp)
        assert during.read_only and "ro" in during.super_options
        with pytest.raises(OSError) as e:
            (mp / "new.txt").write_text("x")
        assert e.value.errno == errno.EROFS
    after = mount_at(mp)
    assert (after.options, after.super_options) == (before.options, before.super_options)
    (mp / "new.txt").write_text("x")
    assert codes(view.all_findings) == ["STATIC_READ_ONLY"]
    assert view.all_findings[0].details["mount_point"] == str(mp)


def _raise_value_error() -> None:
    raise ValueError("the copy failed")


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def _deliver_sigint() -> None:
    signal.raise_signal(signal.SIGINT)  # a real Ctrl-C: Python's handler raises KeyboardInterrupt


@pytest.mark.loop
@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        (_raise_value_error, ValueError),
        (_raise_keyboard_interrupt, KeyboardInterrupt),
        (_deliver_sigint, KeyboardInterrupt),
    ],
    ids=["exception", "KeyboardInterrupt", "SIGINT"],
)
def test_static_goes_back_to_read_write_when_the_copy_is_interrupted(loopkit, fail, expected):
    vol = loopkit.volume("32M", "ext4")
    before = mount_at(vol.mount_point)
    with pytest.raises(expected), consistent_view(volume_of(vol.device), ImageType.STATIC):
        assert mount_at(vol.mount_point).read_only
        fail()
    after = mount_at(vol.mount_point)
    assert (after.options, after.super_options) == (before.options, before.super_options)
    (vol.mount_point / "after.txt").write_text("x")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.loop
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_static_goes_back_to_read_write_when_the_process_is_terminated(loopkit, sig):
    """A child holds a static view; SIGTERM (or a dropped SSH session's SIGHUP) ends it cleanly."""
    vol = loopkit.volume("32M", "ext4")
    script = (
        "import sys\n"
        "from core.devices import scan\n"
        "from core.snapshots import ImageType, consistent_view\n"
        "from core.targets import resolve\n"
        "with consistent_view(resolve(sys.argv[1], scan()), ImageType.STATIC):\n"
        "    print('inside', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", script, vol.device],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "inside"
        assert mount_at(vol.mount_point).read_only
        p.send_signal(sig)
        assert p.wait(timeout=30) == 128 + sig
    finally:
        p.kill()
        p.wait()
    assert not mount_at(vol.mount_point).read_only
    (vol.mount_point / "after.txt").write_text("x")


@pytest.mark.loop
def test_static_is_refused_while_a_process_writes_and_nothing_changes(loopkit):
    vol = loopkit.volume("32M", "ext4")
    busy = vol.mount_point / "busy.log"
    before = mount_at(vol.mount_point)
    with holder(f"f = open({str(busy)!r}, 'w')") as p:
        with (
            pytest.raises(StaticRefused) as refused,
            consistent_view(volume_of(vol.mount_point), ImageType.STATIC),
        ):
            pytest.fail("the copy must not start")
        assert mount_at(vol.mount_point) == before
    assert f"pid {p.pid} (python" in refused.value.message
    assert str(busy) in refused.value.message and "--imagetype snapshot" in refused.value.message
    assert [(u.pid, u.how) for u in refused.value.processes] == [(p.pid, "write")]
    (vol.mount_point / "after.txt").write_text("x")


@pytest.mark.loop
def test_static_is_refused_when_a_writer_appears_between_check_and_remount(loopkit, monkeypatch):
    """The first writer check is made to miss the holder: the remount then fails with EBUSY."""
    vol = loopkit.volume("32M", "ext4")
    checks: list[int] = []
    real = static.processes_using

    def misses_the_first_time(*args, **kwargs):
        checks.append(1)
        return () if len(checks) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(static, "processes_using", misses_the_first_time)
    with (
        holder(f"f = open({str(vol.mount_point / 'late.log')!r}, 'w')") as p,
        pytest.raises(StaticRefused) as refused,
        consistent_view(volume_of(vol.device), ImageType.STATIC),
    ):
        pytest.fail("the copy must not start")
    assert len(checks) == 2
    assert f"pid {p.pid}" in refused.value.message
    assert not mount_at(vol.mount_point).read_only


@pytest.mark.loop
def test_static_ignores_writers_on_a_file_system_mounted_below(loopkit):
    outer = loopkit.volume("32M", "ext4")
    inner = loopkit.volume("32M", "ext4", mount=False)
    nested = loopkit.mount(inner.device, outer.mount_point / "nested")
    with (
        holder(f"f = open({str(nested / 'busy.log')!r}, 'w')"),
        consistent_view(volume_of(outer.device), ImageType.STATIC) as view,
    ):
        assert view.provider == "remount-ro"
        assert mount_at(outer.mount_point).read_only
        assert not mount_at(nested).read_only
    assert not mount_at(outer.mount_point).read_only


@pytest.mark.loop
def test_static_with_bind_mounts_makes_every_mount_read_only_and_restores_each(loopkit):
    vol = loopkit.volume("32M", "ext4", mount=False)
    mp = loopkit.mount(vol.device, None, "nosuid")
    (mp / "sub").mkdir()
    whole = loopkit.bind(mp)
    sub = loopkit.bind(mp / "sub")
    points = [mp, whole, sub]
    before = [mount_at(p) for p in points]
    with consistent_view(volume_of(whole), ImageType.STATIC) as view:
        for p in points:
            with pytest.raises(OSError) as e:
                (p / "x.txt").write_text("x")
            assert e.value.errno == errno.EROFS, p
    assert view.all_findings[0].details["mount_point"] == str(whole)  # the one named
    assert [mount_at(p) for p in points] == before
    for p in points:
        (p / f"{p.name}.txt").write_text("x")


@pytest.mark.loop
@pytest.mark.parametrize("how", ["ro mount", "ro bind remount"])
def test_static_leaves_a_read_only_file_system_alone(loopkit, how):
    vol = loopkit.volume("32M", "ext4", mount=False)
    if how == "ro mount":
        mp = loopkit.mount(vol.device, None, "ro")
    else:  # the superblock stays rw, the only mount is ro
        mp = loopkit.mount(vol.device)
        run("mount", "-o", "remount,bind,ro", str(mp))
    before = mount_at(mp)
    with consistent_view(volume_of(vol.device), ImageType.STATIC) as view:
        assert (view.provider, view.path, view.fuzzy) == ("read-only", vol.device, False)
        assert mount_at(mp) == before
    assert mount_at(mp) == before
    assert codes(view.all_findings) == ["STATIC_ALREADY_READ_ONLY"]


@pytest.mark.loop
@pytest.mark.parametrize("fstype", ["ext4", None], ids=["unmounted-ext4", "raw"])
def test_static_reads_an_unmounted_volume_as_it_is(loopkit, fstype):
    vol = loopkit.volume("16M", fstype, mount=False)
    with consistent_view(volume_of(vol.device), ImageType.STATIC) as view:
        assert (view.path, view.offset, view.size) == (vol.device, 0, 16 * MiB)
        assert (view.provider, view.fuzzy, view.findings) == ("unmounted", False, ())


def test_static_refuses_the_root_file_system_without_touching_it(monkeypatch):
    try:
        root = volume_of("/")
    except Exception as e:  # "/" on overlayfs and the like has no block device
        pytest.skip(f"/ is not a block device here: {e}")
    if mount_at(Path("/")).read_only:
        pytest.skip("/ is read-only here")

    def must_not_remount(*args):
        pytest.fail(f"tried to remount {args}")

    monkeypatch.setattr(static, "remount", must_not_remount)
    with (
        pytest.raises(StaticRefused, match="root file system, which cannot go offline"),
        consistent_view(root, ImageType.STATIC),
    ):
        pytest.fail("the copy must not start")
    if root.device.kind is not DeviceKind.LVM:
        assert snapshot_provider_for(root) is None
        assert default_imagetype(root) is ImageType.STATIC


# --- dynamic ---------------------------------------------------------------------------


@pytest.mark.loop
def test_dynamic_reads_the_device_in_use_and_marks_the_image_fuzzy(loopkit):
    vol = loopkit.volume("32M", "ext4")
    before = mount_at(vol.mount_point)
    with consistent_view(volume_of(vol.device), ImageType.DYNAMIC) as view:
        assert (view.path, view.offset, view.size) == (vol.device, 0, 32 * MiB)
        assert (view.imagetype, view.provider, view.fuzzy) == (ImageType.DYNAMIC, "none", True)
        (vol.mount_point / "during.txt").write_text("still writable")
    assert mount_at(vol.mount_point) == before
    assert codes(view.findings) == ["IMAGE_FUZZY"]
    assert "fsck" in view.findings[0].message


# --- snapshot: reflink -------------------------------------------------------------------


@pytest.mark.loop
@pytest.mark.parametrize("host_fs", ["xfs", "btrfs"])
def test_reflink_snapshot_shows_the_volume_as_it_was_when_frozen(loopkit, host_fs):
    inner = inner_volume(loopkit, host_fs)
    mp = inner.mount_point
    assert mp is not None
    (mp / "a.txt").write_text("old")
    os.sync()
    vol = volume_of(inner.device)
    assert snapshot_provider_for(vol) == "reflink"
    assert default_imagetype(vol) is ImageType.SNAPSHOT
    with always_thawed(mp):
        with consistent_view(vol, None) as view:
            assert (view.imagetype, view.provider, view.fuzzy) == (
                ImageType.SNAPSHOT,
                "reflink",
                False,
            )
            clone = Path(view.path)
            assert clone.parent == inner.backing.parent and clone != inner.backing
            assert (view.offset, view.size) == (0, 64 * MiB)
            # The live volume is thawed and changes while the copy runs.
            assert write_completes(mp, "b.txt")
            (mp / "a.txt").write_text("new")
            os.sync()
            clone_dev = loopkit.attach(clone, read_only=True)
            fsck = subprocess.run(["e2fsck", "-fn", clone_dev], capture_output=True, text=True)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr  # frozen: clean, no replay
            clone_mp = loopkit.mount(clone_dev, None, "ro", "norecovery")
            assert (clone_mp / "a.txt").read_text() == "old"
            assert not (clone_mp / "b.txt").exists()
            loopkit.umount(clone_mp)
        assert not clone.exists()
        assert clone_leftovers(inner.backing.parent) == []
        assert write_completes(mp, "c.txt")
        assert (mp / "a.txt").read_text() == "new"
    assert codes(view.all_findings) == ["SNAPSHOT_REFLINK"]
    assert view.findings[0].details["frozen_mount_point"] == str(mp)


@pytest.mark.loop
def test_reflink_snapshot_of_an_unmounted_loop_slice_keeps_its_offset(loopkit):
    inner = inner_volume(loopkit, "xfs", inner_fs=None, offset=1 * MiB, size_limit=8 * MiB)
    fd = os.open(inner.device, os.O_WRONLY)
    try:
        os.pwrite(fd, b"before", 4096)
        os.fsync(fd)
        with consistent_view(volume_of(inner.device), ImageType.SNAPSHOT) as view:
            assert (view.offset, view.size, view.provider) == (1 * MiB, 8 * MiB, "reflink")
            os.pwrite(fd, b"after!", 4096)
            os.fsync(fd)
            with open(view.path, "rb") as clone:
                clone.seek(view.offset + 4096)
                assert clone.read(6) == b"before"
    finally:
        os.close(fd)
    assert view.findings[0].details["frozen_mount_point"] is None
    assert clone_leftovers(inner.backing.parent) == []


@pytest.mark.loop
def test_views_work_from_a_worker_thread(loopkit):
    """The console runs jobs in thread workers: no signal-handler calls may fail there."""
    inner = inner_volume(loopkit, "xfs")
    mp = inner.mount_point
    assert mp is not None
    seen: dict[str, object] = {}

    def job() -> None:
        try:
            with consistent_view(volume_of(inner.device), ImageType.SNAPSHOT) as view:
                seen["snapshot"] = (view.provider, Path(view.path).exists())
            with consistent_view(volume_of(inner.device), ImageType.STATIC) as view:
                seen["static"] = (view.provider, mount_at(mp).read_only)
        except BaseException as e:  # handed to the test thread, which fails with it
            seen["error"] = e

    with always_thawed(mp):
        worker = threading.Thread(target=job)
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive()
    assert "error" not in seen, seen.get("error")
    assert seen == {"snapshot": ("reflink", True), "static": ("remount-ro", True)}
    assert not mount_at(mp).read_only
    assert write_completes(mp, "after.txt")
    assert clone_leftovers(inner.backing.parent) == []


@pytest.mark.loop
@pytest.mark.parametrize("where", ["same-fs", "other-fs"])
def test_reflink_clone_goes_to_workdir_on_the_same_file_system(loopkit, tmp_path, where):
    inner = inner_volume(loopkit, "xfs")
    mp = inner.mount_point
    assert mp is not None
    workdir = inner.backing.parent / "clones" if where == "same-fs" else tmp_path
    workdir.mkdir(exist_ok=True)
    vol = volume_of(inner.device)
    with always_thawed(mp):
        if where == "same-fs":
            with consistent_view(vol, ImageType.SNAPSHOT, workdir=str(workdir)) as view:
                assert Path(view.path).parent == workdir
        else:
            with (
                pytest.raises(SnapshotUnavailable, match="is not on the file system of"),
                consistent_view(vol, ImageType.SNAPSHOT, workdir=str(workdir)),
            ):
                pytest.fail("no snapshot, no copy")
        assert write_completes(mp, "after.txt")
    assert clone_leftovers(workdir) == []
    assert clone_leftovers(inner.backing.parent) == []


@pytest.mark.loop
def test_ctrl_c_during_the_freeze_is_held_until_the_thaw(loopkit, monkeypatch):
    inner = inner_volume(loopkit, "xfs")
    mp = inner.mount_point
    assert mp is not None
    real_clone = reflink._ficlone
    cloned: list[bool] = []

    def clone_interrupted_by_ctrl_c(src: int, dst: int) -> None:
        signal.raise_signal(signal.SIGINT)  # arrives while the file system is frozen
        real_clone(src, dst)
        cloned.append(True)

    monkeypatch.setattr(reflink, "_ficlone", clone_interrupted_by_ctrl_c)
    with always_thawed(mp):
        with (
            pytest.raises(KeyboardInterrupt),
            consistent_view(volume_of(inner.device), ImageType.SNAPSHOT),
        ):
            pytest.fail("Ctrl-C must end the job before the copy")
        assert cloned == [True]  # the clone finished, the thaw ran, then Ctrl-C was delivered
        assert write_completes(mp, "after.txt")
        assert clone_leftovers(inner.backing.parent) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.loop
def test_clone_that_fails_thaws_and_can_fall_back_to_dynamic(loopkit, monkeypatch):
    inner = inner_volume(loopkit, "xfs")
    mp = inner.mount_point
    assert mp is not None

    def clone_not_supported(src: int, dst: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(reflink, "_ficlone", clone_not_supported)
    vol = volume_of(inner.device)
    with always_thawed(mp):
        with (
            pytest.raises(SnapshotUnavailable, match="cannot clone it"),
            consistent_view(vol, ImageType.SNAPSHOT),
        ):
            pytest.fail("no snapshot, no copy")
        assert write_completes(mp, "after.txt")
        assert clone_leftovers(inner.backing.parent) == []
        with consistent_view(vol, ImageType.SNAPSHOT, fallback_dynamic=True) as view:
            assert (view.imagetype, view.path, view.fuzzy) == (
                ImageType.DYNAMIC,
                inner.device,
                True,
            )
        assert write_completes(mp, "after2.txt")
    assert codes(view.findings) == ["SNAPSHOT_FALLBACK_DYNAMIC", "IMAGE_FUZZY"]


@pytest.mark.loop
def test_snapshot_refuses_a_file_system_someone_else_froze_and_leaves_it_frozen(loopkit):
    inner = inner_volume(loopkit, "xfs")
    mp = inner.mount_point
    assert mp is not None
    with always_thawed(mp):
        run("fsfreeze", "-f", str(mp))
        with (
            pytest.raises(FreezeError, match="already frozen"),
            consistent_view(volume_of(inner.device), ImageType.SNAPSHOT),
        ):
            pytest.fail("no snapshot, no copy")
        again = subprocess.run(["fsfreeze", "-f", str(mp)], capture_output=True, text=True)
        assert again.returncode != 0 and "busy" in again.stderr.lower()  # still frozen
        assert clone_leftovers(inner.backing.parent) == []
        thaw(mp)
        assert write_completes(mp, "after.txt")


@pytest.mark.loop
def test_snapshot_never_freezes_the_root_file_system(loopkit, monkeypatch):
    """The mount table is faked so the loop volume appears mounted at "/"; nothing is frozen."""
    inner = inner_volume(loopkit, "xfs", inner_fs=None)
    dev = scan().by_path(inner.device)
    assert dev is not None
    as_root = Mount(1, 0, dev.major, dev.minor, "/", "/", ("rw",), "ext4", dev.path, ("rw",))
    monkeypatch.setattr(live_mounts, "read_mounts", lambda: (*read_mounts(), as_root))

    def must_not_freeze(mount_point: str):
        pytest.fail(f"tried to freeze {mount_point}")

    monkeypatch.setattr(reflink, "_frozen", must_not_freeze)
    vol = Volume(given=inner.device, device=dev)
    assert snapshot_provider_for(vol) is None
    with (
        pytest.raises(SnapshotUnavailable, match="never freezes"),
        consistent_view(vol, ImageType.SNAPSHOT),
    ):
        pytest.fail("no snapshot, no copy")


@pytest.mark.loop
@pytest.mark.parametrize(
    ("host_fs", "xfs_reflink", "why"),
    [("ext4", True, "cannot clone files"), ("xfs", False, "without reflink")],
    ids=["backing-on-ext4", "backing-on-xfs-reflink0"],
)
def test_snapshot_unavailable_when_the_backing_file_cannot_be_cloned(
    loopkit, host_fs, xfs_reflink, why
):
    inner = inner_volume(loopkit, host_fs, xfs_reflink=xfs_reflink)
    vol = volume_of(inner.device)
    assert snapshot_provider_for(vol) is None
    assert default_imagetype(vol) is ImageType.STATIC
    with (
        pytest.raises(SnapshotUnavailable) as unavailable,
        consistent_view(vol, ImageType.SNAPSHOT),
    ):
        pytest.fail("no snapshot, no copy")
    message = unavailable.value.message
    assert str(inner.backing) in message and why in message
    assert "--imagetype static or dynamic" in message
    with consistent_view(vol, ImageType.SNAPSHOT, fallback_dynamic=True) as view:
        assert (view.imagetype, view.provider, view.path) == (
            ImageType.DYNAMIC,
            "none",
            inner.device,
        )
        assert view.fuzzy
    assert codes(view.findings) == ["SNAPSHOT_FALLBACK_DYNAMIC", "IMAGE_FUZZY"]
    assert why in view.findings[0].message
    assert clone_leftovers(inner.backing.parent) == []


@pytest.mark.loop
def test_snapshot_unavailable_for_a_plain_loop_device_names_the_alternatives(loopkit):
    vol = loopkit.volume("16M", "ext4", mount=False)  # backing file under /tmp: not reflink
    image_dir = vol.image.parent
    resolved = volume_of(vol.device)
    with (
        pytest.raises(SnapshotUnavailable, match="--snapshot-fallback dynamic"),
        consistent_view(resolved, ImageType.SNAPSHOT),
    ):
        pytest.fail("no snapshot, no copy")
    assert clone_leftovers(image_dir) == []


# --- snapshot: LVM, faked ------------------------------------------------------------------


@dataclass
class FakeLvm:
    log: Path
    snapshot_device: Path

    def calls(self) -> list[tuple[str, ...]]:
        return [tuple(line.split("\t")) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake_lvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeLvm:
    """lvcreate/lvs/lvremove from tests/fake_lvm first on PATH, logging to a file.

    The fake exists because this kernel has no device-mapper: no real LVM snapshot can
    be made here. The "snapshot device" it reports is a regular file.
    """
    log = tmp_path / "lvm.log"
    log.touch()
    device = tmp_path / "snapshot-device"
    device.write_bytes(b"the snapshot's bytes")
    monkeypatch.setenv("PATH", f"{FAKE_LVM}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_LVM_LOG", str(log))
    monkeypatch.setenv("FAKE_LVM_SNAPSHOT_PATH", str(device))
    return FakeLvm(log, device)


def lvm_volume(kit: LoopKit) -> Volume:
    """A real scanned loop device dressed up as an LVM logical volume with dataclasses.replace.

    This kernel has no device-mapper, so no real LV exists to scan.
    """
    raw = kit.volume("16M", None)
    dev = scan().by_path(raw.device)
    assert dev is not None
    lv = replace(
        dev,
        kind=DeviceKind.LVM,
        dm_uuid="LVM-" + "a" * 64,
        dm_name="vg0-data",
        path="/dev/vg0/data",
    )
    return Volume(given=lv.path, device=lv)


def snapshot_name(calls: list[tuple[str, ...]]) -> str:
    lvcreate = next(c for c in calls if c[0] == "lvcreate")
    return lvcreate[lvcreate.index("--name") + 1]


@pytest.mark.loop
def test_lvm_snapshot_is_created_read_checked_and_removed(loopkit, fake_lvm):
    vol = lvm_volume(loopkit)
    assert snapshot_provider_for(vol) == "lvm"
    assert default_imagetype(vol) is ImageType.SNAPSHOT
    with consistent_view(vol, ImageType.SNAPSHOT, snapshot_cache_pct=25) as view:
        assert view.path == str(fake_lvm.snapshot_device)
        assert Path(view.path).read_bytes() == b"the snapshot's bytes"
        assert (view.offset, view.size, view.provider) == (0, 16 * MiB, "lvm")
        assert not any(c[0] == "lvremove" for c in fake_lvm.calls())
    name = snapshot_name(fake_lvm.calls())
    assert re.fullmatch(r"bv-snap-[0-9a-f]{8}", name)
    assert fake_lvm.calls() == [
        ("lvs", "--noheadings", "-o", "vg_name,lv_name", "/dev/vg0/data"),
        ("lvcreate", "--snapshot", "--extents", "25%ORIGIN", "--name", name, "vg0/data"),
        ("lvs", "--noheadings", "-o", "lv_path", f"vg0/{name}"),
        ("lvs", "--noheadings", "-o", "lv_attr,snap_percent", f"vg0/{name}"),
        ("lvremove", "-f", f"vg0/{name}"),
    ]
    assert codes(view.all_findings) == ["SNAPSHOT_LVM", "SNAPSHOT_USAGE"]
    assert view.all_findings[1].details["percent"] == 12.5


@pytest.mark.loop
def test_lvm_snapshot_is_removed_when_the_copy_fails(loopkit, fake_lvm):
    with (
        pytest.raises(KeyboardInterrupt),
        consistent_view(lvm_volume(loopkit), ImageType.SNAPSHOT),
    ):
        raise KeyboardInterrupt
    calls = fake_lvm.calls()
    assert calls[-1] == ("lvremove", "-f", f"vg0/{snapshot_name(calls)}")
    assert not any("lv_attr,snap_percent" in c for c in calls)  # no check of a failed copy


@pytest.mark.loop
@pytest.mark.parametrize(
    ("attr", "percent"),
    [("swi-a-s---", "100.00"), ("swi-I-s---", "")],
    ids=["full", "invalid"],
)
def test_lvm_snapshot_that_filled_up_is_an_overflow_and_still_removed(
    loopkit, fake_lvm, monkeypatch, attr, percent
):
    monkeypatch.setenv("FAKE_LVM_SNAP_ATTR", attr)
    monkeypatch.setenv("FAKE_LVM_SNAP_PERCENT", percent)
    with (
        pytest.raises(SnapshotOverflow, match="increase --snapshotcachesize"),
        consistent_view(lvm_volume(loopkit), ImageType.SNAPSHOT),
    ):
        pass  # the copy "ran"; the snapshot overflowed meanwhile
    calls = fake_lvm.calls()
    assert calls[-1] == ("lvremove", "-f", f"vg0/{snapshot_name(calls)}")


@pytest.mark.loop
def test_lvm_snapshot_nearly_full_is_a_warning(loopkit, fake_lvm, monkeypatch):
    monkeypatch.setenv("FAKE_LVM_SNAP_PERCENT", "85.00")
    with consistent_view(lvm_volume(loopkit), ImageType.SNAPSHOT) as view:
        pass
    usage = view.all_findings[-1]
    assert (usage.code, usage.severity.word) == ("SNAPSHOT_USAGE", "warning")
    assert "--snapshotcachesize" in usage.message


@pytest.mark.loop
def test_lvcreate_failure_is_unavailable_or_falls_back(loopkit, fake_lvm, monkeypatch):
    monkeypatch.setenv("FAKE_LVM_LVCREATE_ERROR", "Volume group vg0 has insufficient free space")
    vol = lvm_volume(loopkit)
    with (
        pytest.raises(SnapshotUnavailable, match="insufficient free space"),
        consistent_view(vol, ImageType.SNAPSHOT),
    ):
        pytest.fail("no snapshot, no copy")
    with consistent_view(vol, ImageType.SNAPSHOT, fallback_dynamic=True) as view:
        assert (view.imagetype, view.fuzzy, view.path) == (ImageType.DYNAMIC, True, "/dev/vg0/data")
    assert codes(view.findings) == ["SNAPSHOT_FALLBACK_DYNAMIC", "IMAGE_FUZZY"]
    assert not any(c[0] == "lvremove" for c in fake_lvm.calls())


@pytest.mark.loop
def test_lvremove_failure_says_how_to_remove_the_snapshot(loopkit, fake_lvm, monkeypatch):
    monkeypatch.setenv("FAKE_LVM_LVREMOVE_RC", "5")
    with (
        pytest.raises(UndoError, match=r"lvremove -f vg0/bv-snap-"),
        consistent_view(lvm_volume(loopkit), ImageType.SNAPSHOT),
    ):
        pass


@pytest.mark.loop
def test_lvm_without_the_lvm_tools_is_unavailable(loopkit, tmp_path, monkeypatch):
    vol = lvm_volume(loopkit)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH, not even the fake
    assert snapshot_provider_for(vol) is None
    with (
        pytest.raises(SnapshotUnavailable, match="lvcreate, lvs, lvremove not found"),
        consistent_view(vol, ImageType.SNAPSHOT),
    ):
        pytest.fail("no snapshot, no copy")


def test_snapshot_cache_percentage_must_be_1_to_100():
    vol = Volume(given="/dev/null", device=None)  # type: ignore[arg-type]
    with (
        pytest.raises(ValueError, match=r"1\.\.100"),
        consistent_view(vol, ImageType.SNAPSHOT, snapshot_cache_pct=0),
    ):
        pass
