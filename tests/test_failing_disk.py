"""A failing disk, source or target: one line naming the device, the bytes, the state, the fix.

The failing disk is a fake, because this machine has no device-mapper (no dm-error):
a real loop device over a file of a FUSE file system (tests/fusekit.py) whose chosen
byte ranges answer EIO, as a bad disk's sectors do. Everything above the loop device
is the real thing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cliutil import blockvault
from fusekit import failing_file
from loopkit import run

pytestmark = pytest.mark.loop
MIB = 1 << 20


@pytest.fixture
def failing(tmp_path):
    """``(loop device over a failing 12 MiB file, set_bad(ranges))``."""
    backing = tmp_path / "backing.img"
    backing.write_bytes(os.urandom(12 * MIB))
    with failing_file(backing, tmp_path) as (path, control):

        def set_bad(*ranges: tuple[int, int]) -> None:
            control.write_text(json.dumps([list(r) for r in ranges]))

        # Attached here, not by the kit: it must be detached before the FUSE file goes.
        dev = run("losetup", "--find", "--show", str(path)).strip()
        try:
            yield dev, set_bad
        finally:
            set_bad()
            run("losetup", "--detach", dev)


def bv(repo: Path, *args: str):
    return blockvault(*args, "--repo", str(repo), "--no-agent", timeout=120)


@pytest.mark.parametrize("at", [4 * MIB, 5 * MIB + 4096, 12 * MIB - 4096])
def test_a_source_that_fails_to_read_fails_the_backup_and_records_nothing(failing, tmp_path, at):
    dev, set_bad = failing
    repo = tmp_path / "repo"
    assert blockvault("repo", "init", "--repo", str(repo)).rc == 0
    set_bad((at, at + 4096))

    res = bv(repo, "backup", "image", dev, "--imagetype", "dynamic")

    assert res.rc == 12, res.out + res.err
    [line] = res.err.strip().splitlines()
    assert dev in line and "Input/output error" in line and "nothing of it was recorded" in line
    assert "internal error" not in line
    chunk_start = at - at % (4 * MIB)
    assert any(f"byte {n}" in line for n in range(chunk_start, at + 1, 4096)), line
    assert not (repo / "images").exists() or list((repo / "images").rglob("*")) == []


def test_a_source_that_fails_at_its_start_is_refused_as_failing(failing, tmp_path):
    dev, set_bad = failing
    repo = tmp_path / "repo"
    set_bad((0, 4096))  # where its signature is read, before the backup starts

    res = bv(repo, "backup", "image", dev, "--imagetype", "dynamic")

    assert res.rc == 12, res.out + res.err
    [line] = res.err.strip().splitlines()
    assert dev in line and "Input/output error" in line and "failing" in line, line
    assert "device policy" not in line and not repo.exists()
