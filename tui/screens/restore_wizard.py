"""The restore wizard: volume → version → target → options → findings → typed confirmation.

Nothing is written here: the wizard dismisses with a :class:`RestoreSpec` that
carries the typed name and the target's identity as it was shown, and the
engine checks every guard again when it starts writing. Escape goes back one
step; from the first step it leaves the wizard.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.console import Group
from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, ContentSwitcher, Input, OptionList, Static
from textual.widgets.option_list import Option

from core.devices import DeviceTree
from core.engine.guards import root_holders
from core.engine.restore import RestorePlan
from core.errors import BlockvaultError
from core.findings import Severity
from core.history import VolumeHistory
from core.increments.chain import RestorePoint
from core.jobs import RestoreSpec
from core.repo.filemanifest import FileManifest
from tui.format import badges, findings_table, human_size, natural_key
from tui.services import Catalog, CoreServices
from tui.widgets.toggles import MarkedCheckbox

STEPS = ("volume", "version", "target", "options", "findings", "confirm")
TITLES = {
    "volume": "1/6 volume: which volume's backups?",
    "version": "2/6 version: an image, or a point in time on the increment timeline",
    "target": "3/6 target: the device to overwrite",
    "options": "4/6 options",
    "findings": "5/6 findings: read them (scroll to the end) before confirming",
    "confirm": "6/6 confirm: type the target's name",
}


@dataclass(frozen=True)
class PlanRequest:
    """What the findings step checks and the confirmation commits to."""

    point: RestorePoint
    dest: str
    increment: FileManifest | None
    deletefiles: bool
    preserve_label: bool
    verify: bool


class OptionBox(MarkedCheckbox, inherit_bindings=False):
    """A checkbox that Space toggles; Enter is left to the wizard, which moves on."""

    BINDINGS = [Binding("space", "toggle_button", "Toggle", show=False)]


def _when(stamp: str) -> str:
    return stamp[:19].replace("T", " ")


class RestoreWizard(ModalScreen[RestoreSpec | None]):
    """Walk to a confirmed restore of ``source``'s backups; dismiss with the job or None."""

    BINDINGS = [
        Binding("escape", "back", "Back", id="restore.back"),
        Binding("enter", "next_step", "Next", id="restore.next"),
        # Priority: on the findings, Enter is handled as it arrives and the focus is in the
        # confirmation box at once, so the name typed right behind it (one SSH packet, a
        # paste) reaches the box whole instead of the findings, which drop letters.
        Binding("enter", "findings_done", show=False, priority=True, id="restore.findings_done"),
    ]
    DEFAULT_CSS = """
    RestoreWizard { align: center middle; }
    RestoreWizard > Vertical { width: 100; max-width: 100%; height: 100%; max-height: 40;
                               border: thick $error; background: $surface; padding: 0 1; }
    RestoreWizard #wizard-step { text-style: bold; color: $accent; }
    RestoreWizard ContentSwitcher { height: 1fr; }
    RestoreWizard ContentSwitcher > * { height: 1fr; }
    RestoreWizard #findings-scroll { height: 1fr; border: round $warning; }
    RestoreWizard #confirm { height: 1fr; }
    RestoreWizard #confirm-identity { height: auto; }
    RestoreWizard #confirm-status { height: auto; }
    RestoreWizard #wizard-buttons { height: auto; }
    RestoreWizard Button { margin-right: 2; }
    """

    def __init__(self, source: str | None, services: CoreServices) -> None:
        super().__init__()
        self.source = source
        self.services = services
        self.catalog: Catalog | None = None
        self.history: VolumeHistory | None = None
        self.points: list[RestorePoint] = []
        self.point: RestorePoint | None = None
        self.dest: str | None = None
        self.plan: RestorePlan | None = None
        self.request: PlanRequest | None = None
        self.findings_read = False

    # --- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Restore", id="wizard-title")
            yield Static(TITLES["volume"], id="wizard-step")
            with ContentSwitcher(initial="volume"):
                yield OptionList(id="volume")
                yield OptionList(id="version")
                yield OptionList(id="target")
                with Vertical(id="options"):
                    yield OptionBox(
                        "replay the increment onto the image (--incremental)",
                        id="opt-incremental",
                        compact=True,
                    )
                    yield OptionBox(
                        "delete files the increment does not list (--deletefiles)",
                        id="opt-deletefiles",
                        compact=True,
                    )
                    yield OptionBox(
                        "leave the target's own disk label untouched (--preserve-label)",
                        id="opt-preserve",
                        compact=True,
                    )
                    yield OptionBox(
                        "read back and verify after writing (--verifyimage)",
                        id="opt-verify",
                        compact=True,
                    )
                    yield Static("space ticks a box, tab moves, enter goes on to the findings")
                    yield Button(
                        "Next: findings", id="options-next", variant="primary", compact=True
                    )
                with VerticalScroll(id="findings"):
                    yield Static("checking the target…", id="findings-text")
                with Vertical(id="confirm"):
                    yield Static("", id="confirm-identity")
                    yield Input(
                        placeholder="type the target's name", id="confirm-input", compact=True
                    )
                    yield Static("", id="confirm-status")
            with Horizontal(id="wizard-buttons"):
                yield Button("Next: confirm", id="next", variant="primary", compact=True)
                yield Button("Restore", id="restore", variant="error", disabled=True, compact=True)
                yield Button("Back (esc)", id="back-button", compact=True)

    def on_mount(self) -> None:
        self.query_one("#restore", Button).display = False
        self.query_one("#volume", OptionList).focus()
        if self.app.animation_level == "none":  # over SSH: no repaint a second for a cursor
            self.query_one("#confirm-input", Input).cursor_blink = False
        # Warnings count as read once the findings were scrolled to their end (keys or mouse).
        self.watch(self.query_one("#findings", VerticalScroll), "scroll_y", self._scrolled)
        self.load_catalog()

    def _scrolled(self, _old: float, _new: float) -> None:
        self.check_read()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "findings_done":  # not on the Back button, which Enter presses
            focused = self.focused
            return self.step == "findings" and focused is not None and focused.id in (
                "findings",
                "next",
            )
        return True

    def action_findings_done(self) -> None:
        self.findings_done()

    def action_next_step(self) -> None:
        """Enter where no control takes it: the options' and the findings' way on."""
        if self.step == "options":
            self.options_done()
        elif self.step == "findings":
            self.findings_done()

    @property
    def step(self) -> str:
        """The name of the step shown."""
        return self.query_one(ContentSwitcher).current or "volume"

    def go(self, step: str) -> None:
        """Show ``step`` and focus its first control."""
        self.query_one(ContentSwitcher).current = step
        self.query_one("#wizard-step", Static).update(TITLES[step])
        on_confirm = step == "confirm"
        self.query_one("#restore", Button).display = on_confirm
        self.query_one("#next", Button).display = step in ("findings",)
        if step == "options":
            # The first box that applies (replaying is off without an increment).
            boxes = [b for b in self.query(OptionBox) if not b.disabled]
            self.set_focus(boxes[0])
            return
        focus = {
            "volume": "#volume",
            "version": "#version",
            "target": "#target",
            "findings": "#findings",
            "confirm": "#confirm-input",
        }[step]
        # At once, not after the next refresh as focus() would: keys already queued
        # behind the one that moved on belong to the new step's control.
        self.set_focus(self.query_one(focus))

    # --- step 1: volume ---------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="wizard")
    def load_catalog(self) -> None:
        try:
            found = self.services.catalog()
        except BlockvaultError as e:
            self.app.call_from_thread(self.show_error, e.message)
            return
        self.app.call_from_thread(self.show_volumes, found)

    def show_error(self, message: str) -> None:
        """Show why the wizard cannot go on (no repository, …)."""
        self.query_one("#volume", OptionList).add_option(Option(escape(message), disabled=True))

    def show_volumes(self, found: Catalog) -> None:
        """List every volume that has images; the one the wizard was opened on first."""
        self.catalog = found
        volumes: dict[str, str] = {}
        for e in found.images:
            v = e.manifest.volume
            volumes.setdefault(v.key, f"{v.key}  ({v.device}, {v.fstype or 'raw'})")
        listing = self.query_one("#volume", OptionList)
        if not volumes:
            listing.add_option(Option("the repository holds no images yet", disabled=True))
            return
        highlight = 0
        for i, (key, label) in enumerate(volumes.items()):
            listing.add_option(Option(escape(label), id=key))
            if self.source and self._is_source(key):
                highlight = i
        listing.highlighted = highlight

    def _is_source(self, key: str) -> bool:
        assert self.catalog is not None
        dev = self.catalog.tree.by_path(self.source or "")
        names = {self.source, *(dev.mount_points if dev else ()), dev.path if dev else None}
        return key in names or any(
            e.manifest.volume.key == key and e.manifest.volume.device in names
            for e in self.catalog.images
        )

    @on(OptionList.OptionSelected, "#volume")
    def volume_chosen(self, event: OptionList.OptionSelected) -> None:
        assert self.catalog is not None
        key = event.option.id or ""
        self.history = self.services.volume_history_in(self.catalog, key)
        self.show_versions(self.history)
        self.go("version")

    # --- step 2: version --------------------------------------------------------------------

    def show_versions(self, history: VolumeHistory) -> None:
        """List the images and increments as restore points, newest first."""
        listing = self.query_one("#version", OptionList)
        listing.clear_options()
        self.points = []
        for t in history.timeline():
            if t.kind == "image":
                point = history.point(image_id=t.id)
                m = point.image.manifest
                label = (
                    f"■ image      {_when(t.finished)}  {m.imagetype}"
                    f"{' fuzzy' if m.fuzzy else ''}  {human_size(m.size)}"
                    f"{'' if point.image.active else '  inactive'}"
                )
            else:
                point = history.point(datetime.fromisoformat(t.finished), incremental=True)
                if point.increment is None or point.increment.id != t.id:
                    continue  # no image finished before it: not a restorable point
                label = (
                    f"│ increment  {_when(t.finished)}  onto image "
                    f"{_when(point.image.manifest.finished)}  ({escape(t.summary)})"
                )
            listing.add_option(Option(label, id=str(len(self.points))))
            self.points.append(point)
        if self.points:
            listing.highlighted = 0
        else:
            listing.add_option(Option("this volume has no restorable image", disabled=True))

    @on(OptionList.OptionSelected, "#version")
    def version_chosen(self, event: OptionList.OptionSelected) -> None:
        assert self.catalog is not None
        self.point = self.points[int(event.option.id or 0)]
        self.show_targets(self.catalog.tree, self.point.image.manifest.volume.device)
        self.go("target")

    # --- step 3: target ---------------------------------------------------------------------

    def show_targets(self, tree: DeviceTree, original: str) -> None:
        """List block devices that can take the image: the original first, then by name.

        Names sort as people count (loop2 before loop10). The devices the root file
        system lies on are listed refused, so the cursor never lands on them.
        """
        assert self.point is not None
        size = self.point.image.manifest.size
        listing = self.query_one("#target", OptionList)
        listing.clear_options()
        root = root_holders(tree)
        devices = sorted(tree, key=lambda d: (d.path != original, natural_key(d.path)))
        for dev in devices:
            words = badges(dev, tree)
            if dev.size < size:
                words.append("too small")
            refused = dev.name in root
            if refused:
                words.append("holds /: refused")
            label = f"{dev.path}  {human_size(dev.size)}  {dev.fstype or 'raw'}"
            if dev.path == original:
                label += "  (original)"
            if words:
                label += "  " + " ".join(f"[{w}]" for w in words)
            listing.add_option(Option(escape(label), id=dev.path, disabled=refused))
        choosable = [i for i, d in enumerate(devices) if d.name not in root]
        listing.highlighted = choosable[0] if choosable else None

    @on(OptionList.OptionSelected, "#target")
    def target_chosen(self, event: OptionList.OptionSelected) -> None:
        assert self.point is not None
        self.dest = event.option.id
        has_increment = self.point.increment is not None
        replay = self.query_one("#opt-incremental", Checkbox)
        replay.value = has_increment
        replay.disabled = not has_increment
        self.query_one("#opt-deletefiles", Checkbox).disabled = not has_increment
        self.go("options")

    @on(Checkbox.Changed, "#opt-incremental")
    def replay_changed(self, event: Checkbox.Changed) -> None:
        deletefiles = self.query_one("#opt-deletefiles", Checkbox)
        deletefiles.disabled = not event.value
        if not event.value:
            deletefiles.value = False

    # --- step 4 → 5: options, then the guards' findings -----------------------------------------

    @on(Button.Pressed, "#options-next")
    def options_done(self) -> None:
        assert self.point is not None and self.dest is not None
        replay = self.query_one("#opt-incremental", Checkbox).value
        inc = self.point.increment if replay else None
        # Everything the confirmation will commit to is fixed here, once: the findings
        # shown and the job queued both come from this request, never from the live
        # checkboxes, and a plan for an older request is dropped when it arrives.
        self.request = PlanRequest(
            point=self.point,
            dest=self.dest,
            increment=inc,
            deletefiles=inc is not None and self.query_one("#opt-deletefiles", Checkbox).value,
            preserve_label=self.query_one("#opt-preserve", Checkbox).value,
            verify=self.query_one("#opt-verify", Checkbox).value,
        )
        self.plan = None
        self.findings_read = False
        scroll = self.query_one("#findings", VerticalScroll)
        scroll.scroll_to(y=0, animate=False)
        self.query_one("#findings-text", Static).update("checking the target…")
        self.query_one("#next", Button).disabled = True
        self.go("findings")
        self.run_plan(self.request)

    @work(thread=True, exclusive=True, exit_on_error=False, group="wizard-plan")
    def run_plan(self, request: PlanRequest) -> None:
        try:
            plan = self.services.plan_restore(
                request.point.image, request.dest, preserve_label=request.preserve_label
            )
        except BlockvaultError as e:
            self.app.call_from_thread(self.show_plan_error, request, e.message)
            return
        self.app.call_from_thread(self.show_plan, request, plan)

    def show_plan_error(self, request: PlanRequest, message: str) -> None:
        """Show why the target cannot be checked (confirming stays impossible)."""
        if request is self.request:
            self.query_one("#findings-text", Static).update(f"[bold red]{escape(message)}[/]")

    def show_plan(self, request: PlanRequest, plan: RestorePlan) -> None:
        """Show every guard's finding; a blocker keeps the confirmation closed."""
        if request is not self.request:
            return  # the user changed the target or the options since: not this plan
        m = request.point.image.manifest
        lines = [
            f"image [b]{m.id}[/b] ({escape(m.volume.key)}, {human_size(m.size)}, "
            f"{m.imagetype}) → [b]{escape(plan.confirm_name)}[/b]"
        ]
        if request.increment is not None:
            inc = request.increment
            lines.append(
                f"then replay increment {inc.id} (finished {_when(inc.finished)})"
                + (", deleting files it does not list" if request.deletefiles else "")
            )
        if request.verify:
            lines.append("then read the target back and compare")
        lines.append("")
        end = (
            "\n[bold red]BLOCKED[/] a blocker cannot be confirmed away; "
            "nothing will be written. Esc goes back."
            if plan.blocked
            else "\nend of findings: Enter goes on to the confirmation"
        )
        self.query_one("#findings-text", Static).update(
            Group(
                Text.from_markup("\n".join(lines)),
                findings_table(plan.findings),
                Text.from_markup(end),
            )
        )
        # The plan counts as shown once its text is laid out: only then is the scroll
        # height known, and "scrolled to the end" means the end of these findings.
        self.call_after_refresh(self._plan_shown, request, plan)

    def _plan_shown(self, request: PlanRequest, plan: RestorePlan) -> None:
        if request is self.request:
            self.plan = plan
            self.check_read()

    def check_read(self) -> None:
        """Open the way on only once the shown plan's findings were scrolled to their end."""
        if self.plan is None:
            return  # nothing to read yet: "checking…" is not a finding
        scroll = self.query_one("#findings", VerticalScroll)
        if scroll.scroll_y >= scroll.max_scroll_y:
            self.findings_read = True
        ready = not self.plan.blocked and self.findings_read
        self.query_one("#next", Button).disabled = not ready

    # --- step 6: typed confirmation -------------------------------------------------------------

    @on(Button.Pressed, "#next")
    def findings_done(self) -> None:
        self.check_read()
        if self.query_one("#next", Button).disabled or self.plan is None:
            if self.plan is None:
                why = "still checking the target…"
            elif self.plan.blocked:
                why = "a blocker cannot be confirmed away"
            else:
                why = "read the findings to their end first (scroll down)"
            self.notify(why, severity="error")
            return
        self.show_confirm(self.plan)
        self.go("confirm")

    def show_confirm(self, plan: RestorePlan) -> None:
        """Echo the target's identity and ask for its exact name."""
        dev = plan.device
        ident = [f"[b]{escape(plan.confirm_name)}[/b] will be overwritten."]
        if dev is not None:
            ident.append(
                f"  size {human_size(dev.size)}, {dev.kind.value}, "
                f"file system {escape(dev.fstype or 'none')}"
                + (f", serial {escape(dev.serial)}" if dev.serial else "")
                + (
                    f", mounted at {escape(', '.join(dev.mount_points))}"
                    if dev.mount_points
                    else ", not mounted"
                )
            )
            if dev.loop is not None:
                ident.append(f"  backing file {escape(dev.loop.backing_file)}")
        warnings = [f for f in plan.findings if f.severity is Severity.WARNING]
        if warnings:
            ident.append(
                f"  {len(warnings)} warning(s) read: " + ", ".join(escape(f.code) for f in warnings)
            )
        request = self.request
        if request is not None:
            m = request.point.image.manifest
            what = f"  with image {m.id} (taken {_when(m.finished)}, {m.imagetype})"
            if request.increment is not None:
                what += f", then increment {request.increment.id}"
                what += " deleting files it does not list" if request.deletefiles else ""
            if request.preserve_label:
                what += ", its own label kept"
            if request.verify:
                what += ", read back and verified"
            ident.append(escape(what))
        ident.append(f"Type [b]{escape(plan.confirm_name)}[/b] and press Enter to restore.")
        self.query_one("#confirm-identity", Static).update("\n".join(ident))
        box = self.query_one("#confirm-input", Input)
        box.value = ""
        self.query_one("#confirm-status", Static).update("nothing has been written")

    @on(Input.Changed, "#confirm-input")
    def typed(self, event: Input.Changed) -> None:
        plan = self.plan
        ok = plan is not None and not plan.blocked and event.value == plan.confirm_name
        self.query_one("#restore", Button).disabled = not ok

    @on(Input.Submitted, "#confirm-input")
    @on(Button.Pressed, "#restore")
    def confirmed(self) -> None:
        typed = self.query_one("#confirm-input", Input).value
        plan, request = self.plan, self.request
        if plan is None or request is None or plan.blocked or typed != plan.confirm_name:
            self.query_one("#confirm-status", Static).update(
                f"[bold red]'{escape(typed)}' does not name "
                f"{escape(plan.confirm_name if plan else 'the target')}; nothing was written[/]"
            )
            return
        self.dismiss(
            RestoreSpec(
                image_id=request.point.image.manifest.id,
                dest=plan.confirm_name,
                confirm=typed,
                expected=plan.identity,
                increment_id=request.increment.id if request.increment else None,
                deletefiles=request.deletefiles,
                preserve_label=request.preserve_label,
                verify=request.verify,
            )
        )

    # --- moving between steps ---------------------------------------------------------------

    @on(Button.Pressed, "#back-button")
    def action_back(self) -> None:
        """Go back one step; leave the wizard from the first."""
        i = STEPS.index(self.step)
        if i == 0:
            self.dismiss(None)
        else:
            self.go(STEPS[i - 1])
