"""The console driven by keys alone on real loop devices: backup, the restore wizard, refusals.

Each test runs the real app (``App.run_test``) with the real core behind it: a
repository under the test's tmp_path, loop volumes the test made, backups and
restores that really read and write them.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from imagekit import device_digest, fsck_clean, populate, tree_digest
from rich.console import Console
from test_agent import agents  # noqa: F401  (the fixture)
from textual import events
from textual.pilot import Pilot
from textual.widgets import Button, Input, OptionList, Static

from core.jobs import JobState
from core.repo.repository import Repository
from tui.app import BlockvaultApp
from tui.screens.backup_dialog import BackupDialog
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen
from tui.screens.restore_wizard import RestoreWizard
from tui.services import CoreServices

pytestmark = pytest.mark.loop

SIZE = (100, 30)


def drive(repo: str, script: Callable[[BlockvaultApp, Pilot], Awaitable[None]], **kw) -> None:
    """Run ``script`` against a console on ``repo``; the job queue is closed on every path."""
    services = CoreServices(repo)
    app = BlockvaultApp(services=services, watch_devices=False, theme="blockvault-dark", **kw)

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await script(app, pilot)

    try:
        asyncio.run(main())
    finally:
        services.close()


async def settle(app: BlockvaultApp, pilot: Pilot) -> None:
    """Wait until every worker finished and the messages they posted were handled."""
    for _ in range(3):
        await app.workers.wait_for_complete()
        await pilot.pause()


async def type_text(pilot: Pilot, text: str) -> None:
    for ch in text:
        await pilot.press(ch)


KEY_CHARACTERS = {"enter": "\r", "escape": "\x1b", "slash": "/"}


def burst(app: BlockvaultApp, keys: list[str]) -> None:
    """Send ``keys`` as one read from the terminal delivers them: all queued before any is handled.

    ``pilot.press`` waits for each key to be handled before it sends the next, so a
    focus change always lands in between; keys typed ahead over a slow link (or a
    paste) arrive together, and must still reach the widget they were meant for.
    Keys are letters, digits, ``/`` or the names ``enter`` and ``escape``.
    """
    driver = app._driver
    assert driver is not None
    for key in keys:
        name = "slash" if key == "/" else key
        assert (len(name) == 1 and name.isalnum()) or name in KEY_CHARACTERS, key
        event = events.Key(name, KEY_CHARACTERS.get(name, name))
        event.set_sender(app)
        driver.send_message(event)


async def pick_device(app: BlockvaultApp, pilot: Pilot, device: str) -> None:
    """Highlight ``device`` in the tree with the filter: ``/``, its name, Enter."""
    await pilot.press("slash")  # open the filter
    await type_text(pilot, os.path.basename(device))
    await pilot.press("enter")  # back to the tree, the match highlighted
    await settle(app, pilot)
    selected = app.query_one("#devices").selected
    assert selected is not None and selected.path == device


async def choose(app: BlockvaultApp, pilot: Pilot, list_id: str, option_id: str) -> None:
    """Move the highlight of an option list with the down key to ``option_id``, then Enter."""
    listing = app.screen.query_one(f"#{list_id}", OptionList)
    ids = [listing.get_option_at_index(i).id for i in range(listing.option_count)]
    assert option_id in ids, ids
    while listing.highlighted != ids.index(option_id):
        await pilot.press("down")  # one option further
    await pilot.press("enter")  # choose it
    await settle(app, pilot)


async def tab_to(app: BlockvaultApp, pilot: Pilot, button_id: str) -> None:
    """Press Tab until the button ``button_id`` has focus."""
    target = app.screen.query_one(f"#{button_id}", Button)
    for _ in range(12):
        if app.focused is target:
            return
        await pilot.press("tab")  # next control
    raise AssertionError(f"Tab never reached #{button_id}")


def shown(static: Static) -> str:
    """Return the text a Static shows (markup, tables and groups rendered)."""
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(static.content)
    return console.export_text()


def wait_job(app: BlockvaultApp, job_id: str) -> None:
    view = app.jobs.wait(job_id, timeout=120)
    assert view.state is JobState.DONE, (view.state, view.error)


async def backup_by_keys(app: BlockvaultApp, pilot: Pilot, device: str) -> str:
    """Queue a full image backup of ``device`` with keys; return the job's id once done."""
    await pick_device(app, pilot, device)
    await pilot.press("b")  # the backup dialog for the highlighted volume
    await settle(app, pilot)
    assert isinstance(app.screen, BackupDialog)
    await pilot.press("enter")  # queue it with the defaults
    await settle(app, pilot)
    job_id = app.jobs.views()[-1].id
    wait_job(app, job_id)
    return job_id


async def wizard_to_findings(app: BlockvaultApp, pilot: Pilot, source: str, dest: str) -> None:
    """Open the wizard on ``source`` and walk it to the findings for ``dest``."""
    await pick_device(app, pilot, source)
    await pilot.press("R")  # the restore wizard
    await settle(app, pilot)
    assert isinstance(app.screen, RestoreWizard)
    await pilot.press("enter")  # step 1: the highlighted volume (the one picked)
    await settle(app, pilot)
    await pilot.press("enter")  # step 2: the newest version
    await settle(app, pilot)
    await choose(app, pilot, "target", dest)  # step 3: the target device
    await tab_to(app, pilot, "options-next")  # step 4: defaults, on to the findings
    await pilot.press("enter")
    await settle(app, pilot)
    assert app.screen.step == "findings"


def test_backup_queued_by_keys_stores_an_image_and_shows_its_report(loopkit, tmp_path):
    """b on a volume, Enter in the dialog: a real image lands and the job shows done."""
    vol = loopkit.volume("64M", "ext4")
    populate(vol.mount_point)
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        job_id = await backup_by_keys(app, pilot, vol.device)
        await pilot.pause(0.3)  # one paint tick (0.2 s) so the table shows the end
        row = app.query_one("#jobs").get_row(job_id)
        assert row[2] == "done"
        assert "100%" in row[3]
        report = app.jobs.view(job_id).report
        images = Repository.open(repo, create=False).images()
        assert [m.id for m in images] == [report["image_id"]]
        assert app.jobs.view(job_id).samples  # the graph has points even for a short job

    drive(repo, script)


def test_restore_wizard_by_keys_restores_the_files(loopkit, tmp_path):
    """The wizard walked with keys, the name typed: the target holds the volume's files."""
    vol = loopkit.volume("64M", "ext4")
    populate(vol.mount_point)
    expected = tree_digest(vol.mount_point)
    dest = loopkit.attach(loopkit.image("64M"))
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        await backup_by_keys(app, pilot, vol.device)
        await wizard_to_findings(app, pilot, vol.device, dest)
        assert not app.screen.query_one("#next", Button).disabled
        await pilot.press("enter")  # findings read (they fit): on to the confirmation
        await settle(app, pilot)
        assert app.screen.step == "confirm"
        await type_text(pilot, dest)  # the target's exact name
        await pilot.press("enter")  # restore
        await settle(app, pilot)
        assert not isinstance(app.screen, RestoreWizard)
        wait_job(app, app.jobs.views()[-1].id)

    drive(repo, script)
    clean, out = fsck_clean(dest)
    assert clean, out
    mp = loopkit.mount(dest, None, "ro")
    assert tree_digest(mp) == expected


def test_wrong_name_typed_writes_nothing(loopkit, tmp_path):
    """A name that is not the target's: no job, and the device's bytes are unchanged."""
    vol = loopkit.volume("64M", "ext4")
    dest = loopkit.attach(loopkit.image("64M"))
    loopkit.mkfs(dest, "ext2")  # something on it worth keeping
    before = device_digest(dest)
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        await backup_by_keys(app, pilot, vol.device)
        jobs_before = len(app.jobs.views())
        await wizard_to_findings(app, pilot, vol.device, dest)
        await pilot.press("enter")  # on to the confirmation
        await settle(app, pilot)
        await type_text(pilot, vol.device)  # the SOURCE's name, not the target's
        await pilot.press("enter")  # try to restore
        await settle(app, pilot)
        wizard = app.screen
        assert isinstance(wizard, RestoreWizard) and wizard.step == "confirm"
        assert wizard.query_one("#restore", Button).disabled
        assert "nothing was written" in shown(wizard.query_one("#confirm-status"))
        await pilot.press("escape", "escape", "escape", "escape", "escape", "escape")  # all out
        await settle(app, pilot)
        assert not isinstance(app.screen, RestoreWizard)
        assert len(app.jobs.views()) == jobs_before

    drive(repo, script)
    assert device_digest(dest) == before


def test_mounted_target_blocks_and_cannot_be_confirmed(loopkit, tmp_path):
    """A mounted target: the findings say BLOCKED and the wizard never reaches the name."""
    vol = loopkit.volume("64M", "ext4")
    dest_vol = loopkit.volume("64M", "ext4")
    Path(dest_vol.mount_point, "keep.txt").write_text("still here")
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        await backup_by_keys(app, pilot, vol.device)
        jobs_before = len(app.jobs.views())
        await wizard_to_findings(app, pilot, vol.device, dest_vol.device)
        wizard = app.screen
        text = shown(wizard.query_one("#findings-text"))
        assert "DEST_MOUNTED" in text and "BLOCKED" in text
        assert wizard.query_one("#next", Button).disabled
        await pilot.press("end")  # scrolled to the end: still closed
        await pilot.press("enter")  # try to go on
        await settle(app, pilot)
        assert wizard.step == "findings"
        assert len(app.jobs.views()) == jobs_before

    drive(repo, script)
    assert Path(dest_vol.mount_point, "keep.txt").read_text() == "still here"


def test_quit_with_a_running_job_asks_and_stay_keeps_it(loopkit, tmp_path):
    """q while a job runs asks first; n keeps the console (and the job) going."""
    vol = loopkit.volume("64M", "ext4")
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        await pick_device(app, pilot, vol.device)
        app.jobs.max_running = 0  # hold the job queued, so it is still there when q is pressed
        await pilot.press("b")  # backup dialog
        await settle(app, pilot)
        await pilot.press("enter")  # queue
        await settle(app, pilot)
        await pilot.press("q")  # quit?
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")  # stay
        await settle(app, pilot)
        assert not isinstance(app.screen, ConfirmScreen)
        assert app.jobs.active()

    drive(repo, script)


def test_help_and_read_only(loopkit, tmp_path):
    """? opens the help overlay; a read-only console refuses the restore wizard."""
    vol = loopkit.volume("64M", "ext4")
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        await pick_device(app, pilot, vol.device)
        await pilot.press("question_mark")  # help
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")  # close it
        await pilot.press("R")  # restore: hidden in read-only
        await settle(app, pilot)
        assert not isinstance(app.screen, RestoreWizard)

    drive(repo, script, read_only=True)


def test_cancel_asks_then_cancels_the_highlighted_job(loopkit, tmp_path):
    """c on a job asks first; the Cancel button cancels it, and no image is written."""
    vol = loopkit.volume("64M", "ext4")
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        await pick_device(app, pilot, vol.device)
        app.jobs.max_running = 0  # keep the job queued: cancelled before it reads a byte
        await pilot.press("b")  # backup dialog
        await settle(app, pilot)
        await pilot.press("enter")  # queue
        await settle(app, pilot)
        job_id = app.jobs.views()[-1].id
        await pilot.press("c")  # cancel the highlighted job?
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("tab")  # from "Keep it running" (focus starts there) to "Cancel the job"
        await pilot.press("enter")  # press it
        await settle(app, pilot)
        assert app.jobs.view(job_id).state is JobState.CANCELLED
        await pilot.pause(0.3)  # one paint tick
        assert app.query_one("#jobs").get_row(job_id)[2].startswith("cancelled")

    drive(repo, script)
    assert not os.path.exists(repo) or Repository.open(repo, create=False).images() == []


def test_t_switches_theme_through_the_blockvault_themes(tmp_path):
    """t steps through the shipped themes and wraps around."""
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        seen = [app.theme]
        for _ in app.theme_names:
            await pilot.press("t")  # next theme
            seen.append(app.theme)
        assert set(seen) >= {
            "blockvault-dark",
            "blockvault-light",
            "blockvault-contrast",
            "blockvault-16",
        }
        assert seen[-1] == seen[0]

    drive(repo, script)


def test_filter_finds_a_device_attached_after_the_console_opened(loopkit, tmp_path):
    """A loop device attached later shows up unasked, and / and its name highlight it."""
    repo = str(tmp_path / "repo")
    services = CoreServices(repo)
    app = BlockvaultApp(services=services, theme="blockvault-dark")  # watching devices

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            dev = loopkit.attach(loopkit.image("16M"))  # appears after the console opened
            tree = app.query_one("#devices")
            for _ in range(100):  # the watcher looks every 2 s; give it 20 s at most
                if tree.data_tree is not None and tree.data_tree.by_path(dev) is not None:
                    break
                await pilot.pause(0.2)
            await settle(app, pilot)
            assert tree.data_tree.by_path(dev) is not None
            await pilot.press("slash")  # open the filter
            await type_text(pilot, os.path.basename(dev))
            await pilot.press("enter")  # back to the tree
            await settle(app, pilot)
            assert app.query_one("#filter").value == os.path.basename(dev)
            assert tree.selected is not None and tree.selected.path == dev

    try:
        asyncio.run(main())
    finally:
        services.close()


def test_console_reattached_to_an_agent_shows_its_running_job_with_the_whole_graph(
    loopkit, tmp_path, agents  # noqa: F811  (the fixture imported above)
):
    """A job that started before the console opened: its state and every sample so far."""
    from test_agent import MIB, random_file_volume, reads_throttled

    from core.agent.client import AgentClient
    from core.jobs import BackupSpec

    vol = random_file_volume(loopkit, "64M", 32)
    agent = agents.start()
    submitter = agents.client(agent)
    with reads_throttled(agent.pid, vol.device, 4 * MIB):  # several seconds of backup
        job_id = submitter.submit(BackupSpec(vol.device))
        deadline = time.monotonic() + 30
        while len(submitter.view(job_id).samples) < 4:  # two seconds of graph before we look
            assert time.monotonic() < deadline, "no samples"
            time.sleep(0.1)
        client = AgentClient(str(agent.socket))
        services = CoreServices(str(agent.repo), jobs=client)
        app = BlockvaultApp(services=services, watch_devices=False, theme="blockvault-dark")

        async def main() -> None:
            async with app.run_test(size=SIZE) as pilot:
                await settle(app, pilot)
                for _ in range(50):  # the event stream's first lines: every job
                    if job_id in app.query_one("#jobs").rows:
                        break
                    await pilot.pause(0.1)
                await pilot.press("tab")  # devices → jobs: the job's graph and report show
                await settle(app, pilot)
                await pilot.pause(0.3)  # one paint tick
                shown = app.query_one("#graph")._times
                assert app.jobs.view(job_id).state is JobState.RUNNING
                assert len(shown) >= 4  # the history from before the console opened
                assert app.query_one("#jobs").get_row(job_id)[2] == "running"

        try:
            asyncio.run(main())
        finally:
            services.close()  # disconnects only: the agent's job goes on
        assert submitter.view(job_id).state is JobState.RUNNING
    assert submitter.wait(job_id, timeout=60).state is JobState.DONE


# --- keys: commands are never text, text is never a command (issue 11, item 15) -------------


def test_letters_typed_on_the_tree_never_filter_it(loopkit, tmp_path):
    """Only / opens the filter: letters on the tree are commands or nothing, never filter text."""
    vol = loopkit.volume("16M", "ext4")
    name = os.path.basename(vol.device)
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        tree = app.query_one("#devices")
        box = app.query_one("#filter", Input)
        lines = tree.last_line
        await type_text(pilot, "lop")  # letters no key is bound to, typed on the tree
        await settle(app, pilot)
        assert not box.display and box.value == ""
        assert tree.filter_text == "" and tree.last_line == lines
        assert app.screen is app.screen_stack[0] and app.jobs.views() == []
        # "/" and the name in one read (a paste, one SSH packet), then Enter: the whole name.
        burst(app, ["/", *name, "enter"])
        await settle(app, pilot)
        assert box.value == name and tree.filter_text == name
        assert app.focused is tree
        # Esc in the filter box leaves the filter: the box closes and the tree is whole again.
        burst(app, ["/", "x", "escape"])
        await settle(app, pilot)
        assert not box.display and tree.filter_text == "" and app.focused is tree

    drive(repo, script)


def test_a_name_typed_ahead_into_the_confirmation_arrives_whole(loopkit, tmp_path):
    """Enter on the findings, the target's name and Enter in one burst: the restore is queued."""
    vol = loopkit.volume("64M", "ext4")
    populate(vol.mount_point)
    expected = tree_digest(vol.mount_point)
    dest = loopkit.attach(loopkit.image("64M"))
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        await backup_by_keys(app, pilot, vol.device)
        await wizard_to_findings(app, pilot, vol.device, dest)
        burst(app, ["enter", *dest, "enter"])  # typed before the confirmation step showed
        await settle(app, pilot)
        assert not isinstance(app.screen, RestoreWizard)
        job = app.jobs.views()[-1]
        assert job.spec.dest == dest and job.spec.confirm == dest
        wait_job(app, job.id)

    drive(repo, script)
    mp = loopkit.mount(dest, None, "ro")
    assert tree_digest(mp) == expected


def test_no_letter_confirms_cancelling_a_job(loopkit, tmp_path):
    """c then y (as in a word typed by mistake) keeps the job; only the Yes button cancels."""
    vol = loopkit.volume("16M", "ext4")
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        await pick_device(app, pilot, vol.device)
        app.jobs.max_running = 0  # the job stays queued: it can only be cancelled, not finish
        await pilot.press("b")  # backup dialog
        await settle(app, pilot)
        await pilot.press("enter")  # queue
        await settle(app, pilot)
        job_id = app.jobs.views()[-1].id
        for key in "cyes":  # "c" asks; none of the letters after it answers
            await pilot.press(key)
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert app.jobs.view(job_id).state is JobState.QUEUED
        await pilot.press("escape")  # no
        await settle(app, pilot)
        assert app.jobs.view(job_id).state is JobState.QUEUED

    drive(repo, script)


# --- the details follow the repository (item 19) --------------------------------------------


async def increment_by_keys(app: BlockvaultApp, pilot: Pilot, key: str = "i") -> str:
    """Back up the highlighted volume with keys (``i`` an increment, ``b`` an image); wait."""
    await pilot.press(key)  # the backup dialog, for an increment or an image
    await settle(app, pilot)
    assert isinstance(app.screen, BackupDialog)
    await pilot.press("enter")  # queue it
    await settle(app, pilot)
    job_id = app.jobs.views()[-1].id
    wait_job(app, job_id)
    return job_id


async def after_paint(app: BlockvaultApp, pilot: Pilot) -> None:
    """Let the five-a-second paint show what changed, and the workers it starts finish."""
    await pilot.pause(0.3)
    await settle(app, pilot)


def test_details_follow_a_backup_and_an_increment_without_moving(loopkit, tmp_path):
    """The highlighted volume's timeline shows the new image and increment as they finish."""
    vol = loopkit.volume("64M", "ext4")
    populate(vol.mount_point)
    repo = str(tmp_path / "repo")  # not there yet: the first backup creates it

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        await pick_device(app, pilot, vol.device)
        history = app.query_one("#volume-history", Static)
        assert "not a blockvault repository" in shown(history)
        await increment_by_keys(app, pilot, "b")  # an image: the cursor stays where it is
        await after_paint(app, pilot)
        await pilot.press("1")  # the Details tab; the cursor has not moved
        text = shown(history)
        assert "not a blockvault repository" not in text
        assert text.count("■ image") == 1 and "increment" not in text
        Path(vol.mount_point, "later.txt").write_text("written after the image\n")
        await increment_by_keys(app, pilot)
        await after_paint(app, pilot)
        text = shown(history)
        assert text.count("│ increment") == 1 and text.count("■ image") == 1

    drive(repo, script)


# --- job reports say what each figure measures (items 20 and 21) ------------------------------


def figure(text: str, label: str) -> str:
    """Return the value shown beside ``label`` in the job's figures (two may share a line)."""
    m = re.search(rf"(?:^|  ){re.escape(label)} +(\S.*?)(?:  |$)", text, re.M)
    assert m, f"no {label!r} in:\n{text}"
    return m.group(1)


def test_restore_report_names_the_image_write_the_replay_and_the_verification(loopkit, tmp_path):
    """A restore with a replay and --verifyimage: each part's bytes and counts under its name.

    The target holds a file system: its warning was confirmed with the typed name, so
    the restore is done (rc 0) and the report still counts the warning, as confirmed.
    """
    from core.units import human_size

    vol = loopkit.volume("64M", "ext4")
    populate(vol.mount_point)
    dest = loopkit.attach(loopkit.image("64M"))
    subprocess.run(["mkfs.ext4", "-q", "-F", dest], check=True)  # data the restore replaces
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        await backup_by_keys(app, pilot, vol.device)
        for i in range(3):
            Path(vol.mount_point, f"after-{i}.bin").write_bytes(os.urandom(40_000))
        await increment_by_keys(app, pilot)
        await pick_device(app, pilot, vol.device)
        await pilot.press("R")  # the restore wizard
        await settle(app, pilot)
        await pilot.press("enter")  # step 1: this volume
        await settle(app, pilot)
        await pilot.press("enter")  # step 2: the newest point, the increment on the image
        await settle(app, pilot)
        await choose(app, pilot, "target", dest)  # step 3
        verify = app.screen.query_one("#opt-verify")
        while app.focused is not verify:
            await pilot.press("tab")  # step 4: past replay (ticked), deletefiles, label
        await pilot.press("space")  # read back and verify
        await tab_to(app, pilot, "options-next")
        await pilot.press("enter")  # on to the findings
        await settle(app, pilot)
        await pilot.press("end")  # read them to the end
        await settle(app, pilot)
        await pilot.press("enter")  # on to the confirmation
        await settle(app, pilot)
        await type_text(pilot, dest)
        await pilot.press("enter")  # restore
        await settle(app, pilot)
        job_id = app.jobs.views()[-1].id
        wait_job(app, job_id)
        await after_paint(app, pilot)
        view = app.jobs.view(job_id)
        report = view.report
        image, replay = report["image"], report["replay"]
        assert replay is not None and replay["files_created"] == 3 and image["verified"]
        # The image wrote megabytes, the replay some hundred KiB: each under its own name.
        assert image["bytes_written"] > 10 * replay["bytes_written"] > 0
        text = shown(app.query_one("#job-figures", Static))
        assert figure(text, "written to target") == human_size(image["bytes_written"])
        assert figure(text, "replay wrote") == human_size(replay["bytes_written"])
        assert figure(text, "files created") == "3"
        assert figure(text, "verified") == "yes: read back, it matches"
        for key, label in (("unchanged", "unchanged"), ("metadata_updated", "metadata set")):
            if replay[key]:
                assert figure(text, label) == str(replay[key])
        # The confirmed warning: counted, said to be confirmed, and no rc 8.
        assert [f.code for f in view.findings if f.confirmed] == ["DEST_HAS_DATA"]
        assert view.return_code == 0
        assert figure(text, "warnings") == "1 (1 confirmed before it ran)"
        assert "(confirmed)" in text  # in the findings under the figures
        # One "done", the job's own end: neither the image's part nor the replay's says it.
        ends = [line for line in view.log if line.split(" ", 1)[1].startswith("done")]
        assert ends == [view.log[-1]], view.log

    drive(repo, script)


def test_backup_report_figures_say_what_they_measure(loopkit, tmp_path):
    """Read from the device, new chunk bytes, stored compressed; rate is read ÷ time.

    A small file system's new chunks span unused space that was never read (more
    "new" than "read", stored as next to nothing): no compression ratio is claimed
    for it. A volume of random bytes, read whole, gets its ratio (about ×1).
    """
    from test_agent import raw_volume

    from core.units import human_size

    sparse = loopkit.volume("64M", "ext4")  # a new file system: its metadata and a file
    Path(sparse.mount_point, "note.txt").write_text("a small file\n")
    os.sync()
    dense = raw_volume(loopkit, 16)
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        for vol in (sparse, dense):
            job_id = await backup_by_keys(app, pilot, vol.device)
            await after_paint(app, pilot)
            r = app.jobs.view(job_id).report
            text = shown(app.query_one("#job-figures", Static))
            assert figure(text, "read from device") == human_size(r["bytes_read"])
            assert figure(text, "new chunk bytes") == human_size(r["bytes_new"])
            assert figure(text, "stored compressed") == human_size(r["bytes_stored_new"])
            if vol is sparse:
                assert r["bytes_new"] > r["bytes_read"], r  # the situation of the figures
                assert "compression" not in text, text
            else:
                assert r["bytes_new"] == r["bytes_read"] == 16 * (1 << 20), r
                ratio = r["bytes_new"] / r["bytes_stored_new"]
                assert figure(text, "compression") == f"×{ratio:.2f}"
            rate = r["bytes_read"] / r["duration"]
            assert figure(text, "read rate") == f"{human_size(int(rate))}/s"
            # The graph's headline is the same rate, said to be the job's average.
            header = app.query_one("#graph").render_line(0).text
            unit = 1 << 30 if "GiB/s" in header else 1 << 20
            assert f"avg {rate / unit:.1f}" in header, header

    drive(repo, script)


def test_graph_headline_shows_the_rate_the_job_table_shows(loopkit, tmp_path):
    """While a backup runs, the graph's current rate is the table's, not the last sample's."""
    from test_agent import MIB, random_file_volume, reads_throttled

    from core.jobs import BackupSpec

    vol = random_file_volume(loopkit, "64M", 24)
    repo = str(tmp_path / "repo")

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        with reads_throttled(os.getpid(), vol.device, 4 * MIB):  # some seconds of backup
            job_id = app.jobs.submit(BackupSpec(vol.device))
            app._select_job(job_id)
            await pilot.press("2")  # the Job tab: the graph
            seen = 0
            deadline = time.monotonic() + 60
            while seen < 4 and time.monotonic() < deadline:
                await pilot.pause(0.5)
                # Both read between two awaits: as the same paint left them.
                rate = app.query_one("#jobs").get_row(job_id)[4]
                header = app.query_one("#graph").render_line(0).text
                if not rate or app.jobs.view(job_id).state is not JobState.RUNNING:
                    continue
                value, unit = float(rate[:-3]), rate[-3]
                shown_rate = value / 1024 if unit == "K" else value * 1024 if unit == "G" else value
                match = re.search(r"[▲▼=] (\d+\.\d)", header)
                assert match and "MiB/s" in header, header
                now = float(match.group(1))
                # The table's figure has at most five characters: 3.9M, 12M.
                assert abs(now - shown_rate) <= max(0.051, shown_rate * 0.05), (rate, header)
                seen += 1
            assert seen == 4, "the backup never showed a rate"
        wait_job(app, job_id)

    drive(repo, script)


# --- the job list after a reattach (item 18) -------------------------------------------------


def test_reattached_console_selects_the_running_job_and_keeps_it_in_view(
    loopkit, tmp_path, agents  # noqa: F811  (the fixture imported above)
):
    """Old finished jobs and one running: the running one is highlighted, Home/End move."""
    from test_agent import MIB, random_file_volume, raw_volume, reads_throttled

    from core.agent.client import AgentClient
    from core.jobs import BackupSpec

    agent = agents.start()
    submitter = agents.client(agent)
    for vol in [raw_volume(loopkit, 4) for _ in range(4)]:
        assert submitter.wait(submitter.submit(BackupSpec(vol.device)), 60).state is JobState.DONE
    vol = random_file_volume(loopkit, "64M", 32)
    with reads_throttled(agent.pid, vol.device, 4 * MIB):  # runs while the consoles look
        running = submitter.submit(BackupSpec(vol.device))
        deadline = time.monotonic() + 30
        while submitter.view(running).state is not JobState.RUNNING:
            assert time.monotonic() < deadline, "the backup never started"
            time.sleep(0.1)

        def look(size: tuple[int, int], check: Callable[[BlockvaultApp, Pilot], Awaitable[None]]):
            services = CoreServices(str(agent.repo), jobs=AgentClient(str(agent.socket)))
            app = BlockvaultApp(services=services, watch_devices=False, theme="blockvault-dark")

            async def main() -> None:
                async with app.run_test(size=size) as pilot:
                    table = app.query_one("#jobs")
                    for _ in range(50):  # the event stream's first lines: every job
                        if table.row_count == 5:
                            break
                        await pilot.pause(0.1)
                    await after_paint(app, pilot)
                    await check(app, pilot)

            try:
                asyncio.run(main())
            finally:
                services.close()  # disconnects only: the agent's job goes on

        async def small(app: BlockvaultApp, pilot: Pilot) -> None:
            table = app.query_one("#jobs")
            assert table.selected_job == running
            row = table.get_row_index(running)
            visible = table.scrollable_content_region.height - 1  # under the header
            assert table.scroll_y <= row < table.scroll_y + visible
            await pilot.press("tab")  # devices → jobs
            await pilot.press("end")  # the last row
            assert table.cursor_row == table.row_count - 1
            await pilot.press("home")  # the first
            assert table.cursor_row == 0

        async def large(app: BlockvaultApp, pilot: Pilot) -> None:
            table = app.query_one("#jobs")
            assert table.selected_job == running
            assert table.scrollable_content_region.height - 1 >= 5  # every job in view

        look((80, 24), small)
        look((160, 50), large)
        assert submitter.view(running).state is JobState.RUNNING
    assert submitter.wait(running, timeout=60).state is JobState.DONE


# --- an encrypted repository's passphrase (issue 14) -----------------------------------------


@pytest.mark.parametrize("answer", ["passphrase", "escape"])
def test_the_console_asks_an_encrypted_repository_s_passphrase_once(loopkit, tmp_path, answer):
    """Typed without echo in a dialog the first read opens; Esc leaves it locked, asked no more."""
    from cliutil import blockvault

    from tui.screens.passphrase import PassphraseScreen

    vol = loopkit.volume("32M", "ext4")
    repo = str(tmp_path / "vault")
    pw = tmp_path / "pw"
    pw.write_text("console secret\n")
    env = {"BLOCKVAULT_PASSPHRASE_FILE": str(pw)}
    made = blockvault("repo", "init", "--repo", repo, "--encryption", "aes-256-gcm", env=env)
    assert made.rc == 0, made.err
    made = blockvault(
        "backup", "image", str(vol.mount_point), "--repo", repo, "--no-agent", env=env
    )
    assert made.rc in (0, 8), made.err
    services = CoreServices(repo)
    app = BlockvaultApp(services=services, watch_devices=False, theme="blockvault-dark")

    async def dialog(pilot: Pilot) -> PassphraseScreen | None:
        for _ in range(200):  # pushed from a worker: wait until it is composed, too
            screen = app.screen
            if isinstance(screen, PassphraseScreen) and screen.query("#passphrase"):
                return screen
            await pilot.pause(0.05)
        return None

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            asked = await dialog(pilot)
            assert asked is not None, "no passphrase dialog"
            box = asked.query_one("#passphrase", Input)
            assert box.password  # no echo
            if answer == "passphrase":
                await type_text(pilot, "console secret")
                await pilot.press("enter")
            else:
                await pilot.press("escape")
            await settle(app, pilot)
            await pick_device(app, pilot, vol.device)
            assert not isinstance(app.screen, PassphraseScreen)  # asked once
            text = shown(app.query_one("#volume-history", Static))
            if answer == "passphrase":
                assert text.count("■ image") == 1, text
            else:
                assert "is encrypted" in text and "■ image" not in text, text

    try:
        asyncio.run(main())
    finally:
        services.close()


def test_the_header_names_the_server_and_node_and_says_whether_it_answers(repo_server,
                                                                          monkeypatch):
    """A real server: its address and node in the header; once stopped, 'not answering'."""
    from conftest import server_repository

    url = server_repository(repo_server, monkeypatch, node="web1")
    host = url.split("://", 1)[1]

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        assert f"server {host}, node web1" in app.sub_title
        assert "not answering" not in app.sub_title
        repo_server.stop()
        await pilot.press("r")  # rescan: the repository is asked again
        await settle(app, pilot)
        assert "not answering" in app.sub_title and host in app.sub_title
        # The console still works: the device tree is there and takes keys.
        await pilot.press("j")
        assert app.screen is app.screen_stack[0]

    drive(url, script)


def test_an_unreachable_server_does_not_stop_the_console_from_opening(monkeypatch, tmp_path):
    """Nothing listens at the address: the console opens, and its header says so."""
    from serverkit import free_port

    url = f"https://127.0.0.1:{free_port()}"
    token = tmp_path / "token"
    token.write_text("bvt1_whatever\n")
    monkeypatch.setenv("BLOCKVAULT_TOKEN_FILE", str(token))
    monkeypatch.setenv("BLOCKVAULT_FINGERPRINT", "AB" * 32)

    async def script(app: BlockvaultApp, pilot: Pilot) -> None:
        assert "not answering" in app.sub_title
        await pilot.press("j")

    drive(url, script)
