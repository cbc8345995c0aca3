"""A recorded machine for the console's snapshot tests and screenshots.

The console normally shows this machine: its real block devices, a repository that
grows with every run, jobs whose rates depend on the disks and a clock that never
stops. None of that is the same on two machines or in two runs, so a picture of it
cannot be compared with yesterday's. Snapshot tests and the screenshots in this
folder therefore run the real console (every screen, widget and worker) on this
recorded scene instead: a database server with a week of backups of ``/srv`` as
in the guide (an image every Monday, an increment every night), a backup of
``/srv`` running at 62%, one finished increment and one failed image.

:class:`SceneServices` stands in for :class:`tui.services.CoreServices` and
returns fixed values built from core's own frozen dataclasses; :class:`SceneJobs`
stands in for the job queue. Nothing here opens a device, a repository or a
process table, and nothing reads the clock: every time is written down.
Behaviour on real devices (scans, guards, backups, restores) is tested on loop
devices elsewhere (``tests/test_console.py`` and the core tests).

The ``settle`` and ``walk_*`` helpers drive the console into the states that are
photographed, with the same keys a user presses; the tests and ``generate.py``
share them, so a screenshot shows exactly what a snapshot test checks.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input, OptionList

from core import findings as F
from core.devices import BlockDevice, DeviceKind, DeviceTree, Extent, LoopInfo
from core.engine.guards import RestoreFacts, RestorePlan, Unresolved, judge_restore
from core.findings import Finding
from core.history import VolumeHistory
from core.jobs import SAMPLE_EVERY, BackupSpec, Jobs, JobSpec, JobState, JobView, Listener, Sample
from core.jobs.listeners import Listeners
from core.labels import ByteRange, DiskLabel, LabelKind, LabelPartition, extent_findings
from core.mounts import Mount, mount_containing
from core.preflight import VolumeCheck
from core.progress import Progress
from core.repo.catalog import CatalogEntry, catalog_of, volume_matches
from core.repo.filemanifest import FileManifest
from core.repo.format import ImageManifest, VolumeRecord
from core.repo.repository import ROOT_DEFAULT, RepoStatus
from core.signatures import FsType, Signature
from core.targets import Volume, target_names, volume_record
from tui.services import Catalog, CoreServices
from tui.widgets.device_tree import DeviceTreeView

MiB, GiB = 1 << 20, 1 << 30
HOST = "db1"
LINUX_FS_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"

# --- the machine ----------------------------------------------------------------------------

_MOUNTS = (
    Mount(23, 1, 9, 0, "/", "/", ("rw", "relatime"), "ext4", "/dev/md0", ("rw",)),
    Mount(96, 23, 8, 1, "/", "/srv", ("rw", "noatime"), "ext4", "/dev/sda1", ("rw",)),
    Mount(131, 23, 7, 0, "/", "/mnt/scratch", ("rw", "relatime"), "xfs", "/dev/loop0", ("rw",)),
)
_MOUNT = {m.mount_point: m for m in _MOUNTS}

SDA_SIZE = 128 * GiB
SDA_LABEL = DiskLabel(
    kind=LabelKind.GPT,
    sector_size=512,
    partitions=(
        LabelPartition(1, 64 * GiB, 48 * GiB, LINUX_FS_GUID, name="srv"),
        # The slice left over from the disk's first life: it starts at sector 0, so
        # it holds the GPT itself (the guide's cylinder-0 case on a modern disk).
        LabelPartition(2, 0, 64 * GiB, LINUX_FS_GUID, name="legacy-raw"),
    ),
    label_ranges=(
        ByteRange(0, 512, "protective MBR"),
        ByteRange(512, 1024, "primary GPT header"),
        ByteRange(1024, 17408, "primary GPT entries"),
        ByteRange(SDA_SIZE - 16896, SDA_SIZE - 512, "backup GPT entries"),
        ByteRange(SDA_SIZE - 512, SDA_SIZE, "backup GPT header"),
    ),
    backup_ranges=(
        ByteRange(SDA_SIZE - 16896, SDA_SIZE - 512, "backup GPT entries"),
        ByteRange(SDA_SIZE - 512, SDA_SIZE, "backup GPT header"),
    ),
    disk_guid="5b1f8c2e-94a7-4d3b-8e0f-6a2c7d9e1b40",
    disk_size=SDA_SIZE,
)

SDA2_SIZE = 64 * GiB
_SDA2_TAIL = (
    ByteRange(SDA2_SIZE - 16896, SDA2_SIZE - 512, "backup GPT entries"),
    ByteRange(SDA2_SIZE - 512, SDA2_SIZE, "backup GPT header"),
)
SDA2_LABEL = replace(
    SDA_LABEL,
    label_ranges=(*SDA_LABEL.front_ranges, *_SDA2_TAIL),
    backup_ranges=_SDA2_TAIL,
    disk_size=SDA2_SIZE,
)
"""The GPT as read from /dev/sda2's own first sectors, which are the disk's.

The disk's backup lies beyond sda2's end, so the parser puts the missing backup at
sda2's last sectors, where a partitioner would write it (its notes saying so are left
out: nothing in the console shows them).
"""


def _fs(kind: FsType, uuid: str, label: str | None = None) -> Signature:
    return Signature(kind, uuid, label, 4096, "1.0" if kind is FsType.EXT4 else None)


def _device(
    name: str, kind: DeviceKind, major: int, minor: int, size: int, **kw: Any
) -> BlockDevice:
    mounts = tuple(m for m in _MOUNTS if (m.major, m.minor) == (major, minor))
    return BlockDevice(
        name, f"/dev/{name}", kind, major, minor, size, 512, False, mounts=mounts, **kw
    )


DEVICES = DeviceTree(
    devices={
        d.name: d
        for d in (
            _device(
                "loop0",
                DeviceKind.LOOP,
                7,
                0,
                8 * GiB,
                signature=_fs(FsType.XFS, "e3a9d0c4-51b7-4f26-a8d3-0c6b92f17e55", "scratch"),
                loop=LoopInfo("/var/lib/blockvault/scratch.img", 0, 0, False),
            ),
            _device(
                "loop1",
                DeviceKind.LOOP,
                7,
                1,
                2 * GiB,
                loop=LoopInfo("/var/lib/machines/build.raw", 0, 0, True),
                probe_error="Permission denied",
            ),
            _device(
                "sda",
                DeviceKind.DISK,
                8,
                0,
                SDA_SIZE,
                model="SAMSUNG MZ7L3128",
                serial="S6ESNE0T812345",
                label=SDA_LABEL,
                children=("sda1", "sda2"),
            ),
            _device(
                "sda1",
                DeviceKind.PARTITION,
                8,
                1,
                48 * GiB,
                signature=_fs(FsType.EXT4, "7c1e5a0b-3f2d-4e8a-9b61-2d4f0c9e8a13", "srv"),
                parent="sda",
                extent=Extent("/dev/sda", 64 * GiB, 48 * GiB),
            ),
            _device(
                "sda2",
                DeviceKind.PARTITION,
                8,
                2,
                SDA2_SIZE,
                # Its first sectors are the disk's: the scan reads the GPT there too.
                label=SDA2_LABEL,
                parent="sda",
                extent=Extent("/dev/sda", 0, SDA2_SIZE),
            ),
            # The root file system's RAID 1 mirror: two like disks.
            *(
                _device(
                    name,
                    DeviceKind.DISK,
                    8,
                    minor,
                    240 * GiB,
                    model="INTEL SSDSC2KB240G8",
                    serial=serial,
                    holders=("md0",),
                    children=("md0",),
                )
                for name, minor, serial in (
                    ("sdb", 16, "PHYF0423017S240AGN"),
                    ("sdc", 32, "PHYF0423019K240AGN"),
                )
            ),
            _device(
                "md0",
                DeviceKind.MD,
                9,
                0,
                240 * GiB - 128 * MiB,
                signature=_fs(FsType.EXT4, "1d7b3e92-0c4a-4f5e-b8d1-93a6e2c40f7b", "root"),
                parent="sdb",
                slaves=("sdb", "sdc"),
                md_level="raid1",
            ),
        )
    },
    roots=("loop0", "loop1", "sda", "sdb", "sdc"),
    mounts=_MOUNTS,
)


def find_device(target: str) -> BlockDevice | None:
    """Return the scene's device whose node or mount point is ``target``."""
    for dev in DEVICES:
        if target == dev.path or target in dev.mount_points:
            return dev
    return None


# --- what the preflight checks found --------------------------------------------------------


def _label_findings(dev: BlockDevice) -> list[Finding]:
    assert dev.extent is not None
    return extent_findings(
        SDA_LABEL, dev.extent.start, dev.extent.size, disk=dev.extent.container, volume=dev.path
    )


CHECKS: dict[str, tuple[Finding, ...]] = {
    "/dev/sda1": (
        F.info("FS_MOUNTED", "/dev/sda1 (ext4) is mounted at /srv (rw)", mount_points=["/srv"]),
        F.warning(
            "PROCESS_WRITING",
            "pid 1187 (postgres) has open for writing /srv/pgdata/base/16384/2619 (+37 more), "
            "pid 1214 (postgres) has open for writing /srv/pgdata/pg_wal/00000001000000A40000"
            "0093; static (offline) backup cannot remount it read-only until they close; stop "
            "them or use --imagetype snapshot",
        ),
        *_label_findings(DEVICES.devices["sda1"]),
    ),
    "/dev/sda2": (
        F.info(
            "VOLUME_RAW",
            "/dev/sda2 holds no file system: it is backed up as a raw volume, every block read",
        ),
        *_label_findings(DEVICES.devices["sda2"]),
        F.warning(
            "VOLUME_HOLDS_LABEL",
            "/dev/sda2 begins with a disk label (GPT): restoring its image writes that label "
            "to the destination (use --preserve-label to keep the destination's)",
        ),
    ),
    "/dev/md0": (
        F.info("FS_MOUNTED", "/dev/md0 (ext4) is mounted at / (rw)", mount_points=["/"]),
        F.warning(
            "ROOT_FILESYSTEM",
            "/dev/md0 holds the root file system, which cannot go offline; use --imagetype "
            "snapshot (or dynamic) rather than static",
        ),
        F.warning(
            "PROCESS_WRITING",
            "pid 612 (systemd-journal) has open for writing /var/log/journal/system.journal "
            "(+3 more), pid 901 (rsyslogd) has open for writing /var/log/syslog; static "
            "(offline) backup cannot remount it read-only until they close; stop them or use "
            "--imagetype snapshot",
        ),
    ),
    "/dev/loop0": (
        F.info(
            "FS_MOUNTED",
            "/dev/loop0 (xfs) is mounted at /mnt/scratch (rw)",
            mount_points=["/mnt/scratch"],
        ),
        F.warning(
            "PROCESS_CWD",
            "pid 2291 (bash) has its working directory in /mnt/scratch/build; they keep the "
            "file system busy (it cannot be unmounted)",
        ),
    ),
    "/dev/loop1": (
        F.blocker(
            "DEVICE_UNREADABLE",
            "cannot read /dev/loop1: Permission denied; this process may not open it "
            "(a container's device policy?)",
        ),
    ),
    "/dev/sda": (
        F.info(
            "VOLUME_RAW",
            "/dev/sda holds no file system: it is backed up as a raw volume, every block read",
        ),
        F.warning(
            "VOLUME_HOLDS_LABEL",
            "/dev/sda begins with a disk label (GPT): restoring its image writes that label to "
            "the destination (use --preserve-label to keep the destination's)",
        ),
    ),
    **{
        f"/dev/{disk}": (
            F.info(
                "VOLUME_RAW",
                f"/dev/{disk} holds no file system: it is backed up as a raw volume, every "
                "block read",
            ),
            F.warning(
                "DEVICE_HELD",
                f"/dev/{disk} is in use by /dev/md0 (device-mapper or md); back up that device "
                "instead, or stop it first",
                holders=["md0"],
            ),
        )
        for disk in ("sdb", "sdc")
    },
}

# --- the repository -------------------------------------------------------------------------


def _volume_record(dev: BlockDevice) -> VolumeRecord:
    key = dev.mount_points[0] if dev.mount_points else dev.path
    mount_point = dev.mount_points[0] if dev.mount_points else None
    return volume_record(dev, key=key, mount_point=mount_point, size=dev.size, host=HOST)


def _image(
    image_id: str, dev: str, imagetype: str, started: str, finished: str, stored: int
) -> ImageManifest:
    device = DEVICES.devices[dev]
    return ImageManifest(
        id=image_id,
        volume=_volume_record(device),
        imagetype=imagetype,
        fuzzy=imagetype == "dynamic",
        started=started,
        finished=finished,
        chunk_size=4 * MiB,
        size=device.size,
        table=b"",
        stats={"bytes_stored_new": stored},
    )


SRV_IMAGES = (
    _image(
        "20250310T210004Z-9b04e7",
        "sda1",
        "snapshot",
        "2025-03-10T21:00:04.112+00:00",
        "2025-03-10T21:03:37.402+00:00",
        3_912 * MiB,
    ),
    _image(
        "20250303T210003Z-3fa1c2",
        "sda1",
        "snapshot",
        "2025-03-03T21:00:03.870+00:00",
        "2025-03-03T21:05:51.233+00:00",
        11_604 * MiB,
    ),
)
OTHER_IMAGES = (
    _image(
        "20250309T030012Z-51c0de",
        "md0",
        "snapshot",
        "2025-03-09T03:00:12.004+00:00",
        "2025-03-09T03:09:48.617+00:00",
        6_220 * MiB,
    ),
    _image(
        "20250228T180140Z-c7e2a9",
        "loop0",
        "dynamic",
        "2025-02-28T18:01:40.551+00:00",
        "2025-02-28T18:02:55.090+00:00",
        1_870 * MiB,
    ),
)


def _increment(
    day: int,
    suffix: str,
    previous: str | None,
    files: tuple[int, int, int, int],
    sent: int,
) -> FileManifest:
    scanned, new, changed, deleted = files
    read = int(sent * 2.9)  # what was read of new and changed files, before compression
    return FileManifest(
        id=f"202503{day:02d}T220005.{day * 3917:06d}Z-{suffix}",
        volume=_volume_record(DEVICES.devices["sda1"]),
        base_image=SRV_IMAGES[0].id,
        previous=previous,
        started=f"2025-03-{day:02d}T22:00:05.{day * 37:03d}+00:00",
        finished=f"2025-03-{day:02d}T22:{2 if previous else 9:02d}:4{day % 10}.5{day:02d}+00:00",
        entries=(),
        stats={
            "files_scanned": scanned,
            "files_new": new,
            "files_changed": changed,
            "files_metadata_only": changed // 9,
            "files_deleted": deleted,
            "files_unchanged": scanned - new - changed,
            "files_skipped": 0,
            "bytes_read": read,
            "bytes_new": read * 7 // 10,
            "bytes_sent": sent,
            "bytes_dedup": read - read * 7 // 10,
            "return_code": 0,
        },
    )


def _week() -> tuple[FileManifest, ...]:
    # Monday's increment is the full one after Monday's image; each later one reuses
    # the unchanged files of the one before (the guide's Monday to Thursday).
    days = (
        (10, "a41f02", (48_213, 48_213, 0, 0), 11_870 * MiB),
        (11, "0c9d7e", (48_290, 131, 412, 54), 1_406 * MiB),
        (12, "e27b55", (48_305, 77, 380, 62), 1_093 * MiB),
        (13, "5fd310", (48_342, 95, 441, 58), 1_618 * MiB),
    )
    out: list[FileManifest] = []
    for day, suffix, files, sent in days:
        out.append(_increment(day, suffix, out[-1].id if out else None, files, sent))
    return tuple(reversed(out))


SRV_INCREMENTS = _week()
"""Thursday's increment first, as ``volume_history`` orders them."""

KEEP_VERSIONS = 3


def _catalog(images: tuple[ImageManifest, ...]) -> tuple[CatalogEntry, ...]:
    return tuple(catalog_of(images, KEEP_VERSIONS))


CATALOG = Catalog(_catalog(SRV_IMAGES + OTHER_IMAGES), SRV_INCREMENTS, DEVICES)

# --- restore plans ---------------------------------------------------------------------------


REPOSITORY = ROOT_DEFAULT
"""Where the scene's repository lies: root's default, as the console runs without ``--repo``."""


def restore_facts(dest: str) -> RestoreFacts:
    """Return what the scene's machine says of ``dest`` as a restore destination.

    Recorded, never read: the devices, mounts and labels above; no process holds a
    device node open (postgres and the journal write files on /srv and /, which the
    guards do not ask about), no swap is active, and the repository and ``/`` lie on
    the devices their mounts name. The real judgement turns these into findings.
    """
    dev = find_device(dest)
    if dev is None:
        missing = Unresolved("TARGET_MISSING", f"{dest}: no such file or directory")
        return RestoreFacts(dest, DEVICES, missing, REPOSITORY)
    disk = next((d for d in DEVICES if dev.extent and d.path == dev.extent.container), None)
    return RestoreFacts(
        dest,
        DEVICES,
        dev,
        REPOSITORY,
        block_node=dest == dev.path,
        repository_device=_device_holding(REPOSITORY),
        root_device=_device_holding("/"),
        own_label=dev.label,  # the scan read the same first sectors
        container_label=disk.label if disk else None,
    )


def _device_holding(path: str) -> str | None:
    """Return the kernel name of the scene's device whose mounted file system holds ``path``."""
    mount = mount_containing(path, _MOUNTS)
    dev = DEVICES.by_number(mount.major, mount.minor) if mount else None
    return dev.name if dev else None


# --- the job queue ---------------------------------------------------------------------------

FRIDAY = datetime(2025, 3, 14, 21, 0, 0, tzinfo=UTC).timestamp()
"""When the running backup was queued: Friday's image of /srv."""

SAMPLES = 240
"""Two minutes of a running job at the sampler's two a second."""


def throughput(t: float) -> tuple[float, float, float]:
    """Return the job's rate and its disk's read and write rates (bytes/s) at ``t`` seconds.

    A plausible SSD read: a ramp while read-ahead fills, a slow wobble, and at 70-80 s
    the database's checkpoint competing for the disk (the job slows, the disk's reads
    stay high and its writes jump), so the graph's ``r`` and ``w`` marks have a reason.
    """
    ramp = min(1.0, t / 6.0)
    wobble = 1 + 0.06 * math.sin(t / 3.1) + 0.03 * math.sin(t / 0.9)
    checkpoint = math.exp(-(((t - 74) / 6) ** 2))
    rate = 188 * MiB * ramp * wobble * (1 - 0.55 * checkpoint)
    dev_read = rate + 5 * MiB * (1 + math.sin(t / 5)) + 70 * MiB * checkpoint
    dev_write = 3 * MiB * (1 + 0.5 * math.sin(t / 7)) + 85 * MiB * checkpoint
    return rate, dev_read, dev_write


def increment_throughput(t: float) -> tuple[float, float, float]:
    """Return the rates (bytes/s) of the finished increment of / at ``t`` seconds.

    Six seconds of scanning the file tree (nothing sent, the disk read in small
    metadata reads), then the changed files read at a few dozen MiB/s.
    """
    if t < 6.4:
        return 0.0, 9 * MiB * (1 + 0.2 * math.sin(t)), 0.4 * MiB
    rate = 24 * MiB * (1 + 0.3 * math.sin(t / 2.3) + 0.1 * math.sin(t * 1.7))
    return rate, rate + 2 * MiB, 1.5 * MiB * (1 + math.sin(t / 4))


def _samples(
    rates: Callable[[float], tuple[float, float, float]], count: int
) -> tuple[Sample, ...]:
    return tuple(Sample(t, *rates(t)) for t in (SAMPLE_EVERY * (i + 1) for i in range(count)))


def _running_job() -> JobView:
    samples = _samples(throughput, SAMPLES)
    done = int(sum(s.rate * SAMPLE_EVERY for s in samples))
    total = int(done / 0.62)
    rate = sum(s.rate for s in samples[-6:]) / 6  # the meter's three-second window
    zero, dedup = done * 4 // 100, done * 31 // 100
    new = done - zero - dedup
    chunk = 4 * MiB
    counters = {
        "bytes_volume": 48 * GiB,
        "bytes_read": done,
        "bytes_skipped": 48 * GiB - total,
        "bytes_zero": zero,
        "bytes_new": new,
        "bytes_stored_new": int(new / 2.74),
        "bytes_dedup": dedup,
        "chunks": done // chunk,
        "chunks_new": new // chunk,
        "chunks_dedup": dedup // chunk,
        "chunks_zero": zero // chunk,
    }
    elapsed = samples[-1].t
    return JobView(
        id="3",
        spec=BackupSpec("/srv", imagetype="snapshot"),
        state=JobState.RUNNING,
        submitted=FRIDAY,
        started=FRIDAY + 0.4,
        device="/dev/sda1",
        progress=Progress("reading", done, total, rate, (total - done) / rate, elapsed, counters),
        samples=samples,
        log=(
            "21:00:00 queued: image /srv (snapshot)",
            "21:00:00 started",
            "21:00:01 reading",
        ),
        log_total=3,
    )


def _finished_increment() -> JobView:
    report = {
        "increment_id": "20250314T201502.118204Z-d93a61",
        "target": "/",
        "device": "/dev/md0",
        "mount_point": "/",
        "base_image": "20250309T030012Z-51c0de",
        "previous": "20250313T201501.904417Z-77ab20",
        "files_scanned": 214_377,
        "files_new": 389,
        "files_changed": 1_204,
        "files_metadata_only": 57,
        "files_deleted": 212,
        "files_unchanged": 212_727,
        "files_skipped": 0,
        "files_read": 1_593,
        "bytes_read": 731 * MiB,
        "bytes_new": 402 * MiB,
        "bytes_sent": 139 * MiB,
        "bytes_dedup": 329 * MiB,
        "chunks_new": 517,
        "scan_seconds": 6.412,
        "duration": 41.873,
        "findings": [],
        "return_code": 0,
    }
    return JobView(
        id="1",
        spec=BackupSpec("/", mode="incremental"),
        state=JobState.DONE,
        submitted=FRIDAY - 2700.0,
        started=FRIDAY - 2699.8,
        ended=FRIDAY - 2657.9,
        device="/dev/md0",
        samples=_samples(increment_throughput, 83),
        report=report,
        return_code=0,
        log=(
            "20:15:00 queued: increment /",
            "20:15:00 started",
            "20:15:00 scanning",
            "20:15:07 reading",
            "20:15:39 committing",
            "20:15:42 done (return code 0)",
        ),
        log_total=6,
    )


def _failed_image() -> JobView:
    error = (
        "cannot remount /mnt/scratch read-only for a static image: mount: /mnt/scratch: "
        "mount point is busy.; use --imagetype snapshot or dynamic"
    )
    return JobView(
        id="2",
        spec=BackupSpec("/mnt/scratch", imagetype="static"),
        state=JobState.FAILED,
        submitted=FRIDAY - 1500.0,
        started=FRIDAY - 1499.9,
        ended=FRIDAY - 1499.2,
        device="/dev/loop0",
        return_code=12,
        error=error,
        log=(
            "20:35:00 queued: image /mnt/scratch (static)",
            "20:35:00 started",
            f"20:35:00 failed (return code 12): {error}",
        ),
        log_total=3,
    )


class SceneJobs(Jobs):
    """The job queue's interface over fixed jobs: one running, one done, one failed.

    Nothing runs: a submitted job stays queued (so a dialog driven by the pilot ends
    in a visible row), and a cancelled one is marked as the real queue marks it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views = {v.id: v for v in (_finished_increment(), _failed_image(), _running_job())}
        self._listeners = Listeners()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(job_id)`` on every change; return the function that stops it."""
        return self._listeners.add(listener)

    def submit(self, spec: JobSpec) -> str:
        """Queue ``spec`` (it never starts); return its id."""
        dev = find_device(spec.volume)
        with self._lock:
            job_id = str(len(self._views) + 1)
            self._views[job_id] = JobView(
                job_id,
                spec,
                JobState.QUEUED,
                submitted=FRIDAY + 125.0,
                device=dev.path if dev else None,
                log=(f"21:02:05 queued: {spec.title}",),
                log_total=1,
            )
        self._notify(job_id)
        return job_id

    def cancel(self, job_id: str) -> bool:
        """Mark ``job_id`` cancelled (queued) or cancelling (running); False once finished."""
        with self._lock:
            view = self._views.get(job_id)
            if view is None or view.state.finished:
                return False
            if view.state is JobState.QUEUED:
                view = replace(
                    view,
                    state=JobState.CANCELLED,
                    ended=FRIDAY + 126.0,
                    return_code=int(F.ReturnCode.FAILED),
                    error="cancelled before it started",
                    log=(
                        *view.log,
                        "21:02:06 cancelled (return code 12): cancelled before it started",
                    ),
                    log_total=view.log_total + 1,
                )
            else:
                view = replace(
                    view,
                    state=JobState.CANCELLING,
                    log=(*view.log, "21:02:06 cancel requested"),
                    log_total=view.log_total + 1,
                )
            self._views[job_id] = view
        self._notify(job_id)
        return True

    def view(self, job_id: str) -> JobView:
        """Return job ``job_id`` (KeyError when unknown)."""
        with self._lock:
            return self._views[job_id]

    def views(self) -> list[JobView]:
        """Return every job, oldest first."""
        with self._lock:
            return list(self._views.values())

    def rerun(self, job_id: str) -> str:
        """Queue job ``job_id``'s spec again; return the new job's id."""
        return self.submit(self.view(job_id).spec)

    def close(self) -> None:
        """Nothing runs, so nothing to stop."""

    def _notify(self, job_id: str) -> None:
        self._listeners.notify(job_id)


class SceneServices(CoreServices):
    """Core's gateway, answered from the recorded scene; nothing touches this machine."""

    def __init__(self) -> None:
        # CoreServices.__init__ would start a real JobQueue (and its sampler thread).
        self.repo_location = None
        self.jobs = SceneJobs()

    def scan(self) -> DeviceTree:
        """Return the scene's devices."""
        return DEVICES

    def devices_signature(self) -> object:
        """Return a fingerprint that never changes: the scene's devices do not come and go."""
        return "scene"

    def check(self, target: str) -> VolumeCheck:
        """Return the recorded findings for ``target``."""
        dev = find_device(target)
        if dev is None:
            return VolumeCheck(
                target,
                None,
                (F.blocker("TARGET_MISSING", f"{target}: no such file or directory"),),
            )
        return VolumeCheck(
            target, Volume(target, dev, _MOUNT.get(target)), CHECKS.get(dev.path, ())
        )

    def history(self, target: str) -> VolumeHistory:
        """Return ``target``'s images and increments from the recorded repository."""
        names = target_names(target, find_device(target))
        return VolumeHistory(
            target,
            tuple(e for e in CATALOG.images if volume_matches(e.manifest.volume, names)),
            tuple(m for m in CATALOG.increments if volume_matches(m.volume, names)),
        )

    def catalog(self) -> Catalog:
        """Return every recorded image and increment, and the scene's devices."""
        return CATALOG

    def plan_restore(self, entry: CatalogEntry, dest: str, *, preserve_label: bool) -> RestorePlan:
        """Return the guards' findings for restoring ``entry`` onto the scene's ``dest``."""
        return judge_restore(entry.manifest, restore_facts(dest), preserve_label=preserve_label)

    def repository_status(self) -> RepoStatus:
        """Return the scene's repository: the embedded default, answering."""
        return RepoStatus(f"repo {ROOT_DEFAULT}", True)

    def close(self) -> None:
        """Nothing to close."""


# --- driving the console into the pictured states -------------------------------------------


async def settle(pilot: Pilot[Any]) -> None:
    """Wait until every worker finished and what it posted was handled, then paint the jobs.

    A worker's message can start another worker (a scan highlights a device, which
    starts its check), so this waits until a round starts nothing new. The job table
    is painted now rather than by its five-a-second timer, which no test should wait for.
    """
    app = pilot.app
    for _ in range(10):
        await app.workers.wait_for_complete()
        await pilot.pause()
        if all(w.is_finished for w in app.workers):
            break
    app.paint_jobs()  # type: ignore[attr-defined]
    # A table measures its columns when idle and repaints after that: two rounds.
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


async def highlight_device(pilot: Pilot[Any], name: str) -> None:
    """Move the device tree's cursor down to ``name`` with ``j``, as a user would."""
    tree = pilot.app.query_one("#devices", DeviceTreeView)
    for _ in range(len(DEVICES.devices) + 2):
        if tree.cursor_node is not None and tree.cursor_node.data == name:
            break
        await pilot.press("j")  # one line down
    assert tree.cursor_node is not None and tree.cursor_node.data == name, name
    await settle(pilot)  # the volume's findings and history load in workers


async def walk_to_running_job(pilot: Pilot[Any]) -> None:
    """Select the running backup in the job table, so its graph and live report show."""
    await settle(pilot)
    await pilot.press("tab")  # to the job table: the running backup is on top, highlighted
    await settle(pilot)


async def walk_to_history(pilot: Pilot[Any]) -> None:
    """Highlight /dev/sda1 (/srv): the Details tab shows its findings and backup timeline."""
    await settle(pilot)
    await highlight_device(pilot, "sda1")
    await pilot.press("1")  # the Details tab, whatever a job row did to the right pane
    await settle(pilot)


async def walk_to_backup_dialog(pilot: Pilot[Any]) -> None:
    """Open the backup dialog for /dev/sda1, with its findings checked."""
    await settle(pilot)
    await highlight_device(pilot, "sda1")
    await pilot.press("b")  # back up the highlighted volume
    await settle(pilot)  # the dialog checks the volume in a worker


async def walk_to_restore_findings(pilot: Pilot[Any], target: str = "/dev/sda2") -> None:
    """Restore Thursday's state of /srv onto ``target``, up to the guards' findings, read.

    /dev/sda2 starts at sector 0 of its disk: the guards warn that the restore
    overwrites the disk's GPT. /dev/sda1, the original, is mounted: a blocker.
    """
    await settle(pilot)
    await highlight_device(pilot, "sda1")
    await pilot.press("R")  # the restore wizard for /srv
    await settle(pilot)  # the wizard reads the catalog in a worker
    await pilot.press("enter")  # volume: /srv (the wizard highlights the one it was opened on)
    await pilot.press("enter")  # version: the newest point, Thursday's increment on Monday's image
    listing = pilot.app.screen.query_one("#target", OptionList)
    for _ in range(listing.option_count):
        if listing.get_option_at_index(listing.highlighted or 0).id == target:
            break
        await pilot.press("down")  # target: down the list (past refused ones) to ``target``
    assert listing.get_option_at_index(listing.highlighted or 0).id == target, target
    await pilot.press("enter")  # target chosen
    await pilot.press("tab", "tab", "tab")  # options: to "read back and verify"
    await pilot.press("space")  # options: verify after writing
    await pilot.press("enter")  # options done: the guards run in a worker
    await settle(pilot)
    await pilot.press("end")  # findings: read them to their end, which opens the way on
    await pilot.wait_for_scheduled_animations()
    await settle(pilot)


async def walk_to_restore_confirmation(pilot: Pilot[Any]) -> None:
    """Restore Thursday's state of /srv onto /dev/sda2, up to the typed confirmation."""
    await walk_to_restore_findings(pilot, "/dev/sda2")
    await pilot.press("enter")  # findings read: on to the confirmation
    await settle(pilot)
    # The confirmation box has focus, and its cursor would blink on a timer.
    pilot.app.screen.query_one("#confirm-input", Input).cursor_blink = False
    await pilot.pause()


async def walk_to_blocked_restore(pilot: Pilot[Any]) -> None:
    """Restore /srv onto its own device, /dev/sda1, still mounted: the guards' blocker."""
    await walk_to_restore_findings(pilot, "/dev/sda1")


async def walk_to_help(pilot: Pilot[Any]) -> None:
    """Open the help overlay over the main screen with the running job selected."""
    await walk_to_running_job(pilot)
    await pilot.press("question_mark")  # help
    await settle(pilot)
