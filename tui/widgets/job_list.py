"""The job queue as a table: one row per job, the job that matters now on top."""

from __future__ import annotations

from collections.abc import Iterable

from textual import events
from textual.binding import Binding
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

from core.jobs import JobState, JobView
from tui.format import COLUMNS, MIN_TITLE_WIDTH, TITLE_WIDTH, row_cells, title_room


def _order(view: JobView) -> tuple[int, int]:
    """Running jobs first, then queued ones (both oldest first), then ended ones, newest first.

    A console opened while a backup runs shows that backup at the top, however many
    jobs ended before it: the job that matters now is never below the pane's edge.
    """
    number = int(view.id) if view.id.isdigit() else 0
    if view.state in (JobState.RUNNING, JobState.CANCELLING):
        return (0, number)
    if view.state is JobState.QUEUED:
        return (1, number)
    return (2, -number)


class JobTable(DataTable[str]):
    """The job queue; the highlighted row is the job the report and graph show.

    Rows keep the order of :func:`_order`. Until the user moves the cursor (or a job
    is submitted here, see :meth:`pin`), the highlight is on the top row: the running
    job, or else the newest. Once chosen, the highlight stays on its job while rows
    move (a job starting or ending), so a repaint never changes what is shown.
    """

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="jobs.down"),
        Binding("k", "cursor_up", "Up", show=False, id="jobs.up"),
        Binding("home,g", "scroll_top", "First job", show=False, id="jobs.first"),
        Binding("end,G", "scroll_bottom", "Last job", show=False, id="jobs.last"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._views: dict[str, JobView] = {}
        self._title_width = TITLE_WIDTH
        self._pinned = False
        """The user chose the highlighted job: rows that move do not take it away."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = False
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)

    def on_resize(self, event: events.Resize) -> None:
        self._fit_titles()

    def on_click(self, event: events.Click) -> None:
        self._pinned = True

    # The cursor keys are the user's choice of job: from then on the highlight stays on it.
    def action_cursor_up(self) -> None:
        self._pinned = True
        super().action_cursor_up()

    def action_cursor_down(self) -> None:
        self._pinned = True
        super().action_cursor_down()

    def action_page_up(self) -> None:
        self._pinned = True
        super().action_page_up()

    def action_page_down(self) -> None:
        self._pinned = True
        super().action_page_down()

    def action_scroll_top(self) -> None:
        self._pinned = True
        super().action_scroll_top()

    def action_scroll_bottom(self) -> None:
        self._pinned = True
        super().action_scroll_bottom()

    @property
    def selected_job(self) -> str | None:
        """Return the highlighted job's id (None when there is none)."""
        if self.row_count == 0:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def pin(self, job_id: str) -> None:
        """Highlight ``job_id`` (a job just submitted here) and keep it highlighted."""
        if job_id in self.rows:
            self._pinned = True
            self.move_cursor(row=self.get_row_index(job_id), animate=False)

    def show_jobs(self, views: Iterable[JobView]) -> None:
        """Add or update the rows of ``views``; a chosen job stays highlighted."""
        selected = self.selected_job
        views = list(views)
        if any(v.id not in self._views for v in views):
            self._views.update((v.id, v) for v in views)
            self._fit_titles()  # a new name may be the longest
        for view in views:
            self._views[view.id] = view
            cells = row_cells(view, self._title_width)
            if view.id not in self.rows:
                self.add_row(*cells, key=view.id)
                continue
            for (key, _, _), value in zip(COLUMNS, cells, strict=True):
                if self.get_cell(view.id, key) != value:
                    self.update_cell(view.id, key, value)
        wanted = [v.id for v in sorted(self._views.values(), key=_order)]
        rank = {job_id: i for i, job_id in enumerate(wanted)}
        if [self.get_row_index(job_id) for job_id in wanted] != list(range(len(wanted))):
            self.sort("id", key=rank.__getitem__)
        row = self.get_row_index(selected) if self._pinned and selected is not None else 0
        if wanted and row != self.cursor_row:
            self.move_cursor(row=row, animate=False)

    def _fit_titles(self) -> None:
        """Make the name column as wide as the longest name, within the room the table has.

        Every other column is fixed; a name wider than the room is cut with … (at 80
        columns), and on a wide terminal no name is cut nor the state pushed far right.
        """
        room = title_room(self.scrollable_content_region.width, self.cell_padding)
        longest = max((len(v.title) for v in self._views.values()), default=0)
        width = min(room, max(MIN_TITLE_WIDTH, longest))
        if width == self._title_width:
            return
        self._title_width = width
        self.columns[ColumnKey("title")].width = width
        for job_id, view in self._views.items():
            if job_id in self.rows:  # the others get their row, at this width, next
                self.update_cell(job_id, "title", row_cells(view, width)[1], update_width=True)
