"""Small formatters shared by the command line and the console."""

from __future__ import annotations

from core.devices import BlockDevice
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


def badges(dev: BlockDevice) -> list[str]:
    """Return the state words shown beside a device (never colour alone)."""
    out: list[str] = []
    if dev.mounted:
        out.append("mounted")
    if dev.read_only:
        out.append("ro")
    if dev.is_raw:
        out.append("raw")
    if dev.label is not None:
        out.append(f"label:{dev.label.kind.value}")
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
