"""The backup dialog: image type, mode and options, with the volume's findings before start."""

from __future__ import annotations

from argparse import ArgumentTypeError

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, RadioSet, Static

from core.findings import Severity
from core.jobs import BackupSpec
from core.preflight import VolumeCheck
from core.units import parse_size
from tui.format import findings_table
from tui.services import CoreServices
from tui.widgets.toggles import MarkedCheckbox, MarkedRadioButton

IMAGE_TYPES = (
    ("auto", "auto: snapshot where a provider applies, else static"),
    ("snapshot", "snapshot (online): a point-in-time copy; the volume stays in use"),
    ("static", "static (offline): remounted read-only while it is copied"),
    ("dynamic", "dynamic: copied as is while in use; the image is fuzzy"),
)
MODES = (
    ("full", "full image of the volume"),
    ("incremental", "incremental: changed files since the last increment"),
)


class BackupDialog(ModalScreen[BackupSpec | None]):
    """Choose how to back up ``target``; dismisses with the job spec, or None on Esc."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Back", id="backup.back"),
        # Enter queues from anywhere in the dialog (space picks radio buttons and boxes).
        Binding("enter,ctrl+s", "queue", "Queue backup", id="backup.queue", priority=True),
    ]
    DEFAULT_CSS = """
    BackupDialog { align: center middle; }
    BackupDialog > Vertical { width: 90; max-width: 100%; height: 100%; max-height: 30;
                              border: thick $primary; background: $surface; padding: 0 1; }
    BackupDialog VerticalScroll { height: 1fr; }
    BackupDialog RadioSet { width: 1fr; height: auto; margin-bottom: 1; }
    BackupDialog .row { height: auto; margin-top: 1; }
    BackupDialog .row Input { width: 10; margin-right: 2; }
    BackupDialog .row Label { padding: 0 1 0 0; }
    BackupDialog #backup-findings { height: auto; margin-top: 1; }
    BackupDialog #backup-buttons { height: auto; }
    BackupDialog Button { margin-right: 2; }
    """

    def __init__(self, target: str, services: CoreServices, *, mode: str = "full") -> None:
        super().__init__()
        self.target = target
        self.services = services
        self.mode = mode
        self.check: VolumeCheck | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"[b]Back up {escape(self.target)}[/b]", id="backup-title")
            with VerticalScroll():
                with RadioSet(id="imagetype", compact=True):
                    for i, (name, label) in enumerate(IMAGE_TYPES):
                        yield MarkedRadioButton(label, value=i == 0, name=name)
                with RadioSet(id="mode", compact=True):
                    for name, label in MODES:
                        yield MarkedRadioButton(label, value=name == self.mode, name=name)
                yield MarkedCheckbox(
                    "no snapshot provider: fall back to dynamic", id="fallback", compact=True
                )
                with Horizontal(classes="row"):
                    yield Label("snapshot cache %")
                    yield Input("10", id="cache", restrict=r"[0-9]*", max_length=3, compact=True)
                    yield Label("smallest skipped gap")
                    yield Input(
                        "",
                        id="gap",
                        restrict=r"[0-9]*[KkMmGg]?",
                        placeholder="default",
                        compact=True,
                    )
                yield Static("checking the volume…", id="backup-findings")
            with Horizontal(id="backup-buttons"):
                yield Button(
                    "Queue backup (enter)",
                    id="queue",
                    variant="primary",
                    disabled=True,
                    compact=True,
                )
                yield Button("Back (esc)", id="back", compact=True)

    def on_mount(self) -> None:
        self.query_one("#imagetype", RadioSet).focus()
        if self.app.animation_level == "none":  # over SSH: no repaint a second for a cursor
            for box in self.query(Input):
                box.cursor_blink = False
        self.run_check()

    @work(thread=True, exclusive=True, exit_on_error=False, group="backup-check")
    def run_check(self) -> None:
        check = self.services.check(self.target)
        self.app.call_from_thread(self.show_check, check)

    def show_check(self, check: VolumeCheck) -> None:
        """Show the findings the backup will start with; a blocker disables queueing."""
        self.check = check
        blocked = any(f.severity is Severity.BLOCKER for f in check.findings)
        parts: list[RenderableType] = [findings_table(check.findings, "no findings: ready")]
        if blocked:
            parts.append(Text("a blocker stops this backup: resolve it first", "bold red"))
        self.query_one("#backup-findings", Static).update(Group(*parts))
        self.query_one("#queue", Button).disabled = blocked

    def _choice(self, radio_id: str) -> str:
        pressed = self.query_one(f"#{radio_id}", RadioSet).pressed_button
        return pressed.name if pressed and pressed.name else ""

    def spec(self) -> BackupSpec:
        """Return the job the dialog's choices describe."""
        imagetype = self._choice("imagetype")
        # The boxes take digits (and a K/M/G unit for the gap) only.
        cache = self.query_one("#cache", Input).value or "10"
        gap = self.query_one("#gap", Input).value
        return BackupSpec(
            target=self.target,
            mode=self._choice("mode") or "full",
            imagetype=None if imagetype in ("", "auto") else imagetype,
            fallback_dynamic=self.query_one("#fallback", Checkbox).value,
            snapshot_cache_pct=max(1, min(100, int(cache))),
            gap_size=parse_size(gap) if gap else None,
        )

    @on(Button.Pressed, "#back")
    def back(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#queue")
    def action_queue(self) -> None:
        if self.focused is self.query_one("#back", Button):
            self.dismiss(None)
            return
        if self.check is None:
            self.notify("still checking the volume…", severity="warning")
            return
        if self.query_one("#queue", Button).disabled:
            self.notify("a blocker stops this backup; see the findings", severity="error")
            return
        try:
            spec = self.spec()
        except (ValueError, ArgumentTypeError) as e:
            self.notify(f"smallest skipped gap: {e}", severity="error")
            return
        self.dismiss(spec)
