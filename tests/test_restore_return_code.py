"""A warning the user read and confirmed does not make a clean restore look like one with problems.

The rule: warnings shown before the confirmation (DEST_HAS_DATA, a fuzzy image, …)
stay in the report marked ``"confirmed": true`` and do not count towards the return
code; warnings that arise while the job runs do (rc 8).
"""

from __future__ import annotations

import os

import pytest
from cliutil import blockvault
from imagekit import device_digest

pytestmark = pytest.mark.loop
MIB = 1 << 20


def test_a_confirmed_dest_has_data_warning_leaves_a_clean_restore_at_rc_0(loopkit, tmp_path):
    repo = tmp_path / "repo"
    src = loopkit.attach(loopkit.image("8M"))
    with open(src, "r+b") as f:
        f.write(os.urandom(4 * MIB))
    res = blockvault("backup", "image", src, "--imagetype", "static", "--repo", str(repo),
                     "--no-agent", "--json")  # fmt: skip
    assert res.rc in (0, 8), res.out + res.err
    dest = loopkit.attach(loopkit.image("8M"))
    loopkit.mkfs(dest, "ext4")  # the target holds data: the restore warns before confirming

    res = blockvault("restore", "image", src, dest, "--confirm", dest, "--repo", str(repo),
                     "--no-agent", "--json")  # fmt: skip

    doc = res.json()
    codes = {f["code"]: f for f in doc["image"]["findings"]}
    assert codes["DEST_HAS_DATA"]["severity"] == "warning"
    assert codes["DEST_HAS_DATA"]["confirmed"] is True
    assert [c for c, f in codes.items() if f["severity"] != "info"] == ["DEST_HAS_DATA"], codes
    assert res.rc == 0 and doc["return_code"] == 0 and doc["image"]["return_code"] == 0
    assert device_digest(dest) == device_digest(src)


def test_an_unconfirmed_warning_still_counts():
    from core import findings as F

    shown = F.warning("DEST_HAS_DATA", "x")
    assert F.return_code([shown]) == 8
    assert F.return_code([F.Finding(shown.code, shown.severity, "x", confirmed=True)]) == 0
    assert F.return_code([F.Finding("X", F.Severity.BLOCKER, "x", confirmed=True)]) == 12
