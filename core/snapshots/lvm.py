"""The LVM snapshot: ``lvcreate --snapshot`` of a logical volume, checked and removed.

The snapshot's copy-on-write space is a share of its origin; when the view closes
after a finished copy, ``lvs`` tells whether it filled up (the image is then
inconsistent: :class:`SnapshotOverflow`) and how full it got. The LVM tools are run
from PATH, so the tests can put fakes first.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from core import findings as F
from core import undo
from core.devices import BlockDevice
from core.findings import Finding
from core.snapshots.model import (
    SNAPSHOT_NAME_PREFIX,
    Provider,
    ReadView,
    SnapshotOverflow,
    SnapshotUnavailable,
    UndoError,
    first_line,
    snapshot_read_view,
)
from core.snapshots.signals import signals_deferred
from core.snapshots.undoing import undone

LVM_TOOLS = ("lvcreate", "lvs", "lvremove")
"""The commands an LVM snapshot needs on PATH."""
SNAPSHOT_USAGE_WARNING_PCT = 80.0
"""An LVM snapshot fuller than this at the end of the copy earns a warning."""


def _lvm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run an LVM command found on PATH (tests put fakes first on PATH)."""
    return subprocess.run(
        list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )


def lvremove(snapshot: str) -> None:
    """Remove the LVM snapshot ``snapshot`` (VG/LV); UndoError says how to remove it."""
    with signals_deferred():
        done = _lvm("lvremove", "-f", snapshot)
    if done.returncode != 0:
        raise UndoError(
            f"the LVM snapshot {snapshot} could not be removed ({first_line(done.stderr)}); "
            f"remove it with 'lvremove -f {snapshot}' before it fills up"
        )


def _check_snapshot(snapshot: str, closing: list[Finding]) -> None:
    """Raise SnapshotOverflow if ``snapshot`` filled up or went invalid; note its usage."""
    done = _lvm("lvs", "--noheadings", "-o", "lv_attr,snap_percent", snapshot)
    fields = done.stdout.split()
    if done.returncode != 0 or not fields:
        raise SnapshotOverflow(
            f"cannot tell whether the LVM snapshot {snapshot} stayed valid "
            f"({first_line(done.stderr)}); the image read from it is not trusted, back up again"
        )
    attr = fields[0]
    try:
        used = float(fields[1]) if len(fields) > 1 else None
    except ValueError:
        used = None
    # lv_attr's fifth character: I = invalid snapshot, S = invalid suspended snapshot.
    if (len(attr) > 4 and attr[4] in "IS") or (used is not None and used >= 100):
        raise SnapshotOverflow(
            f"the LVM snapshot {snapshot} filled up during the copy, so the image is "
            "inconsistent; increase --snapshotcachesize and back up again"
        )
    if used is not None:
        nearly = used >= SNAPSHOT_USAGE_WARNING_PCT
        closing.append(
            Finding(
                "SNAPSHOT_USAGE",
                F.Severity.WARNING if nearly else F.Severity.INFO,
                f"the LVM snapshot {snapshot} was {used:.0f}% full at the end of the copy"
                + ("; increase --snapshotcachesize" if nearly else ""),
                {"snapshot": snapshot, "percent": used},
            )
        )


@contextmanager
def lvm_view(dev: BlockDevice, cache_pct: int) -> Iterator[ReadView]:
    """Yield an LVM snapshot of ``dev``; check on exit that it did not overflow; remove it.

    ``lvcreate --snapshot`` suspends the origin, which freezes a mounted file system
    for the instant of the snapshot: no separate freeze is needed.
    """
    done = _lvm("lvs", "--noheadings", "-o", "vg_name,lv_name", dev.path)
    names = done.stdout.split()
    if done.returncode != 0 or len(names) != 2:
        raise SnapshotUnavailable(
            dev.path, f"lvs does not know it as a logical volume ({first_line(done.stderr)})"
        )
    vg, lv = names
    name = f"{SNAPSHOT_NAME_PREFIX}{secrets.token_hex(4)}"
    snapshot = f"{vg}/{name}"

    with ExitStack() as stack:
        with signals_deferred():
            rec = undo.record("lvremove", snapshot, dev.path)
            done = _lvm(
                "lvcreate",
                "--snapshot",
                "--extents",
                f"{cache_pct}%ORIGIN",
                "--name",
                name,
                f"{vg}/{lv}",
            )
            if done.returncode != 0:
                undo.forget(rec)
                raise SnapshotUnavailable(dev.path, f"lvcreate failed: {first_line(done.stderr)}")
            stack.callback(undone, rec, lvremove, snapshot)
        done = _lvm("lvs", "--noheadings", "-o", "lv_path", snapshot)
        path = done.stdout.strip() if done.returncode == 0 else ""
        taken = F.info(
            "SNAPSHOT_LVM",
            f"copied from the LVM snapshot {snapshot} of {vg}/{lv} "
            f"({cache_pct}% of its size for changes)",
            snapshot=snapshot,
            origin=f"{vg}/{lv}",
            cache_pct=cache_pct,
        )
        view = snapshot_read_view(path or f"/dev/{vg}/{name}", 0, dev.size, Provider.LVM, taken)
        yield view
        _check_snapshot(snapshot, view._closing)  # only after a copy that finished
