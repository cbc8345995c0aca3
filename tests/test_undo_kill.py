"""SIGKILL at every step of making a change: the next job or agent start undoes what was made.

A real child process runs the core function that makes the change (a reflink clone of a
loop device's backing file, a restore's private replay mount) under an audit hook that
SIGKILLs it at its Nth file-system step (``open`` of a path of interest, ``rename``,
``mkdir``, an ``ioctl``, a ``mount``), for every N up to the moment the change is in
place, and once more inside it. After each kill the recovery runs as the next backup,
restore or agent start runs it; then no clone, no mount, no freeze and no undo record
(complete or half-written) may be left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliutil import ROOT, blockvault
from loopkit import MKFS, LoopKit, run

from core import undo
from core.agent.client import AgentClient, start_agent
from core.engine.restore import plan_restore
from core.increments.restore import MOUNT_BASE, recover_replay_mounts
from core.jobs import JobState, RestoreSpec
from core.mounts import read_mounts
from core.repo.repository import Repository
from core.snapshots import SNAPSHOT_NAME_PREFIX, recover_interrupted

pytestmark = pytest.mark.loop

MIB = 1 << 20
KILLER = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
KILL_AT = int(os.environ["BV_KILL_AT"])
PLACES = tuple(os.environ["BV_PLACES"].split(":"))
STEPS = {{"open", "os.rename", "os.mkdir", "os.rmdir", "os.remove", "fcntl.ioctl",
          "subprocess.Popen"}}
counting = False
seen = 0

def step(event, args):
    global seen
    if not counting or event not in STEPS:
        return
    if event == "open" and not (isinstance(args[0], str) and args[0].startswith(PLACES)):
        return  # a module, /proc, /sys: not a step of the change
    seen += 1
    if seen == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(step)
"""
"""Prepended to a child's script: it counts its steps while ``counting`` and dies at one."""

REFLINK_CHILD = r"""
from core.devices import scan
from core.snapshots import ImageType, consistent_view
from core.targets import resolve
volume = resolve(sys.argv[1], scan())
counting = True
with consistent_view(volume, ImageType.SNAPSHOT) as view:
    counting = False
    print("inside", seen, view.path, flush=True)
    sys.stdin.read()
"""

REPLAY_CHILD = r"""
from core.increments.restore import private_mount
counting = True
with private_mount(sys.argv[1], "ext4") as point:
    counting = False
    print("inside", seen, point, flush=True)
    sys.stdin.read()
"""


def run_child(script: str, arg: str, kill_at: int, places: list[str]) -> tuple[int, str]:
    """Run ``script`` until its step ``kill_at`` kills it, or until it is inside (then kill it).

    Returns how many steps it took to get inside (0 when it was killed before) and what
    it printed.
    """
    env = {**os.environ, "BV_KILL_AT": str(kill_at), "BV_PLACES": ":".join(places)}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLER.format(root=ROOT) + script, arg],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.startswith("inside"):
            child.kill()  # killed inside the view: the change is made and in use
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(60)
    if not line.startswith("inside"):
        assert child.returncode == -9, f"step {kill_at}: the child failed: rc {child.returncode}"
        return 0, ""
    return int(line.split()[1]), line


def records_of(book: str = "", *, about: tuple[str, ...] = ()) -> list[str]:
    """The files of ``book`` that record a change to a path below ``about``, or are torn.

    Other tests' records may be there too (one whose undo failed on purpose, its
    process still this one): only those of this test's paths count.
    """
    folder = undo.undo_dir(book)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    mine = []
    for path in files:
        try:
            target = json.loads(path.read_text())["target"]
        except (OSError, ValueError, KeyError, TypeError):
            mine.append(path.name)  # torn: nobody's record
            continue
        if target.startswith(about) or path.suffix == ".tmp":
            mine.append(path.name)
    return mine


def write_completes(mount_point: Path, timeout: float = 20) -> bool:
    """Write and fsync a file in a child process; False when it blocks (a frozen fs)."""
    code = "import os,sys\nf=open(sys.argv[1],'w'); f.write('x'); f.flush(); os.fsync(f.fileno())"
    p = subprocess.Popen([sys.executable, "-c", code, str(mount_point / "probe")])
    try:
        return p.wait(timeout) == 0
    except subprocess.TimeoutExpired:
        subprocess.run(["fsfreeze", "-u", str(mount_point)], capture_output=True, check=False)
        p.kill()
        p.wait()
        return False


# --- the reflink clone of a snapshot backup ----------------------------------------------------


def reflink_volume(kit: LoopKit) -> tuple[str, Path, Path]:
    """A mounted ext4 loop device whose backing file lies on a reflink XFS; its dirs."""
    host = kit.volume("320M", None)
    run(*MKFS["xfs"], host.device)
    host_mp = kit.mount(host.device)
    backing = host_mp / "volume.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MIB)
    dev = kit.attach(backing)
    kit.mkfs(dev, "ext4")
    return dev, host_mp, kit.mount(dev)


def clones_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if SNAPSHOT_NAME_PREFIX in p.name)


def test_a_snapshot_backup_killed_at_any_step_leaves_no_clone_once_recovered(loopkit):
    """The clone's undo record is complete before the clone exists (it once came after)."""
    dev, clone_dir, mount_point = reflink_volume(loopkit)
    places = [str(undo.undo_dir()), str(clone_dir), str(mount_point)]
    steps, line = run_child(REFLINK_CHILD, dev, 0, places)  # a dry run counts the steps
    assert steps >= 6 and SNAPSHOT_NAME_PREFIX in line, line
    assert recover_interrupted() != []  # the dry run was killed inside: its clone is removed
    assert clones_in(clone_dir) == []

    left = {}
    for kill_at in range(1, steps + 1):
        run_child(REFLINK_CHILD, dev, kill_at, places)
        try:
            recover_interrupted()  # as the next backup (engine/backup.py) and agent start do
            state = {
                "clones": clones_in(clone_dir),
                "records": records_of(about=(str(clone_dir), str(mount_point))),
                "frozen": not write_completes(mount_point),
            }
        finally:
            subprocess.run(["fsfreeze", "-u", str(mount_point)], capture_output=True, check=False)
            for name in clones_in(clone_dir):  # the safety net: never leak a clone
                (clone_dir / name).unlink()
        if state != {"clones": [], "records": [], "frozen": False}:
            left[kill_at] = state
    assert left == {}, f"killed at these steps of {steps}, recovery left: {left}"


def test_an_empty_half_written_record_of_a_dead_process_is_removed(tmp_path):
    """Killed between creating its record's file and writing it: nothing else was made."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(child.stdout)
    folder = undo.undo_dir()
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / f"0123456789abcdef.{pid}-12345.tmp"
    empty.touch()
    mine = folder / f"fedcba9876543210.{os.getpid()}-{undo.start_time(os.getpid())}.tmp"
    mine.touch()  # a live writer's, about to be written: left alone
    try:
        assert [
            r for r in undo.records() if r.name in ("0123456789abcdef", "fedcba9876543210")
        ] == []
        assert not empty.exists()
        assert mine.exists()
    finally:
        empty.unlink(missing_ok=True)
        mine.unlink(missing_ok=True)


def test_a_whole_record_left_as_a_tmp_file_by_a_dead_process_is_recovered(tmp_path):
    """As an older blockvault left one: the clone made, its record never renamed into place."""
    clone = tmp_path / f".volume.img.{SNAPSHOT_NAME_PREFIX}deadbeef"
    clone.write_bytes(b"clone")
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(child.stdout)
    doc = {
        "kind": "unlink",
        "target": str(clone),
        "device": "/dev/loop99",
        "pid": pid,
        "pid_start": "1",
        "created": 0.0,
        "name": "00112233aabbccdd",
    }
    folder = undo.undo_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "00112233aabbccdd.tmp").write_text(json.dumps(doc))  # the old name: NAME.tmp

    found = [f for f in recover_interrupted() if f.details.get("target") == str(clone)]

    assert [f.code for f in found] == ["UNDO_RECOVERED"]
    assert not clone.exists()
    assert not list(folder.glob("00112233aabbccdd*"))


# --- the replay mount of an incremental restore ---------------------------------------------------


def mounts_of(device: str) -> list[str]:
    """Where ``device`` is mounted now (findmnt, as a person would look)."""
    p = subprocess.run(
        ["findmnt", "-rn", "-o", "TARGET", "-S", device],
        capture_output=True,
        text=True,
        check=False,
    )
    return p.stdout.split()


def replay_dirs() -> set[str]:
    base = Path(MOUNT_BASE)
    return {str(p) for p in base.glob("replay-*")} if base.is_dir() else set()


@pytest.fixture
def replay_net() -> Iterator[list[str]]:
    """Devices whose mounts below /run/blockvault a test may leave: always unmounted after."""
    devices: list[str] = []
    before = replay_dirs()
    yield devices
    for dev in devices:
        for point in mounts_of(dev):
            if point.startswith(MOUNT_BASE + "/replay-"):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    for point in replay_dirs() - before:
        if not any(m.mount_point == point for m in read_mounts()):
            os.rmdir(point)


def test_a_restore_killed_at_any_step_of_its_replay_mount_leaves_nothing_mounted(
    loopkit, replay_net
):
    """The mount's undo record is complete before the mount point and the mount exist."""
    vol = loopkit.volume("32M", "ext4", mount=False)
    replay_net.append(vol.device)
    places = [str(undo.undo_dir(undo.REPLAY_BOOK)), MOUNT_BASE]
    before = replay_dirs()
    steps, line = run_child(REPLAY_CHILD, vol.device, 0, places)
    point = line.split()[2]
    assert steps >= 3 and mounts_of(vol.device) == [point], line

    found = recover_replay_mounts()  # as the next restore and the agent's start do

    assert [(f.code, f.details["target"]) for f in found] == [("UNDO_RECOVERED", point)]
    assert vol.device in found[0].message and "only partly replayed" in found[0].message
    assert mounts_of(vol.device) == [] and replay_dirs() == before
    assert records_of(undo.REPLAY_BOOK, about=(MOUNT_BASE,)) == []

    left = {}
    for kill_at in range(1, steps + 1):
        run_child(REPLAY_CHILD, vol.device, kill_at, places)
        recover_replay_mounts()
        state = {
            "mounts": mounts_of(vol.device),
            "dirs": sorted(replay_dirs() - before),
            "records": records_of(undo.REPLAY_BOOK, about=(MOUNT_BASE,)),
        }
        if state != {"mounts": [], "dirs": [], "records": []}:
            left[kill_at] = state
            for point in state["mounts"]:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    assert left == {}, f"killed at these steps of {steps}, recovery left: {left}"


def test_a_live_restores_replay_mount_is_left_alone(loopkit, replay_net):
    from core.increments.restore import private_mount

    vol = loopkit.volume("32M", "ext4", mount=False)
    replay_net.append(vol.device)
    with private_mount(vol.device, "ext4") as point:
        assert recover_replay_mounts() == []
        assert mounts_of(vol.device) == [point]
    assert mounts_of(vol.device) == []
    assert records_of(undo.REPLAY_BOOK, about=(MOUNT_BASE,)) == []


AGENT_KILLED_IN_REPLAY = r"""
import os, signal, sys
def step(event, args):
    # The replay's first look at the mounted volume: the mount is made, the replay begins.
    if event == "open" and isinstance(args[0], str) and args[0].startswith(
        "/run/blockvault/replay-"
    ):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(step)
from core.agent.server import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_an_agent_killed_while_it_replays_unmounts_the_volume_when_it_starts_again(
    loopkit, replay_net, tmp_path
):
    source = loopkit.volume("32M", "ext4")
    loopkit.fill(source, files=8)
    repo = tmp_path / "repo"
    image = blockvault("backup", "image", str(source.mount_point), "--repo", str(repo), "--json")
    assert image.rc == 0, image.err
    (source.mount_point / "new.txt").write_text("after the image")
    inc = blockvault(
        "backup",
        "image",
        str(source.mount_point),
        "--mode",
        "incremental",
        "--repo",
        str(repo),
        "--json",
    )
    assert inc.rc == 0, inc.err
    dest = loopkit.attach(loopkit.image("32M"))
    replay_net.append(dest)
    r = Repository.open(str(repo), create=False)
    plan = plan_restore(r.image(image.json()["image_id"]), dest, r)
    spec = RestoreSpec(
        image.json()["image_id"],
        dest,
        dest,
        expected=plan.identity,
        increment_id=inc.json()["increment_id"],
    )

    sock, db = tmp_path / "run" / "agent.sock", tmp_path / "db" / "jobs.db"
    killed = start_agent(
        str(sock),
        repo_location=str(repo),
        db_path=str(db),
        timeout=15,
        command=[sys.executable, "-c", AGENT_KILLED_IN_REPLAY],
    )
    assert killed is not None
    try:
        with AgentClient(str(sock)) as client:
            job = client.submit(spec)
            assert killed.wait(60) == -9  # SIGKILLed in the replay
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait(60)
    stale = mounts_of(dest)
    assert len(stale) == 1 and stale[0].startswith(MOUNT_BASE + "/replay-"), stale

    again = start_agent(
        str(sock),
        repo_location=str(repo),
        db_path=str(db),
        timeout=15,
        command=[sys.executable, "-m", "core.agent.server"],
    )
    assert again is not None
    try:
        assert mounts_of(dest) == []  # unmounted before the agent answered
        assert not Path(stale[0]).exists()
        assert records_of(undo.REPLAY_BOOK, about=(MOUNT_BASE,)) == []
        with AgentClient(str(sock)) as client:
            assert client.view(job).state is JobState.INTERRUPTED
        log = (db.parent / "agent.log").read_text()
        assert f"UNDO_RECOVERED: unmounted {dest} from {stale[0]}" in log
    finally:
        again.terminate()
        again.wait(60)


def test_the_next_restore_of_a_volume_left_mounted_by_a_killed_replay_unmounts_it_first(
    loopkit, replay_net, tmp_path
):
    """Not refused as mounted: the stale replay mount is undone, and the report says so."""
    from core.increments.restore import restore_with_increments

    source = loopkit.volume("32M", "ext4")
    loopkit.fill(source, files=4)
    repo = tmp_path / "repo"
    image = blockvault("backup", "image", str(source.mount_point), "--repo", str(repo), "--json")
    assert image.rc == 0, image.err
    dest = loopkit.attach(loopkit.image("32M"))
    replay_net.append(dest)
    r = Repository.open(str(repo), create=False)
    manifest = r.image(image.json()["image_id"])
    restore_with_increments(manifest, None, dest, r, confirm=dest, delete=False)
    _, line = run_child(REPLAY_CHILD, dest, 0, [MOUNT_BASE])  # killed inside its replay
    stale = line.split()[2]
    assert mounts_of(dest) == [stale]

    again = restore_with_increments(manifest, None, dest, r, confirm=dest, delete=False)

    assert mounts_of(dest) == [] and not Path(stale).exists()
    recovered = [f for f in again.image.findings if f.code == "UNDO_RECOVERED"]
    assert [f.details["target"] for f in recovered] == [stale]
    assert again.return_code <= 8
