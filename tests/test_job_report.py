"""The live report pane's log: new lines keep coming after the kept window is full."""

from __future__ import annotations

import asyncio
import time

from textual.app import App, ComposeResult
from textual.widgets import Log

from core.jobs import BackupSpec, JobState, JobView
from tui.widgets.job_report import JobReport


class ReportApp(App[None]):
    def compose(self) -> ComposeResult:
        yield JobReport(id="report")


def view(first: int, total: int) -> JobView:
    """A job whose log window holds lines ``first``..``total - 1``."""
    lines = tuple(f"line {i}" for i in range(first, total))
    return JobView(
        "1",
        BackupSpec("/dev/loop9"),
        JobState.RUNNING,
        submitted=time.time(),
        log=lines,
        log_total=total,
    )


def test_lines_logged_after_the_window_filled_are_shown():
    """500 lines kept, 3 more logged (3 dropped): the pane shows the 3 new ones, once."""

    async def main() -> None:
        app = ReportApp()
        async with app.run_test(size=(80, 24)) as pilot:
            report = app.query_one(JobReport)
            report.show(view(0, 500))
            report.show(view(3, 503))
            report.show(view(3, 503))  # nothing new: nothing written again
            await pilot.pause()
            lines = app.query_one("#job-log", Log).lines
            assert lines[-4:] == ["line 499", "line 500", "line 501", "line 502"]
            assert len(lines) == 500 and lines[0] == "line 3"  # the pane keeps 500 too

    asyncio.run(main())
