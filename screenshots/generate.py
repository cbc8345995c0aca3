"""Regenerate the console's SVG screenshots: ``.venv/bin/python screenshots/generate.py``.

Drives the real console headless with Textual's pilot at the sizes users run it
(80×24 over SSH, 160×50 on a wide terminal) and writes one SVG per view here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tui.app import BlockvaultApp

HERE = Path(__file__).resolve().parent
SIZES = ((80, 24), (160, 50))


async def shoot(size: tuple[int, int]) -> None:
    app = BlockvaultApp()
    async with app.run_test(size=size) as pilot:
        # Wait for the device scan and the first volume's findings to land.
        await app.workers.wait_for_complete()
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        name = f"main-{size[0]}x{size[1]}.svg"
        app.save_screenshot(filename=name, path=str(HERE))
        print(HERE / name)


def main() -> None:
    for size in SIZES:
        asyncio.run(shoot(size))


if __name__ == "__main__":
    main()
