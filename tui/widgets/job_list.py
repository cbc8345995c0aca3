"""Every job with its state, a progress bar, bytes/s and ETA; updated in place."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable

from core.jobs import JobView
from tui.format import COLUMNS, row_cells


class JobTable(DataTable[str]):
    """The job queue; the highlighted row is the job the report and graph show."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="jobs.down"),
        Binding("k", "cursor_up", "Up", show=False, id="jobs.up"),
    ]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = False
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)

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
        for (key, _, _), value in zip(COLUMNS, cells, strict=True):
            if self.get_cell(view.id, key) != value:
                self.update_cell(view.id, key, value)
