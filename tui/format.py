"""Small formatters shared by the command line and the console."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core.devices import BlockDevice, DeviceTree
from core.findings import Finding, Severity
from core.units import human_size

if TYPE_CHECKING:  # rich is imported on first use: the command line starts faster
    from rich.console import RenderableType

    from core.jobs import JobView

__all__ = [
    "COLUMNS",
    "MIN_TITLE_WIDTH",
    "SEVERITY_STYLE",
    "badges",
    "covers_disk_label",
    "eta_text",
    "findings_table",
    "human_size",
    "job_rate",
    "natural_key",
    "progress_bar",
    "row_cells",
    "short_size",
    "title_room",
]


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


def natural_key(text: str) -> tuple[Any, ...]:
    """Return a sort key that puts ``/dev/loop2`` before ``/dev/loop10`` (numbers as numbers).

    ``re.split`` with a group alternates text and digits, so keys compare position by
    position, text with text and number with number.
    """
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def short_size(n: int) -> str:
    """Return ``n`` bytes in at most five characters: ``64M``, ``1.5G``, ``256G``, ``12T``."""
    size = float(n)
    for unit in "BKMGTP":
        if size < 1000 or unit == "P":
            if unit == "B":
                return f"{int(size)}B"
            return f"{size:.1f}{unit}" if size < 10 and size != int(size) else f"{size:.0f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def findings_table(findings: Sequence[Finding], empty: str = "no findings") -> RenderableType:
    """Return findings as a grid: the severity word, then code and message wrapped beside it.

    The message wraps inside its column, so a long one never reads as a new finding.
    """
    from rich.table import Table
    from rich.text import Text

    if not findings:
        return Text(empty)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    for f in findings:
        word = Text(f.severity.word.upper(), style=SEVERITY_STYLE[f.severity])
        text = Text.assemble((f.code, "bold"), " ", f.message)
        if f.confirmed:  # shown before the job and confirmed: it changed nothing since
            text.append(" (confirmed)", style="italic")
        grid.add_row(word, text)
    return grid


# --- job rows: the console's job table and ``blockvault jobs`` ---------------------------------

BAR_WIDTH = 8
TITLE_WIDTH = 24
COLUMNS = (
    ("id", "#", 3),
    ("title", "job", TITLE_WIDTH),
    ("state", "state", 12),
    ("bar", "progress", BAR_WIDTH + 5),
    ("rate", "rate", 7),
    ("eta", "ETA", 6),
)
"""Key, heading and width of each column. Every column but the job's name keeps its
width, so nothing reflows while jobs run; the name takes the room the table has
(:func:`title_room`): cut at 80 columns, whole on a wide terminal."""
MIN_TITLE_WIDTH = 16
"""The narrowest the job-name column gets ("image /srv (sna…")."""


def title_room(width: int, padding: int = 1) -> int:
    """Return the width of the job-name column in a table ``width`` cells wide.

    Every other column keeps its width (and ``padding`` cells either side); the name
    takes the rest, never less than ``MIN_TITLE_WIDTH`` (then the table scrolls sideways).
    """
    others = sum(w + 2 * padding for key, _, w in COLUMNS if key != "title")
    return max(MIN_TITLE_WIDTH, width - others - 2 * padding)


def progress_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """Return a text bar like ``█████░░░░░ 50%`` (the percentage carries the meaning)."""
    full = round(fraction * width)
    return "█" * full + "░" * (width - full) + f" {fraction * 100:3.0f}%"


def eta_text(seconds: float | None) -> str:
    """Return a short ETA: ``42s``, ``3m05s``, ``2h10m`` (``–`` while unknown)."""
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def row_cells(view: JobView, title_width: int = TITLE_WIDTH) -> tuple[str, ...]:
    """Return the table cells for one job, its name cut to ``title_width`` with …."""
    p = view.progress
    live = view.state.value in ("running", "cancelling")
    state = view.state.value
    if view.state.finished and view.return_code:
        state += f" rc={view.return_code}"
    title = view.title
    if len(title) > title_width:
        title = title[: title_width - 1] + "…"
    return (
        view.id,
        title,
        state,
        progress_bar(view.fraction),
        f"{short_size(int(p.rate))}/s" if p and live else "",
        eta_text(p.eta) if p and live else "",
    )


def job_rate(view: JobView) -> float | None:
    """Return the job's bytes per second over its run: read ÷ elapsed (a restore: written).

    From the report once the job ended (its own duration, so queueing does not count),
    else from the last progress; None before the job has moved a byte.
    """
    report = view.report or {}
    part = report.get("image") if isinstance(report.get("image"), dict) else report
    duration = part.get("duration") if isinstance(part, dict) else None
    if isinstance(part, dict) and isinstance(duration, int | float) and duration > 0:
        if "bytes_read" in part:
            moved = int(part["bytes_read"])
        else:  # a restore: what it wrote to the target, data and zeros
            moved = int(part.get("bytes_written", 0)) + int(part.get("bytes_zeroed", 0))
        return moved / duration
    p = view.progress
    if p is not None and p.elapsed > 0 and p.done > 0:
        return p.done / p.elapsed
    return None
