"""Small formatters shared by the command line and the console."""

from __future__ import annotations

from core.devices import BlockDevice, DeviceTree
from core.findings import Severity

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: int) -> str:
    """Return ``n`` bytes as ``64.0 MiB`` (binary units, one decimal above bytes)."""
    size = float(n)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def covers_disk_label(dev: BlockDevice, tree: DeviceTree) -> bool:
    """True when ``dev`` starts at sector 0 of a labelled disk (the guide's cylinder-0 case).

    Uses only what the scan read: the container's label, no device I/O.
    """
    if dev.extent is None or dev.extent.start != 0:
        return False
    container = tree.by_path(dev.extent.container)
    return container is not None and container.label is not None


def badges(dev: BlockDevice, tree: DeviceTree | None = None, *, busy: bool = False) -> list[str]:
    """Return the state words shown beside a device (never colour alone).

    Args:
        tree: the scan ``dev`` came from; with it, a slice at cylinder 0 shows ``cyl0``.
        busy: a job runs on the device.
    """
    out: list[str] = []
    if busy:
        out.append("busy")
    if dev.mounted:
        out.append("mounted")
    if dev.read_only:
        out.append("ro")
    if dev.is_raw:
        out.append("raw")
    if dev.label is not None:
        out.append(f"label:{dev.label.kind.value}")
    if tree is not None and covers_disk_label(dev, tree):
        out.append("cyl0")
    if dev.holders:
        out.append("held")
    if dev.probe_error:
        out.append("unreadable")
    return out


SEVERITY_STYLE = {
    Severity.INFO: "cyan",
    Severity.WARNING: "yellow",
    Severity.BLOCKER: "bold red",
}
