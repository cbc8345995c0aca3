"""A restore that did not finish is said so: check-volume and the next restore name it.

A restore cannot be undone, so one killed half-way (SIGKILL in a real child process,
at its first progress report after data was written) or stopped by a failure leaves a
device that looks like any other. Its mark — image and time — is reported by
``check-volume`` and by the next restore's plan until a restore to the device finishes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from cliutil import ROOT, blockvault
from test_agent import raw_volume

from core import unfinished

pytestmark = pytest.mark.loop

MIB = 1 << 20
KILLED_RESTORE = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
from core.engine.restore import restore_image
from core.repo.repository import Repository

repo = Repository.open(sys.argv[1], create=False)
manifest = repo.image(sys.argv[2])

def progress(p):
    if p.done > 0:  # data is on the device: die as SIGKILL or a power cut would
        os.kill(os.getpid(), signal.SIGKILL)

restore_image(manifest, sys.argv[3], repo, confirm=sys.argv[3], progress=progress, workers=1)
"""


def findings(res) -> dict[str, str]:
    return {f["code"]: f["message"] for f in res.json()["findings"]}


def kill_a_restore(repo: str, image_id: str, dest: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", KILLED_RESTORE.format(root=str(ROOT)), repo, image_id, dest],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -9, child.stderr  # killed in the write, not refused


def test_a_killed_restore_is_named_by_check_volume_and_the_next_restore_until_one_finishes(
    loopkit, tmp_path
):
    source = raw_volume(loopkit, 64)
    repo = str(tmp_path / "repo")
    image = blockvault("backup", "image", source.device, "--repo", repo, "--json")
    assert image.rc == 0, image.err
    image_id = image.json()["image_id"]
    dest = loopkit.attach(loopkit.image("64M"))
    before = blockvault("check-volume", dest, "--json")
    assert "RESTORE_UNFINISHED" not in findings(before)

    kill_a_restore(repo, image_id, dest)

    check = blockvault("check-volume", dest, "--json")
    said = findings(check)["RESTORE_UNFINISHED"]
    assert f"a restore to {dest} did not finish" in said and f"image {image_id}" in said
    assert check.rc == 8
    # The next restore says so in its plan; once it finishes, the mark is gone.
    again = blockvault("restore", "image", source.device, dest, "--repo", repo, "--confirm", dest)
    assert again.rc == 0, again.err
    assert "RESTORE_UNFINISHED" in again.out and f"image {image_id}" in again.out
    assert "RESTORE_UNFINISHED" not in findings(blockvault("check-volume", dest, "--json"))
    assert [m for m in unfinished.marks() if m.image_id == image_id] == []  # not others


def test_a_restore_stopped_by_a_damaged_chunk_leaves_the_mark(loopkit, tmp_path):
    """Not only a kill: a restore that failed after writing leaves the device partly written."""
    source = raw_volume(loopkit, 16)
    repo = tmp_path / "repo"
    image = blockvault("backup", "image", source.device, "--repo", str(repo), "--json")
    assert image.rc == 0, image.err
    # The last chunk file, flipped: found only when it is read, after earlier writes.
    chunks = sorted((repo / "chunks").rglob("*"), key=lambda p: p.stat().st_mtime_ns)
    victim = [p for p in chunks if p.is_file()][-1]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    dest = loopkit.attach(loopkit.image("16M"))
    res = blockvault(
        "restore", "image", source.device, dest, "--repo", str(repo), "--confirm", dest
    )
    assert res.rc == 12 and "damaged" in res.err
    check = blockvault("check-volume", dest, "--json")
    assert image.json()["image_id"] in findings(check)["RESTORE_UNFINISHED"]


def test_another_file_behind_the_same_loop_node_is_not_the_device_of_the_mark(loopkit, tmp_path):
    """A mark is about a device, not a node: a loop device re-attached to another file is clean."""
    source = raw_volume(loopkit, 32)
    repo = str(tmp_path / "repo")
    image = blockvault("backup", "image", source.device, "--repo", repo, "--json")
    assert image.rc == 0, image.err
    dest = loopkit.attach(loopkit.image("32M"))
    kill_a_restore(repo, image.json()["image_id"], dest)
    assert "RESTORE_UNFINISHED" in findings(blockvault("check-volume", dest, "--json"))

    loopkit.detach(dest)
    other = loopkit.attach(loopkit.image("32M"))  # often the same node, always another file

    assert "RESTORE_UNFINISHED" not in findings(blockvault("check-volume", other, "--json"))
