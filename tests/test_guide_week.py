"""The guide's image-backup example, played for real: Monday's image, daily increments,
and restores that replay them (``--incremental``, ``--deletefiles``, point in time).

Days are a couple of seconds apart: point-in-time restores pick by the increments'
recorded finish times, so seconds separate "Tuesday" from "Wednesday" as well as days.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime
from pathlib import Path

import pytest
from cliutil import blockvault
from imagekit import device_digest
from s3kit import damage_chunk, remove_object
from serverkit import datastore_of

from core.repo.repository import Repository

pytestmark = pytest.mark.loop

DAY_GAP = 1.2  # seconds between "days": point in time has one-second resolution


def bv(repo: str, *args: str):
    res = blockvault(*args, env={"BLOCKVAULT_REPO": repo}, timeout=300)
    return res


def increment(repo: str, mount_point: Path) -> dict:
    res = bv(repo, "backup", "image", str(mount_point), "--mode", "incremental", "--json")
    assert res.rc in (0, 8), res.out + res.err
    return res.json()


def write(path: Path, text: str, mtime: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime, mtime))


def state(root: Path) -> dict[str, tuple[str, int, int, int, int]]:
    """name → (content, mode, uid, gid, mtime_ns) of the files 1–4."""
    out = {}
    for p in sorted(root.glob("file*")):
        st = p.stat()
        out[p.name] = (p.read_text(), st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def finished(repo: str, report: dict) -> str:
    """When the increment of ``report`` finished, as its manifest records it."""
    return Repository.open(repo, create=False).increment(report["increment_id"]).finished


def pit_args(finished: str) -> list[str]:
    """--pitdate/--pittime (local time) at the first whole second after ``finished``."""
    at = datetime.fromtimestamp(math.ceil(datetime.fromisoformat(finished).timestamp()))
    return ["--pitdate", at.strftime("%Y-%m-%d"), "--pittime", at.strftime("%H:%M:%S")]


@pytest.fixture
def week(loopkit, repo_location):
    """Monday to Thursday as in the guide; returns the volume, repo, states and reports.

    Run twice: on a directory, and through a real repository server.
    """
    repo = repo_location
    vol = loopkit.volume("64M", "ext4")
    mp = vol.mount_point
    t0 = 1_700_000_000_000_000_000
    days: dict[str, dict] = {}
    states: dict[str, dict] = {}

    # Monday: files 1, 2 and 3; an image backup and a full incremental.
    for n in (1, 2, 3):
        write(mp / f"file{n}", f"file {n} as on Monday\n" * (n * 1000), t0 + n)
    os.chmod(mp / "file1", 0o640)
    res = bv(repo, "backup", "image", str(mp), "--imagetype", "static", "--json")
    assert res.rc in (0, 8), res.out + res.err
    days["monday"] = increment(repo, mp)
    states["monday"] = state(mp)

    # Tuesday: file 4 is created.
    time.sleep(DAY_GAP)
    write(mp / "file4", "file 4, new on Tuesday\n", t0 + 4)
    days["tuesday"] = increment(repo, mp)
    states["tuesday"] = state(mp)

    # Wednesday: file 2 deleted, file 3 changed; file 1's permissions and file 4's owner
    # change (metadata only: the guide's incremental-by-date would miss both).
    time.sleep(DAY_GAP)
    (mp / "file2").unlink()
    write(mp / "file3", "file 3 as changed on Wednesday\n" * 500, t0 + 33)
    os.chmod(mp / "file1", 0o600)
    os.chown(mp / "file4", 4321, 4321)
    days["wednesday"] = increment(repo, mp)
    states["wednesday"] = state(mp)

    # Thursday: file 1 deleted.
    time.sleep(DAY_GAP)
    (mp / "file1").unlink()
    days["thursday"] = increment(repo, mp)
    states["thursday"] = state(mp)
    return vol, repo, days, states


def restore(loopkit, vol, repo, dest, *extra: str) -> dict:
    res = bv(
        repo, "restore", "image", str(vol.mount_point), dest, "--confirm", dest, "--json", *extra
    )
    assert res.rc in (0, 8), res.out + res.err
    mp = loopkit.mount(dest, None, "ro")
    try:
        return state(mp)
    finally:
        loopkit.umount(mp)


def test_increments_record_changes_and_metadata_only_changes_send_nothing(week):
    _, _, days, _ = week
    assert days["tuesday"]["files_new"] == 1 and days["tuesday"]["bytes_read"] < 100
    wed = days["wednesday"]
    assert wed["files_deleted"] == 1 and wed["files_changed"] == 1
    # file1's chmod, file4's chown, and the root directory, whose mtime moved when
    # file2 was deleted.
    assert wed["files_metadata_only"] == 3
    # Only file 3's new content was sent. The chmod and chown changed the files' ctime,
    # so they were read again to be sure — and found already stored: nothing sent.
    file3 = len("file 3 as changed on Wednesday\n" * 500)
    file1, file4 = len("file 1 as on Monday\n" * 1000), len("file 4, new on Tuesday\n")
    assert wed["bytes_new"] == file3
    assert wed["bytes_dedup"] == file1 + file4
    thu = days["thursday"]
    assert thu["files_deleted"] == 1 and thu["bytes_read"] == 0 and thu["bytes_sent"] == 0


def test_incremental_deletefiles_restores_thursday_exactly(loopkit, week):
    vol, repo, _, states = week
    dest = loopkit.attach(loopkit.image("64M"))
    got = restore(loopkit, vol, repo, dest, "--incremental", "--deletefiles")
    assert got == states["thursday"]
    assert sorted(got) == ["file3", "file4"]
    assert got["file3"][0].startswith("file 3 as changed on Wednesday")
    assert got["file4"][2:4] == (4321, 4321)  # Wednesday's chown, replayed


def test_incremental_without_deletefiles_keeps_what_was_deleted(loopkit, week):
    vol, repo, _, states = week
    dest = loopkit.attach(loopkit.image("64M"))
    got = restore(loopkit, vol, repo, dest, "--incremental")
    assert sorted(got) == ["file1", "file2", "file3", "file4"]
    assert got["file1"] == states["monday"]["file1"]
    assert got["file2"] == states["monday"]["file2"]
    assert got["file3"] == states["thursday"]["file3"]
    assert got["file4"] == states["thursday"]["file4"]


def test_point_in_time_tuesday_gives_tuesdays_files(loopkit, week):
    vol, repo, days, states = week
    dest = loopkit.attach(loopkit.image("64M"))
    got = restore(
        loopkit,
        vol,
        repo,
        dest,
        "--incremental",
        "--deletefiles",
        *pit_args(finished(repo, days["tuesday"])),
    )
    assert got == states["tuesday"]
    assert got["file3"][0].startswith("file 3 as on Monday")


def test_point_in_time_wednesday_replays_permission_and_owner_changes(loopkit, week):
    vol, repo, days, states = week
    dest = loopkit.attach(loopkit.image("64M"))
    got = restore(
        loopkit,
        vol,
        repo,
        dest,
        "--incremental",
        "--deletefiles",
        *pit_args(finished(repo, days["wednesday"])),
    )
    assert got == states["wednesday"]
    assert got["file1"][1] == 0o600 and got["file4"][2] == 4321


def test_query_backup_lists_a_files_versions(week):
    vol, repo, _, _ = week
    res = bv(repo, "query", "backup", str(vol.mount_point / "file3"), "--json")
    assert res.rc == 0, res.err
    assert [v["state"] for v in res.json()["versions"]] == ["new", "changed"]
    res = bv(repo, "query", "backup", str(vol.mount_point / "file1"), "--json")
    assert [v["state"] for v in res.json()["versions"]] == ["new", "metadata", "deleted"]


def test_prune_keeps_what_increments_need_and_check_verifies_them(week):
    _, location, days, _ = week
    repo = datastore_of(location)  # a server's datastore is pruned on the server host
    pruned = bv(repo, "repo", "prune", "--json").json()
    assert pruned["chunks_deleted"] == 0
    check = bv(repo, "repo", "check", "--json")
    assert check.rc == 0, check.out
    assert check.json()["increments"] == 4
    # Damage the piece only Wednesday's file 3 has: check names the increment and path.
    inc = Repository.open(repo, create=False).increment(days["wednesday"]["increment_id"])
    digest = inc.by_path()["file3"].chunks[0].hex()
    damage_chunk(repo, digest)  # its own object, or its piece in a pack
    check = bv(repo, "repo", "check", "--json")
    assert check.rc == 12
    assert any(
        f["code"] == "INCREMENT_DAMAGED" and f["details"]["path"] == "file3"
        for f in check.json()["findings"]
    )


def test_a_missing_increment_fails_the_restore_of_its_time_and_repo_check_names_it(loopkit, week):
    """Wednesday's manifest is gone: its time is refused (not silently Tuesday's state)."""
    vol, repo, days, states = week
    wednesday = days["wednesday"]["increment_id"]
    pit = pit_args(finished(repo, days["wednesday"]))
    remove_object(repo, f"increments/{wednesday}")
    dest = loopkit.attach(loopkit.image("64M"))
    before = device_digest(dest)

    res = bv(
        repo, "restore", "image", str(vol.mount_point), dest, "--confirm", dest,
        "--incremental", "--deletefiles", "--json", *pit,
    )  # fmt: skip

    assert res.rc == 12, res.out + res.err
    assert wednesday in res.json()["error"] and "missing" in res.json()["error"]
    assert device_digest(dest) == before, "a refused restore wrote the destination"
    check = bv(repo, "repo", "check", "--json")
    assert check.rc == 12
    assert any(
        f["code"] == "INCREMENT_MISSING" and f["details"]["missing"] == wednesday
        for f in check.json()["findings"]
    )
    # Thursday's manifest lists the whole file system: its state still restores.
    assert restore(loopkit, vol, repo, dest, "--incremental", "--deletefiles") == states["thursday"]
