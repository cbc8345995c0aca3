"""Every job with its state, a progress bar, bytes/s and ETA; updated in place."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable

from core.jobs import JobState, JobView
from tui.format import short_size

BAR_WIDTH = 8
COLUMNS = (
    ("id", "#"),
    ("title", "job"),
    ("state", "state"),
    ("bar", "progress"),
    ("rate", "rate"),
    ("eta", "ETA"),
)
TITLE_WIDTH = 28


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


def row_cells(view: JobView) -> tuple[str, ...]:
    """Return the table cells for one job."""
    p = view.progress
    live = view.state in (JobState.RUNNING, JobState.CANCELLING)
    state = view.state.value
    if view.state.finished and view.return_code:
        state += f" rc={view.return_code}"
    title = view.title
    if len(title) > TITLE_WIDTH:
        title = title[: TITLE_WIDTH - 1] + "…"
    return (
        view.id,
        title,
        state,
        progress_bar(view.fraction),
        f"{short_size(int(p.rate))}/s" if p and live else "",
        eta_text(p.eta) if p and live else "",
    )


class JobTable(DataTable[str]):
    """The job queue; the highlighted row is the job the report and graph show."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="jobs.down"),
        Binding("k", "cursor_up", "Up", show=False, id="jobs.up"),
    ]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = False
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    @property
    def selected_job(self) -> str | None:
        """Return the highlighted job's id (None when there is none)."""
        if self.row_count == 0:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def show_job(self, view: JobView) -> None:
        """Add or update the row of ``view``; cursor and scroll stay where they are."""
        cells = row_cells(view)
        if view.id not in self.rows:
            self.add_row(*cells, key=view.id)
            return
        for (key, _), value in zip(COLUMNS, cells, strict=True):
            if self.get_cell(view.id, key) != value:
                self.update_cell(view.id, key, value)
