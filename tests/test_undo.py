"""Undo records: a change whose process died is put right by the next backup or agent."""

from __future__ import annotations

import os
import subprocess

import pytest

from core import undo
from core.snapshots import recover_interrupted

pytestmark = pytest.mark.loop


def remount_ro_in_a_process_that_dies(mount_point: str, device: str) -> None:
    """Record and make the change in a child that then exits without undoing it (as SIGKILL)."""
    pid = os.fork()
    if pid == 0:  # the child: a backup that is killed after its remount
        try:
            undo.record("remount-rw", mount_point, device)
            subprocess.run(["mount", "-o", "remount,ro", mount_point], check=True)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def test_a_dead_processs_remount_is_undone_and_its_record_forgotten(loopkit):
    """The volume is writable again, the finding says so, and no record is left."""
    vol = loopkit.volume("32M", "ext4")
    remount_ro_in_a_process_that_dies(str(vol.mount_point), vol.device)
    with pytest.raises(OSError):
        (vol.mount_point / "x").write_text("read-only now")

    found = [f for f in recover_interrupted() if f.details.get("target") == str(vol.mount_point)]

    assert [f.code for f in found] == ["UNDO_RECOVERED"]
    assert str(vol.mount_point) in found[0].message
    (vol.mount_point / "x").write_text("writable again")
    assert not [r for r in undo.records() if r.target == str(vol.mount_point)]


def test_a_live_processs_record_is_left_alone(loopkit):
    """A backup in progress (its process alive) undoes its own changes: nothing is touched."""
    vol = loopkit.volume("32M", "ext4")
    rec = undo.record("remount-rw", str(vol.mount_point), vol.device)
    subprocess.run(["mount", "-o", "remount,ro", str(vol.mount_point)], check=True)
    try:
        assert not [f for f in recover_interrupted() if f.details.get("target") == rec.target]
        with pytest.raises(OSError):
            (vol.mount_point / "x").write_text("still read-only: its backup runs")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(vol.mount_point)], check=True)
        undo.forget(rec)


def test_a_record_that_no_longer_applies_is_just_forgotten(loopkit):
    """The volume was remounted rw by hand meanwhile: nothing to do, nothing reported."""
    vol = loopkit.volume("32M", "ext4")
    remount_ro_in_a_process_that_dies(str(vol.mount_point), vol.device)
    subprocess.run(["mount", "-o", "remount,rw", str(vol.mount_point)], check=True)
    assert recover_interrupted() == []
    assert not [r for r in undo.records() if r.target == str(vol.mount_point)]


def test_a_record_of_a_kind_this_version_does_not_know_is_kept_and_reported():
    """A newer blockvault's record is never forgotten unread: its change may still be there."""
    pid = os.fork()
    if pid == 0:  # a process of a newer version that records a change and dies
        try:
            undo.record("detach-nbd", "/dev/nbd7", "/dev/nbd7")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    [rec] = [r for r in undo.records() if r.kind == "detach-nbd"]
    try:
        [found] = [f for f in recover_interrupted() if f.details.get("target") == "/dev/nbd7"]
        assert found.code == "UNDO_PENDING" and "'detach-nbd'" in found.message
        assert [r.name for r in undo.records() if r.kind == "detach-nbd"] == [rec.name]
    finally:
        undo.forget(rec)
