"""The selected job's figures and log, updated live while it runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Log, Static

from core.jobs import JobView
from tui.format import eta_text, findings_table, human_size

SIZE_FIGURES = (
    ("bytes_volume", "volume"),
    ("bytes_read", "read"),
    ("bytes_skipped", "skipped (unused)"),
    ("bytes_zero", "zero"),
    ("bytes_new", "new"),
    ("bytes_stored_new", "stored (compressed)"),
    ("bytes_sent", "sent (compressed)"),
    ("bytes_dedup", "deduplicated"),
    ("bytes_image", "image"),
    ("bytes_written", "written"),
    ("bytes_zeroed", "zeroed"),
)
COUNT_FIGURES = (
    ("chunks", "chunks"),
    ("chunks_new", "chunks new"),
    ("chunks_dedup", "chunks dedup"),
    ("chunks_zero", "chunks zero"),
    ("files_scanned", "files scanned"),
    ("files_new", "files new"),
    ("files_changed", "files changed"),
    ("files_metadata_only", "metadata only"),
    ("files_deleted", "files deleted"),
    ("files_skipped", "files skipped"),
)


def figures(view: JobView) -> list[tuple[str, str]]:
    """Return the job's figures as (name, value) rows: the report's once done, else live."""
    doc: Mapping[str, Any] = view.report or (view.progress.counters if view.progress else {})
    if view.report and "image" in view.report and isinstance(view.report["image"], dict):
        doc = {**view.report["image"], **(view.report.get("replay") or {})}
    rows = [(label, human_size(int(doc[k]))) for k, label in SIZE_FIGURES if doc.get(k)]
    rows += [(label, str(int(doc[k]))) for k, label in COUNT_FIGURES if doc.get(k)]
    if doc.get("bytes_stored_new") and doc.get("bytes_new"):
        rows.append(("compression", f"×{doc['bytes_new'] / doc['bytes_stored_new']:.2f}"))
    warnings = [f for f in view.findings if f.severity.word != "info"]
    rows.append(("warnings", str(len(warnings))))
    return rows


def summary_line(view: JobView) -> str:
    """Return the job's headline: state, phase, percentage, rate and ETA in words."""
    p = view.progress
    parts = [f"[bold]{escape(view.title)}[/]", view.state.value]
    if p is not None and not view.state.finished:
        parts += [
            p.phase,
            f"{view.fraction * 100:.1f}%",
            f"{human_size(int(p.rate))}/s",
            f"ETA {eta_text(p.eta)}",
        ]
    if view.return_code is not None:
        parts.append(f"rc {view.return_code}")
    if view.started and view.ended:
        parts.append(f"{view.ended - view.started:.1f} s")
    return "  ".join(parts)


class JobReport(Vertical):
    """Figures on top, then the job's findings and log; renders what the app hands it."""

    DEFAULT_CSS = """
    JobReport { height: 1fr; }
    JobReport > #job-summary { padding: 0 1; }
    JobReport > #job-figures { padding: 0 1; }
    JobReport > Log { height: 1fr; min-height: 3; border-top: solid $panel; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._log_len = 0
        self._job: str | None = None
        self._view: JobView | None = None

    def compose(self) -> ComposeResult:
        yield Static("no job selected: b starts a backup", id="job-summary")
        yield Static("", id="job-figures")
        yield Log(id="job-log", max_lines=500)

    def on_resize(self) -> None:
        # The figures are laid out for the width: shown while the tab was hidden (no
        # width yet) or before a resize, they are laid out again for the width they get.
        if self._view is not None:
            self.show(self._view)

    def show(self, view: JobView) -> None:
        """Render ``view``; log lines already shown are not written again."""
        self._view = view
        self.query_one("#job-summary", Static).update(summary_line(view))
        rows = figures(view)
        width = max(len(k) for k, _ in rows)
        cells = [f"{k:<{width}} {v}" for k, v in rows]
        # Two figures a line where they fit side by side, else one.
        per_line = 2 if self.size.width >= 2 * (width + 16) else 1
        cells = [c.ljust(width + 14) for c in cells] if per_line == 2 else cells
        text = "\n".join(
            "".join(cells[i : i + per_line]).rstrip() for i in range(0, len(cells), per_line)
        )
        if view.error:
            text += f"\n[bold red]error[/] {escape(view.error)}"
        parts: list[RenderableType] = [Text.from_markup(text)]
        if view.state.finished and view.findings:
            parts.append(findings_table(view.findings))
        self.query_one("#job-figures", Static).update(Group(*parts))
        log = self.query_one("#job-log", Log)
        if view.id != self._job:
            log.clear()
            self._job, self._log_len = view.id, 0
        # The view keeps the newest lines; write only those logged since the last show
        # (counted over the job's life, so a full window still yields its new lines).
        fresh = min(view.log_total - self._log_len, len(view.log))
        if fresh > 0:
            log.write_lines(view.log[-fresh:])
        self._log_len = view.log_total

    def clear_job(self) -> None:
        """Show that no job is selected."""
        self._job, self._log_len, self._view = None, 0, None
        self.query_one("#job-summary", Static).update("no job selected: b starts a backup")
        self.query_one("#job-figures", Static).update("")
        self.query_one("#job-log", Log).clear()
