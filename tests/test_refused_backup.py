"""A refused (or failed) first backup leaves no repository behind, and nothing it did not make."""

from __future__ import annotations

import os

import pytest
from cliutil import blockvault

pytestmark = pytest.mark.loop


@pytest.fixture
def refusals(loopkit, tmp_path):
    """Targets every backup of which is refused, each for another reason."""
    vol = loopkit.volume("32M", "ext4")
    # A file open for writing on it (by this test): a static image is refused.
    with open(vol.mount_point / "busy", "w") as busy:
        yield {
            "missing": ["/nonexistent/bv"],
            "not-a-mount-point": [str(tmp_path)],
            "static-of-a-volume-in-use": [str(vol.mount_point), "--imagetype", "static"],
            "a-character-device": ["/dev/null"],
        }
        busy.close()


@pytest.mark.parametrize(
    "why", ["missing", "not-a-mount-point", "static-of-a-volume-in-use", "a-character-device"]
)
def test_a_refused_first_backup_creates_no_repository(refusals, tmp_path, why):
    fresh = tmp_path / "new-repo"
    res = blockvault("backup", "image", *refusals[why], "--repo", str(fresh), "--no-agent")
    assert res.rc == 12, res.out + res.err
    assert not fresh.exists(), sorted(os.listdir(fresh))

    empty = tmp_path / "empty-dir"  # made by the user: it stays, and stays empty
    empty.mkdir()
    res = blockvault("backup", "image", *refusals[why], "--repo", str(empty), "--no-agent")
    assert res.rc == 12, res.out + res.err
    assert empty.is_dir() and os.listdir(empty) == []


def test_a_refused_backup_into_an_existing_repository_keeps_it(refusals, tmp_path):
    repo = tmp_path / "repo"
    assert blockvault("repo", "init", "--repo", str(repo)).rc == 0
    before = sorted(os.listdir(repo))
    res = blockvault("backup", "image", "/nonexistent/bv", "--repo", str(repo), "--no-agent")
    assert res.rc == 12
    assert sorted(os.listdir(repo)) == before
