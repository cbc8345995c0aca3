"""The blockvault console: devices, jobs with live graphs, and guarded restores.

The app talks to core only through its public API (device scans, checks, the
volume history and the job queue), so an agent process can later serve the
same calls. Every scan runs in a thread worker and posts a message; job
changes arrive as coalescing messages and are painted at most five times a
second, so the UI never works through a backlog while a backup runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable
from functools import partial

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, TabbedContent, TabPane, Tree
from textual.worker import Worker, WorkerState

from core.agent.client import AgentClient
from core.errors import BlockvaultError
from core.jobs import BackupSpec, JobSpec, JobState, JobView, RestoreSpec
from core.repo.repository import RepoStatus
from core.repo.sealed import set_prompt
from tui.format import job_rate
from tui.messages import (
    DevicesScanned,
    HistoryLoaded,
    JobChanged,
    RepositoryProbed,
    VolumeChecked,
)
from tui.screens.actions import ActionsScreen
from tui.screens.backup_dialog import BackupDialog
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen
from tui.screens.passphrase import PassphraseScreen
from tui.screens.restore_wizard import RestoreWizard
from tui.services import CoreServices
from tui.themes import DEFAULT_THEME, load_themes, pick_default
from tui.widgets.device_tree import DeviceTreeView
from tui.widgets.job_list import JobTable
from tui.widgets.job_report import JobReport
from tui.widgets.throughput import ThroughputGraph
from tui.widgets.volume_details import VolumeDetails

PAINT_EVERY = 0.2
"""Seconds between repaints of changed jobs: five a second is live, and cheap over SSH."""
WATCH_DEVICES_EVERY = 2.0


class BlockvaultApp(App[int]):
    """The console: device tree and jobs on the left, details or the job's report on the right."""

    TITLE = "blockvault"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        # The footer shows these in this order; at 80 columns Quit must still fit.
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("b", "backup", "Backup", id="volume.backup"),
        Binding("i", "increment", "Increment", id="volume.increment"),
        Binding("R", "restore", "Restore", id="volume.restore"),
        Binding("c", "cancel_job", "Cancel", id="job.cancel"),
        Binding("q", "quit", "Quit", id="app.quit"),
        # Priority: handled as the key arrives, so the keys typed right after "/" (one SSH
        # packet, a paste) already go to the filter box; bubbled up from the tree, they
        # would be handed to the tree first, where a letter or a digit is a command.
        Binding("slash", "filter", "Filter", priority=True, id="devices.filter"),
        Binding("r,f5", "refresh", "Rescan", show=False, id="devices.refresh"),
        Binding("1", "show_tab('tab-volume')", "Details", show=False, id="view.details"),
        Binding("2", "show_tab('tab-job')", "Job", show=False, id="view.job"),
        Binding("t", "next_theme", "Theme", show=False, id="app.theme"),
        Binding("space", "toggle_pause", "Pause", show=False, id="app.pause"),
        # Priority: the screen's own Tab (focus the next widget) would otherwise come first.
        Binding("enter", "filter_done", show=False, priority=True, id="devices.filter_done"),
        Binding("tab", "cycle_pane(1)", "Next pane", show=False, priority=True, id="app.next"),
        Binding(
            "shift+tab", "cycle_pane(-1)", "Previous pane", show=False, priority=True, id="app.prev"
        ),
    ]

    def __init__(
        self,
        *,
        services: CoreServices | None = None,
        theme: str | None = None,
        read_only: bool = False,
        watch_devices: bool = True,
    ) -> None:
        super().__init__()
        self._ui_thread = threading.get_ident()
        self._passphrase_refused = False
        self.services = services if services is not None else CoreServices()
        self.jobs = self.services.jobs
        self.read_only = read_only
        self.watch_devices = watch_devices
        self.paused = False
        self.where_jobs_run = "jobs run in this console"
        self.repo_status: RepoStatus | None = None
        """Where the repository is and whether it answered (None: not asked yet)."""
        self._dirty: set[str] = set()
        self._finished_jobs: set[str] = set()
        """Jobs this console has painted as ended: one more ending reads the details again."""
        self._shown_job: str | None = None
        self._device_signature: object = None
        self._selected_device: str | None = None
        self._unsubscribe = self.jobs.subscribe(lambda job: self.post_message(JobChanged(job)))
        themes, self.theme_problems = load_themes()
        self.theme_names = [t.name for t in themes]
        for t in themes:
            self.register_theme(t)
        wanted = theme or pick_default(os.environ.get("TERM"), os.environ.get("COLORTERM"))
        if wanted not in self.available_themes:
            self.theme_problems.append(f"theme {wanted!r} is not known; using {DEFAULT_THEME}")
            wanted = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        self.theme = wanted
        if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY"):
            # Over SSH every animation frame is bytes on a slow link.
            self.animation_level = "none"

    # --- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Input(
                    placeholder="filter devices (Esc clears)",
                    id="filter",
                    compact=True,
                    select_on_focus=False,
                )
                yield DeviceTreeView(id="devices")
            with TabbedContent(id="right", initial="tab-volume"):
                with TabPane("Details (1)", id="tab-volume"):
                    yield VolumeDetails(id="details")
                with TabPane("Job (2)", id="tab-job"):
                    yield ThroughputGraph(id="graph")
                    yield JobReport(id="report")
        # Full width: a job's name, state, bar, rate and ETA fit 80 columns on one line.
        yield JobTable(id="jobs")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._ui_thread = threading.get_ident()
        set_prompt(self.ask_passphrase)
        self.query_one("#filter", Input).display = False
        if self.animation_level == "none":  # over SSH a blinking cursor is a repaint a second
            self.query_one("#filter", Input).cursor_blink = False
        self.query_one("#devices", DeviceTreeView).focus()
        self.query_one("#jobs", JobTable).border_title = "jobs"
        self.query_one("#devices", DeviceTreeView).border_title = "devices"
        self.show_sub_title()  # the repository is asked by the first refresh, below
        for problem in self.theme_problems:
            self.notify(problem, title="theme", severity="warning", timeout=10)
        if not self.jobs.outlives_client:
            # Jobs queued before the console opened (an agent's arrive as events).
            self._dirty.update(v.id for v in self.jobs.views())
        self.set_interval(PAINT_EVERY, self.paint_jobs)
        if self.watch_devices:
            self.set_interval(WATCH_DEVICES_EVERY, self.watch_for_devices)
        self.action_refresh()

    def on_unmount(self) -> None:
        set_prompt(None)
        self._unsubscribe()

    def ask_passphrase(self, what: str) -> bytes | None:
        """Ask for an encrypted repository's passphrase; called from a worker thread.

        Never from the UI thread (it would wait on itself), and not again once the user
        left it locked, until the next rescan (``r``).
        """
        if threading.get_ident() == self._ui_thread or self._passphrase_refused:
            return None
        answer: list[bytes | None] = []
        done = threading.Event()

        def got(value: bytes | None) -> None:
            answer.append(value)
            done.set()

        self.call_from_thread(self.push_screen, PassphraseScreen(what), got)
        while not done.wait(0.2):
            if not self.is_running:
                return None
        if answer[0] is None:
            self._passphrase_refused = True
        elif isinstance(self.jobs, AgentClient):
            # The agent runs the jobs: it needs the keys too (it checks the passphrase).
            with contextlib.suppress(BlockvaultError):
                self.jobs.unlock(answer[0])
        return answer[0]

    # --- devices ----------------------------------------------------------------------------

    def action_refresh(self) -> None:
        """Rescan the machine's block devices in a worker (and ask a passphrase again)."""
        self._passphrase_refused = False
        self.scan_devices()
        self.probe_repository()

    # --- the header: where the repository is, and where jobs run ---------------------------

    def show_sub_title(self) -> None:
        """Say in the header where the repository is, whether it answers, and where jobs run."""
        if self.paused:
            self.sub_title = "live updates paused (space resumes)"
            return
        status = self.repo_status
        parts = ["read-only"] if self.read_only else []
        if status is not None and not status.answers:
            # What stops every backup goes first: at 80 columns the end is cut.
            parts += [f"✗ {status.where} not answering", self.where_jobs_run]
        else:
            parts += [self.where_jobs_run, status.where if status else "repository: asking…"]
        self.sub_title = " · ".join(parts)

    @work(thread=True, exclusive=True, exit_on_error=False, group="probe")
    def probe_repository(self) -> None:
        # A server may take seconds to time out: never on the UI thread, and the
        # console is usable meanwhile (the details say so when they cannot load).
        self.post_message(RepositoryProbed(self.services.repository_status()))

    def on_repository_probed(self, message: RepositoryProbed) -> None:
        was = self.repo_status
        self.repo_status = message.status
        self.show_sub_title()
        problem = message.status.problem
        if problem and (was is None or was.problem != problem):
            self.notify(problem, title="repository", severity="warning", timeout=10)

    @work(thread=True, exclusive=True, exit_on_error=False, group="scan")
    def scan_devices(self) -> None:
        self._device_signature = self.services.devices_signature()
        self.post_message(DevicesScanned(self.services.scan()))

    @work(thread=True, exclusive=True, exit_on_error=False, group="watch")
    def watch_for_devices(self) -> None:
        # Cheap (a directory listing and the mount table): a full scan only on a change.
        if self.services.devices_signature() != self._device_signature:
            self.scan_devices()

    @on(DevicesScanned)
    def show_devices(self, message: DevicesScanned) -> None:
        if self._panes_gone():
            return
        tree = self.query_one("#devices", DeviceTreeView)
        tree.show_devices(message.tree)
        # The highlighted device may have changed (a restore wrote a file system on it, a
        # backup's remount ended): its identity is shown again, as the scan saw it.
        dev = tree.selected
        if dev is not None and dev.path == self._selected_device:
            self.query_one("#details", VolumeDetails).show_identity(dev)

    @on(Tree.NodeHighlighted, "#devices")
    def device_highlighted(self, event: Tree.NodeHighlighted[str]) -> None:
        self.show_selected_device()

    def show_selected_device(self) -> None:
        """Show the highlighted device's details (and start its check and history)."""
        dev = self.query_one("#devices", DeviceTreeView).selected
        details = self.query_one("#details", VolumeDetails)
        if dev is None:
            self._selected_device = None
            details.show_group("volumes without a file system (raw)")
            return
        if dev.path == self._selected_device:
            return
        self._selected_device = dev.path
        details.show_pending(dev)
        self.refresh_details()
        self.query_one("#right", TabbedContent).active = "tab-volume"

    def refresh_details(self) -> None:
        """Read the highlighted volume's findings and history again, in workers.

        What was shown stays until the new answer arrives: a job that ends adds an
        image or an increment (or creates the repository), and the timeline must say
        so without the user moving the cursor away and back.
        """
        if self._selected_device is not None:
            self.check_device(self._selected_device)
            self.load_history(self._selected_device)

    @work(thread=True, exclusive=True, exit_on_error=False, group="check")
    def check_device(self, path: str) -> None:
        self.post_message(VolumeChecked(path, self.services.check(path)))

    @work(thread=True, exclusive=True, exit_on_error=False, group="history")
    def load_history(self, path: str) -> None:
        try:
            self.post_message(HistoryLoaded(path, self.services.history(path)))
        except BlockvaultError as e:
            self.post_message(HistoryLoaded(path, None, e.message))

    def _panes_gone(self) -> bool:
        """True once the console's panes are gone: a worker's or a timer's late turn
        then has nothing to show (and must not fail the app)."""
        return not self.query("#devices")

    @on(VolumeChecked)
    def show_check(self, message: VolumeChecked) -> None:
        if message.path == self._selected_device and not self._panes_gone():
            self.query_one("#details", VolumeDetails).show_check(message.check)

    @on(HistoryLoaded)
    def show_history(self, message: HistoryLoaded) -> None:
        if message.path == self._selected_device and not self._panes_gone():
            self.query_one("#details", VolumeDetails).show_history(message.history, message.error)

    @on(Tree.NodeSelected, "#devices")
    def device_selected(self, event: Tree.NodeSelected[str]) -> None:
        dev = self.query_one("#devices", DeviceTreeView).selected
        if dev is None:
            return

        def chosen(action: str | None) -> None:
            if action == "backup":
                self.action_backup()
            elif action == "increment":
                self.action_increment()
            elif action == "restore":
                self.action_restore()
            elif action == "refresh":
                self._selected_device = None
                self.action_refresh()

        self.push_screen(ActionsScreen(dev.path, read_only=self.read_only), chosen)

    def action_filter(self) -> None:
        """Show the filter box above the device tree, empty, with the cursor in it.

        The focus moves at once (``set_focus``, not ``focus()``, which waits for the next
        refresh): each key queued behind ``/`` must reach the box, none the tree.
        """
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = True
        self.screen.set_focus(box)

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.query_one("#devices", DeviceTreeView).set_filter(event.value.strip())
        # The cursor may stay on the same line over another device (no highlight event).
        self.show_selected_device()

    def action_filter_done(self) -> None:
        """Enter in the filter box: back to the tree, at once.

        A priority binding, handled as the key arrives: a key typed right after Enter
        (in the same SSH packet) then already goes to the tree, not into the box.
        """
        self.screen.set_focus(self.query_one("#devices", DeviceTreeView))

    def key_escape(self) -> None:
        """Esc on the main screen leaves the filter: the box closes, the tree is whole again."""
        if self.screen is not self.screen_stack[0]:
            return
        box = self.query_one("#filter", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.screen.set_focus(self.query_one("#devices", DeviceTreeView))

    # --- backup and restore -----------------------------------------------------------------

    def _volume_or_warn(self) -> str | None:
        dev = self.query_one("#devices", DeviceTreeView).selected
        if dev is None:
            self.notify("highlight a volume in the device tree first", severity="warning")
            return None
        return dev.path

    def action_backup(self, mode: str = "full") -> None:
        """Open the backup dialog for the highlighted volume."""
        target = self._volume_or_warn()
        if target is None:
            return
        dev = self.query_one("#devices", DeviceTreeView).selected
        if mode == "incremental" and dev is not None and dev.mount_points:
            target = dev.mount_points[0]
        self.push_screen(BackupDialog(target, self.services, mode=mode), self.submit_job)

    def action_increment(self) -> None:
        """Open the backup dialog with a file-level increment chosen."""
        self.action_backup("incremental")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "filter_done":  # Enter belongs to the filter box only while it has focus
            return self.focused is not None and self.focused.id == "filter"
        if action == "filter":
            # "/" is text in every input (the filter box, a dialog's device name): it opens
            # the filter only on the main screen, from a pane that takes no text.
            return self.screen is self.screen_stack[0] and not isinstance(self.focused, Input)
        # A read-only console shows no restore key at all (as k9s --readonly does).
        return not (action == "restore" and self.read_only)

    def action_restore(self) -> None:
        """Open the restore wizard for the highlighted volume."""
        if self.read_only:
            self.notify("read-only console: restores are hidden", severity="warning")
            return
        dev = self.query_one("#devices", DeviceTreeView).selected
        self.push_screen(RestoreWizard(dev.path if dev else None, self.services), self.submit_job)

    def submit_job(self, spec: JobSpec | None) -> None:
        """Queue ``spec`` (from the backup dialog or the restore wizard); None does nothing."""
        if spec is None:
            return
        self.queue_job(spec)
        self.query_one("#right", TabbedContent).active = "tab-job"
        self.query_one("#jobs", JobTable).focus()

    @work(thread=True, exit_on_error=False, group="submit")
    def queue_job(self, spec: BackupSpec | RestoreSpec) -> None:
        # Resolving the job's device reads sysfs: off the UI thread.
        job_id = self.jobs.submit(spec)
        self.call_from_thread(self._select_job, job_id)

    def _select_job(self, job_id: str) -> None:
        self._dirty.add(job_id)
        self.paint_jobs()
        table = self.query_one("#jobs", JobTable)
        if job_id in table.rows:
            table.pin(job_id)
            self.show_job(job_id)

    # --- jobs -------------------------------------------------------------------------------

    @on(JobChanged)
    def job_changed(self, message: JobChanged) -> None:
        self._dirty.add(message.job_id)

    def paint_jobs(self) -> None:
        """Repaint the jobs that changed since the last paint (unless paused).

        Each job's view is read once per paint, so its row, graph and report show the
        same moment. When a job this console saw running has ended, the details are
        read again: its image or increment is in the timeline now.
        """
        if self.paused or not self._dirty or self._panes_gone():
            return
        dirty, self._dirty = self._dirty, set()
        views = {job_id: self.jobs.view(job_id) for job_id in sorted(dirty, key=int)}
        table = self.query_one("#jobs", JobTable)
        table.show_jobs(views.values())
        self.query_one("#devices", DeviceTreeView).set_busy(
            frozenset(v.device for v in self.jobs.active() if v.device)
        )
        selected = table.selected_job
        if selected is not None and (selected in views or selected != self._shown_job):
            self.show_job(selected, views.get(selected))
        # Seen ending now, or first seen ended (a job too quick to be painted running, or
        # those an agent reports on reattach: one read more, harmless).
        ended = {i for i, v in views.items() if v.state.finished} - self._finished_jobs
        self._finished_jobs |= ended
        if ended:
            self.refresh_details()

    def show_job(self, job_id: str, view: JobView | None = None) -> None:
        """Show one job's graph and report on the right (``view``: as the table shows it)."""
        if view is None:
            view = self.jobs.view(job_id)
        self._shown_job = job_id
        live = view.state in (JobState.RUNNING, JobState.CANCELLING)
        # The headline is the rate the job table shows while the job runs (one sample of
        # a job storing 4 MiB chunks is 0 or 8 MiB/s), its average once it has ended.
        rate = view.progress.rate if live and view.progress else job_rate(view)
        self.query_one("#graph", ThroughputGraph).set_samples(
            view.samples, rate, ended=view.state.finished
        )
        self.query_one("#report", JobReport).show(view)

    @on(JobTable.RowHighlighted, "#jobs")
    def job_highlighted(self, event: JobTable.RowHighlighted) -> None:
        # The job highlighted now, not the event's: rows move as jobs start and end (a
        # sort moves no cursor), so a queued event may name a job no longer highlighted.
        # Only a move to another job switches the right pane to it.
        job_id = self.query_one("#jobs", JobTable).selected_job
        if job_id is not None and job_id != self._shown_job:
            self._shown_job = job_id
            # The tab first: the report lays its figures out for the width it is shown at.
            self.query_one("#right", TabbedContent).active = "tab-job"
            self.call_after_refresh(self.show_job, job_id)

    def action_cancel_job(self) -> None:
        """Ask, then cancel the highlighted job."""
        job_id = self.query_one("#jobs", JobTable).selected_job
        if job_id is None:
            self.notify("no job to cancel", severity="warning")
            return
        view = self.jobs.view(job_id)
        if view.state.finished:
            self.notify(
                f"job {job_id} has already ended ({view.state.value}): nothing to cancel",
                severity="warning",
            )
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.cancel_job(job_id)

        self.push_screen(
            ConfirmScreen(
                f"Cancel job {job_id}: {view.title}? "
                + (
                    f"The restore stops at its next chunk and leaves {view.spec.dest} partly "
                    "written: restore again before using it."
                    if isinstance(view.spec, RestoreSpec)
                    else "A cancelled backup leaves no image; its stored chunks are reused."
                ),
                yes="Cancel the job",
                no="Keep it running",
            ),
            answer,
        )

    @work(thread=True, exit_on_error=False, group="cancel")
    def cancel_job(self, job_id: str) -> None:
        # The agent's API is a request over its socket: never on the UI thread.
        self.jobs.cancel(job_id)

    def action_toggle_pause(self) -> None:
        """Pause or resume live updates (jobs keep running)."""
        self.paused = not self.paused
        self.show_sub_title()
        if not self.paused:
            self.paint_jobs()

    # --- the rest ---------------------------------------------------------------------------

    def action_cycle_pane(self, step: int) -> None:
        """Move focus between the panes: devices, jobs, then the details or the job's log."""
        if self.screen is not self.screen_stack[0]:  # a dialog: its own controls, in order
            if step > 0:
                self.screen.focus_next()
            else:
                self.screen.focus_previous()
            return
        details = self.query_one("#right", TabbedContent).active == "tab-volume"
        panes = [
            self.query_one("#devices"),
            self.query_one("#jobs"),
            self.query_one("#details" if details else "#job-log"),
        ]
        focused = self.focused
        current = next(
            (
                i
                for i, pane in enumerate(panes)
                if focused is not None and (focused is pane or pane in focused.ancestors)
            ),
            -1,
        )
        pane = panes[(current + step) % len(panes)]
        if pane.id == "jobs":  # the highlighted job's report comes with its row
            self.query_one("#right", TabbedContent).active = "tab-job"
        pane.focus()

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#right", TabbedContent).active = tab

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_next_theme(self) -> None:
        """Switch to the next blockvault theme."""
        names = self.theme_names or [self.theme]
        i = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(i + 1) % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2)

    async def action_quit(self) -> None:
        """Quit; while jobs run, ask first (quitting cancels them)."""
        if self.jobs.outlives_client:
            # In the agent, jobs go on without the console: nothing to ask (and nothing
            # to ask an agent that is gone).
            self.exit(0)
            return
        active = self.jobs.active()
        running = [v for v in active if v.state is not JobState.QUEUED]
        queued = [v for v in active if v.state is JobState.QUEUED]
        if not running and not queued:
            self.exit(0)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.notify("cancelling the jobs…", timeout=30)
                self.close_and_exit()

        restores = [v for v in running if isinstance(v.spec, RestoreSpec)]
        self.push_screen(
            ConfirmScreen(
                f"{len(running)} job(s) running and {len(queued)} queued. Quitting cancels "
                "them: a cancelled backup leaves no image (its chunks are reused next time)"
                + ("; a cancelled restore leaves its target partly written" if restores else "")
                + ".",
                yes="Quit and cancel",
                no="Stay",
            ),
            answer,
        )

    @work(thread=True, exit_on_error=False, group="quit")
    def close_and_exit(self) -> None:
        # Jobs stop at their next chunk and undo what they hold (remounts, snapshots):
        # waited for off the UI thread, so the screen stays alive meanwhile.
        self.jobs.close()
        self.call_from_thread(self.exit, 0)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Offer blockvault's actions that make sense now, with namespaced names.

        Textual's own entries (its theme picker listing its own themes, keys, screenshot,
        maximize) are left out: they mix a second vocabulary into ours. A dialog has its
        own keys and offers nothing here.
        """
        if screen is not self.screen_stack[0]:
            return
        dev = self.query_one("#devices", DeviceTreeView).selected
        if dev is not None:
            yield SystemCommand(
                "volume: back up", f"image backup of {dev.path}", self.action_backup
            )
            yield SystemCommand(
                "volume: increment", f"file-level increment of {dev.path}", self.action_increment
            )
            if not self.read_only:
                yield SystemCommand(
                    "volume: restore", f"restore wizard for {dev.path}", self.action_restore
                )
        yield SystemCommand("device: rescan", "read the block devices again", self.action_refresh)
        yield SystemCommand("device: filter", "filter the device tree", self.action_filter)
        job_id = self.query_one("#jobs", JobTable).selected_job
        if job_id is not None and not self.jobs.view(job_id).state.finished:
            yield SystemCommand("job: cancel", f"cancel job {job_id}", self.action_cancel_job)
        yield SystemCommand("view: pause", "pause or resume live updates", self.action_toggle_pause)
        yield SystemCommand("view: next theme", "switch the colour theme", self.action_next_theme)
        for name in self.theme_names:
            yield SystemCommand(f"theme: {name}", f"colours of {name}", partial(self._use, name))
        yield SystemCommand("app: help", "every key and what it does", self.action_help)
        yield SystemCommand("app: quit", "leave (asks while jobs run)", self.action_quit)

    def _use(self, theme: str) -> None:
        self.theme = theme

    @on(Worker.StateChanged)
    def worker_failed(self, event: Worker.StateChanged) -> None:
        # One place for every worker failure: a scan error must be visible, never a hang.
        if event.state is WorkerState.ERROR:
            self.notify(str(event.worker.error), title="error", severity="error", timeout=10)


def console_services(repo_location: str | None, *, use_agent: bool) -> tuple[CoreServices, str]:
    """Return the services the console runs on, and a line saying where its jobs run.

    With ``use_agent`` the jobs run in the agent, started in the background when none
    answers yet, so that closing the console or losing the SSH link never stops a job.
    When no agent can be had (not root, or it would serve another repository), they
    run in the console itself, and the line says so.
    """
    if not use_agent:
        return CoreServices(repo_location), "jobs run in this console (--no-agent)"
    from core.agent import agent_for

    client, where = agent_for(repo_location, start=True)
    if client is None:
        return CoreServices(repo_location), f"jobs run in this console ({where})"
    return CoreServices(repo_location, jobs=client), where


def run_console(
    *,
    repo_location: str | None = None,
    theme: str | None = None,
    read_only: bool = False,
    use_agent: bool = True,
) -> int:
    """Open the console; return its exit code."""
    services, where = console_services(repo_location, use_agent=use_agent)
    app = BlockvaultApp(services=services, theme=theme, read_only=read_only)
    app.where_jobs_run = where

    def hang_up(signum: int, _frame: object) -> None:
        # The SSH link dropped: there is no terminal left to restore, and the app cannot
        # shut down cleanly writing to it. Stop the jobs that run in this console (their
        # undo, a remount or a snapshot, runs now) and leave. Jobs in the agent go on.
        services.close()
        os._exit(128 + signum)

    def terminate(signum: int, _frame: object) -> None:
        # Told to stop with the terminal still there: leave through the app (the finally
        # below stops the jobs), or as on a hang-up if the app does not end in time.
        app.exit(128 + signum)
        timer = threading.Timer(10.0, hang_up, (signum, None))
        timer.daemon = True
        timer.start()

    previous = {
        signal.SIGHUP: signal.signal(signal.SIGHUP, hang_up),
        signal.SIGTERM: signal.signal(signal.SIGTERM, terminate),
    }
    try:
        return app.run() or 0
    finally:
        services.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
