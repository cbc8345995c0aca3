"""Snapshot tests: the console's screens, pictured on the recorded scene.

The console runs for real (screens, widgets, workers) on ``screenshots/scene.py``,
a fixed machine with a backup running at 62%, so every picture is the same on every
machine and run; behaviour on real devices is tested in ``test_console.py``. Each
screen is taken at 80×24 (a default SSH terminal) and 160×50.

A failing test writes ``snapshot_report.html``: read the diff there, then accept an
intended change with ``.venv/bin/pytest tests/test_console_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# screenshots/ is a folder of the checkout, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from screenshots.scene import (
    SceneServices,
    walk_to_backup_dialog,
    walk_to_blocked_restore,
    walk_to_history,
    walk_to_restore_confirmation,
    walk_to_running_job,
)
from tui.app import BlockvaultApp

SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user themes and no SSH session: a picture must not depend on who takes it."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    monkeypatch.delenv("SSH_TTY", raising=False)


def console() -> BlockvaultApp:
    """The console on the recorded scene, in the default theme, not polling for devices."""
    app = BlockvaultApp(services=SceneServices(), theme="blockvault-dark", watch_devices=False)
    app.where_jobs_run = "jobs run in the agent"  # as the console runs by default
    return app


@SIZES
def test_main_screen_shows_the_running_job(snap_compare, size: tuple[int, int]) -> None:
    """The main screen with the running backup selected: its graph, live figures and log."""
    # The walk presses tab (to the job table) and j, j (down to the running job).
    assert snap_compare(console(), terminal_size=size, run_before=walk_to_running_job)


@SIZES
def test_details_show_the_volume_history(snap_compare, size: tuple[int, int]) -> None:
    """/srv highlighted: its identity, findings and images and increments, newest first."""
    # The walk presses j down the tree to sda1, then 1 for the Details tab.
    assert snap_compare(console(), terminal_size=size, run_before=walk_to_history)


@SIZES
def test_backup_dialog_shows_the_volume_findings(snap_compare, size: tuple[int, int]) -> None:
    """The backup dialog for /dev/sda1 with its findings checked and queueing allowed."""
    # The walk presses j down the tree to sda1, then b.
    assert snap_compare(console(), terminal_size=size, run_before=walk_to_backup_dialog)


@SIZES
def test_restore_wizard_asks_for_the_target_name(snap_compare, size: tuple[int, int]) -> None:
    """The restore wizard's last step, after the GPT-overwrite warning was read."""
    # The walk's every key is commented in screenshots/scene.py: R, enter (volume),
    # enter (version), down to /dev/sda2, enter, tabs and space (verify), enter,
    # end (read the findings), enter (to the confirmation).
    assert snap_compare(console(), terminal_size=size, run_before=walk_to_restore_confirmation)


@SIZES
def test_restore_wizard_blocks_a_mounted_target(snap_compare, size: tuple[int, int]) -> None:
    """The findings step for the mounted /dev/sda1: a blocker, and no way on."""
    # As above, with the original device (the first target) chosen.
    assert snap_compare(console(), terminal_size=size, run_before=walk_to_blocked_restore)


@SIZES
def test_help_overlay_lists_the_keys(snap_compare, size: tuple[int, int]) -> None:
    """The help overlay over the main screen with the running job selected."""
    assert snap_compare(
        console(),
        press=["question_mark"],  # ? opens the help
        terminal_size=size,
        run_before=walk_to_running_job,
    )
