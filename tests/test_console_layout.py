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

from dataclasses import replace

from textual.widgets import OptionList

from core.devices import DeviceTree
from core.jobs import BackupSpec
from screenshots.scene import CATALOG, DEVICES, SceneServices, highlight_device, settle
from tui.app import BlockvaultApp
from tui.screens.restore_wizard import RestoreWizard
from tui.services import Catalog
from tui.widgets.device_tree import DeviceTreeView, device_label
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


def test_tree_labels_that_do_not_fit_end_in_an_ellipsis() -> None:
    """At 80×24 a long line (a mount point, state words) is cut with …, never mid-word."""

    async def script(app: BlockvaultApp, pilot: Pilot[Any]) -> None:
        tree = app.query_one("#devices", DeviceTreeView)
        width = tree.scrollable_content_region.width
        cut = 0
        for y in range(tree.last_line + 1):
            node = tree.get_node_at_line(y)
            assert node is not None
            text = tree.render_line(y).text.rstrip()
            assert len(text) <= width
            full = node.label.plain if node.data is None else None
            if node.data is not None:
                dev = DEVICES.devices[node.data]
                full = device_label(dev, DEVICES, busy=dev.path in tree.busy).plain
            assert full is not None
            if not text.endswith(full):
                assert text.endswith("…"), text
                body = text.removesuffix("…").lstrip("▼▶├└│ ")  # without the tree's guides
                assert body and full.startswith(body), (text, full)
                cut += 1
        assert cut > 0  # the scene has lines wider than the pane at this size

    on_scene((80, 24), script)


def test_command_palette_offers_blockvault_commands_and_themes_only() -> None:
    """Every palette entry is one of ours, namespaced; themes are blockvault's."""

    async def script(app: BlockvaultApp, pilot: Pilot[Any]) -> None:
        await highlight_device(pilot, "sda1")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert titles, "no commands"
        assert all(": " in t for t in titles), titles
        for textual_own in ("Theme", "Quit", "Keys", "Screenshot", "Maximize", "Minimize"):
            assert not any(t.startswith(textual_own) for t in titles), titles
        themes = sorted(t.removeprefix("theme: ") for t in titles if t.startswith("theme: "))
        assert themes == sorted(app.theme_names)
        assert "volume: back up" in titles and "device: rescan" in titles

    on_scene((80, 24), script)


def test_cancel_of_a_finished_job_says_so_in_words() -> None:
    """c on a finished job: one sentence naming how it ended, nothing asked."""
    said: list[str] = []

    async def script(app: BlockvaultApp, pilot: Pilot[Any]) -> None:
        app.notify = lambda message, **kw: said.append(str(message))  # type: ignore[method-assign]
        table = app.query_one("#jobs", JobTable)
        await pilot.press("tab")  # to the job table: the running job 3 on top
        for job_id, ended in (("2", "failed"), ("1", "done")):
            await pilot.press("j")  # down to the next, older job
            assert table.selected_job == job_id
            await pilot.press("c")  # cancel?
            await settle(pilot)
            assert app.screen is app.screen_stack[0]  # nothing asked
            assert said[-1] == f"job {job_id} has already ended ({ended}): nothing to cancel"

    on_scene((80, 24), script)


def _with_loops(names: tuple[str, ...]) -> DeviceTree:
    """The scene's machine with more loop devices (named like loop0, the scene's scratch)."""
    base = DEVICES.devices["loop0"]
    extra = {
        n: replace(base, name=n, path=f"/dev/{n}", minor=int(n[4:]), mounts=(), signature=None)
        for n in names
    }
    return DeviceTree(
        devices={**DEVICES.devices, **extra},
        roots=(*DEVICES.roots, *names),
        mounts=DEVICES.mounts,
    )


class MoreLoops(SceneServices):
    """The scene, with loop devices whose names sort differently as text and as numbers."""

    def catalog(self) -> Catalog:
        return replace(CATALOG, tree=_with_loops(("loop12", "loop2", "loop10")))


def test_restore_targets_come_in_natural_order_and_the_root_disk_is_refused() -> None:
    """loop2 before loop10 and loop12; / lies on md0 over sdb and sdc: shown refused."""

    async def script(app: BlockvaultApp, pilot: Pilot[Any]) -> None:
        await highlight_device(pilot, "sda1")
        await pilot.press("R")  # the restore wizard for /srv
        await settle(pilot)
        await pilot.press("enter")  # volume: /srv
        await pilot.press("enter")  # version: the newest point
        await settle(pilot)
        wizard = app.screen
        assert isinstance(wizard, RestoreWizard) and wizard.step == "target"
        listing = wizard.query_one("#target", OptionList)
        options = [listing.get_option_at_index(i) for i in range(listing.option_count)]
        ids = [o.id for o in options]
        assert ids[0] == "/dev/sda1"  # the original first
        loops = [i for i in ids if i and i.startswith("/dev/loop")]
        assert loops == ["/dev/loop0", "/dev/loop1", "/dev/loop2", "/dev/loop10", "/dev/loop12"]
        refused = {o.id for o in options if o.disabled}
        assert refused == {"/dev/md0", "/dev/sdb", "/dev/sdc"}
        for o in options:
            if o.disabled:
                assert "holds /" in str(o.prompt), o.prompt
        for _ in range(len(options)):
            await pilot.press("down")  # down the whole list: never onto a refused one
            assert listing.highlighted is not None
            assert not options[listing.highlighted].disabled

    on_scene((160, 50), script, MoreLoops())
