"""Regenerate the console's screenshots from the recorded scene.

Usage: .venv/bin/python screenshots/generate.py

Drives the real console headless with Textual's pilot, as harlequin's
``scripts/export_screenshots.py`` does (``run_test(size=…)``, drive, save), on
``scene.py``: a recorded machine, so the pictures are the same on every machine and
run and nothing here touches a device or a repository. The walks are the ones the
snapshot tests take (``tests/test_console_snapshots.py``). Writes one SVG per view
into this folder, prints each path, and deletes the SVGs it no longer makes.

``main-80x24.svg`` and ``main-160x50.svg`` are in the default theme; each other
theme of ``themes/`` gets ``main-<theme>-160x50.svg``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

# Run as a script, only screenshots/ is on the path: make `screenshots.scene` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from screenshots.scene import (
    SceneServices,
    walk_to_backup_dialog,
    walk_to_blocked_restore,
    walk_to_help,
    walk_to_history,
    walk_to_restore_confirmation,
    walk_to_restore_findings,
    walk_to_running_job,
)
from tui.app import BlockvaultApp
from tui.themes import DEFAULT_THEME, load_themes

HERE = Path(__file__).resolve().parent
Walk = Callable[[Pilot[Any]], Awaitable[None]]
WIDE = (160, 50)
"""A wide terminal: every view but the 80×24 main screen is taken at this size."""


def shots() -> list[tuple[str, tuple[int, int], str, Walk]]:
    """Return every screenshot as (file name, terminal size, theme, how to get there)."""
    themes, _ = load_themes()
    return [
        ("main-80x24.svg", (80, 24), DEFAULT_THEME, walk_to_running_job),
        ("main-160x50.svg", WIDE, DEFAULT_THEME, walk_to_running_job),
        *(
            (f"main-{t.name}-160x50.svg", WIDE, t.name, walk_to_running_job)
            for t in themes
            if t.name != DEFAULT_THEME
        ),
        ("history-160x50.svg", WIDE, DEFAULT_THEME, walk_to_history),
        ("backup-dialog-160x50.svg", WIDE, DEFAULT_THEME, walk_to_backup_dialog),
        ("restore-findings-160x50.svg", WIDE, DEFAULT_THEME, walk_to_restore_findings),
        ("restore-confirm-160x50.svg", WIDE, DEFAULT_THEME, walk_to_restore_confirmation),
        ("restore-blocked-160x50.svg", WIDE, DEFAULT_THEME, walk_to_blocked_restore),
        ("help-160x50.svg", WIDE, DEFAULT_THEME, walk_to_help),
    ]


def keep_spaces(svg: str) -> str:
    """Return ``svg`` with ``xml:space="preserve"`` on its root element.

    Textual writes each run of one style as its own ``<text>``, so the space between
    a finding's code and its message begins an element; by SVG's default whitespace
    rule renderers such as librsvg drop it and draw ``FS_MOUNTED/dev/sda1``.
    """
    if 'xml:space="preserve"' in svg.split(">", 1)[0]:
        return svg
    return svg.replace("<svg ", '<svg xml:space="preserve" ', 1)


async def shoot(
    name: str, size: tuple[int, int], theme: str, walk: Walk, folder: Path = HERE
) -> Path:
    """Open the console on the scene, walk to the view, and save it as ``folder/name``."""
    app = BlockvaultApp(services=SceneServices(), theme=theme, watch_devices=False)
    app.where_jobs_run = "jobs run in the agent"  # as the console runs by default
    async with app.run_test(size=size) as pilot:
        await walk(pilot)
        path = Path(app.save_screenshot(filename=name, path=str(folder)))
    path.write_text(keep_spaces(path.read_text(encoding="utf-8")), encoding="utf-8")
    return path


async def main() -> None:
    written = set()
    for name, size, theme, walk in shots():
        path = await shoot(name, size, theme, walk)
        written.add(path.name)
        print(path)
    for stale in sorted(HERE.glob("*.svg")):
        if stale.name not in written:
            stale.unlink()
            print(f"deleted {stale}")


if __name__ == "__main__":
    # The pictures must not depend on who takes them: no user themes, no SSH session.
    for variable in ("SSH_CONNECTION", "SSH_TTY"):
        os.environ.pop(variable, None)
    with tempfile.TemporaryDirectory() as config:
        os.environ["XDG_CONFIG_HOME"] = config
        asyncio.run(main())
