"""What the console shows, on the recorded scene: widths, orders, palette and wording.

These are questions of display alone (how much of a name fits, in what order a list
comes, which commands the palette offers), so they run on ``screenshots/scene.py``'s
recorded machine at fixed sizes; behaviour on real devices is in ``test_console.py``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

# screenshots/ is a folder of the checkout, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.jobs import BackupSpec
from screenshots.scene import (
    SceneServices,
    settle,
)
from tui.app import BlockvaultApp
from tui.widgets.job_list import JobTable

Script = Callable[[BlockvaultApp, Pilot[Any]], Awaitable[None]]


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user themes and no SSH session."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    monkeypatch.delenv("SSH_TTY", raising=False)


def on_scene(size: tuple[int, int], script: Script, services: SceneServices | None = None) -> None:
    """Run ``script`` on a console over the recorded scene at ``size``."""
    app = BlockvaultApp(
        services=services or SceneServices(), theme="blockvault-dark", watch_devices=False
    )

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await script(app, pilot)

    asyncio.run(main())


LONG_TARGET = "/srv/postgresql/16/main/pg_tblspc/archive-2025"


@pytest.mark.parametrize("size", [(80, 24), (120, 30), (160, 50)], ids=str)
def test_job_names_use_the_width_the_table_has(size: tuple[int, int]) -> None:
    """A long job name is shown whole where the table is wide enough, else cut with …."""

    async def script(app: BlockvaultApp, pilot: Pilot[Any]) -> None:
        job_id = app.jobs.submit(BackupSpec(LONG_TARGET, imagetype="snapshot"))
        await settle(pilot)
        table = app.query_one("#jobs", JobTable)
        title = app.jobs.view(job_id).title
        shown = table.get_row(job_id)[1]
        room = next(c for c in table.ordered_columns if c.key == "title").width
        # Every other column keeps its width; the name takes what is left.
        assert table.virtual_size.width <= table.scrollable_content_region.width
        if len(title) <= room:
            assert shown == title
        else:
            assert shown == title[: room - 1] + "…"
        if size[0] >= 120:
            assert shown == title

    on_scene(size, script)
