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

from core.findings import Severity
from core.jobs import JobView, RestoreSpec
from tui.format import eta_text, findings_table, human_size, job_rate

Rows = list[tuple[str, str]]

IMAGE_SIZES = (
    ("bytes_volume", "volume"),
    ("bytes_read", "read from device"),
    ("bytes_skipped", "not read (unused)"),
    ("bytes_zero", "zero, not stored"),
    ("bytes_new", "new chunk bytes"),
    ("bytes_dedup", "already stored"),
    ("bytes_stored_new", "stored compressed"),
)
"""A backup's byte figures, each named for what it counts: what was read from the device
and what was not; of the chunks, the plain bytes of those new to the repository (a chunk
spans unused space too, which is not read: they can exceed what was read), of those it
already held, and what the new ones take there after compression."""
IMAGE_COUNTS = (
    ("chunks", "chunks"),
    ("chunks_new", "chunks new"),
    ("chunks_dedup", "chunks already stored"),
    ("chunks_zero", "chunks zero"),
)
Table = tuple[tuple[str, str, bool], ...]
"""(key, label, is a size) rows of a report's figures."""
INCREMENT_FIGURES: Table = (
    ("files_scanned", "files scanned", False),
    ("files_new", "files new", False),
    ("files_changed", "files changed", False),
    ("files_metadata_only", "metadata only", False),
    ("files_deleted", "files deleted", False),
    ("files_skipped", "files skipped", False),
    ("bytes_read", "read from files", True),
    ("bytes_new", "new after dedup", True),
    ("bytes_dedup", "already stored", True),
    ("bytes_sent", "stored compressed", True),
)
RESTORE_FIGURES: Table = (
    ("bytes_image", "image", True),
    ("bytes_written", "written to target", True),
    ("bytes_zeroed", "zeroed on target", True),
    ("chunks", "chunks", False),
)
REPLAY_FIGURES: Table = (
    ("bytes_written", "replay wrote", True),
    ("files_created", "files created", False),
    ("files_replaced", "files replaced", False),
    ("metadata_updated", "metadata set", False),
    ("deleted", "deleted", False),
    ("unchanged", "unchanged", False),
    ("kept_not_backed_up", "kept (not backed up)", False),
)
REPLAY_PHASES = ("comparing", "replaying")
"""The phases of a restore's replay, whose live counters are the replay's own."""


def _rows(doc: Mapping[str, Any], table: Table) -> Rows:
    """Return the non-zero figures of ``doc`` named in ``table``."""
    return [
        (label, human_size(int(doc[key])) if size else str(int(doc[key])))
        for key, label, size in table
        if doc.get(key)
    ]


def _compression(plain: object, stored: object, read: object) -> Rows:
    """Return the compression row: plain bytes ÷ their compressed size, when that says so.

    Only when every plain byte was read (``plain`` ≤ ``read``): new chunks that span
    unused space, never read and stored as next to nothing, would claim ×4000.
    """
    if not (isinstance(plain, int) and isinstance(stored, int) and isinstance(read, int)):
        return []
    if 0 < plain <= read and stored > 0:
        return [("compression", f"×{plain / stored:.2f}")]
    return []


def _image_rows(doc: Mapping[str, Any]) -> Rows:
    rows = _rows(doc, tuple((k, label, True) for k, label in IMAGE_SIZES))
    rows += _rows(doc, tuple((k, label, False) for k, label in IMAGE_COUNTS))
    ratio = doc.get("compression_ratio")  # core gives none where unread space is in it
    return rows + ([("compression", f"×{ratio:.2f}")] if isinstance(ratio, float) else [])


def _increment_rows(doc: Mapping[str, Any]) -> Rows:
    compression = _compression(doc.get("bytes_new"), doc.get("bytes_sent"), doc.get("bytes_read"))
    return _rows(doc, INCREMENT_FIGURES) + compression


def _restore_rows(view: JobView) -> Rows:
    """The image's write, its verification, then the replay's own figures (never mixed)."""
    assert isinstance(view.spec, RestoreSpec)
    report = view.report
    if report is None:
        p = view.progress
        if p is None:
            return []
        if p.phase in REPLAY_PHASES:
            return _rows({**p.counters, "bytes_written": p.done}, REPLAY_FIGURES)
        return _rows(p.counters, RESTORE_FIGURES)
    # With a replay the report has the image's part and the replay's; without, it is flat.
    part = report.get("image")
    image: Mapping[str, Any] = part if isinstance(part, dict) else report
    rows = _rows(image, RESTORE_FIGURES)
    if image.get("verified"):
        rows.append(("verified", "yes: read back, it matches"))
    elif view.spec.verify:
        rows.append(("verified", "no"))
    else:
        rows.append(("verified", "not asked (--verifyimage)"))
    replay = report.get("replay")
    if isinstance(replay, dict):
        rows += _rows(replay, REPLAY_FIGURES)
    return rows


def figures(view: JobView) -> Rows:
    """Return the job's figures as (name, value) rows: the report's once done, else live."""
    if isinstance(view.spec, RestoreSpec):
        rows = _restore_rows(view)
    else:
        doc: Mapping[str, Any] = view.report or (view.progress.counters if view.progress else {})
        rows = _increment_rows(doc) if view.spec.mode == "incremental" else _image_rows(doc)
    rate = job_rate(view) if view.state.finished else None
    if rate is not None:
        what = "write rate" if isinstance(view.spec, RestoreSpec) else "read rate"
        rows.append((what, f"{human_size(int(rate))}/s"))
    warnings = [f for f in view.findings if f.severity is Severity.WARNING]
    confirmed = sum(f.confirmed for f in warnings)
    count = str(len(warnings)) + (f" ({confirmed} confirmed before it ran)" if confirmed else "")
    rows.append(("warnings", count))
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
        # Two figures a line where they fit side by side (two spaces between), else one.
        column = max(len(c) for c in cells) + 2
        per_line = 2 if self.size.width - 2 >= 2 * column else 1
        cells = [c.ljust(column) for c in cells] if per_line == 2 else cells
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
