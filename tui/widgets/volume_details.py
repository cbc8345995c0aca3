"""The selected volume: its identity, its findings and its backups as a timeline."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from core.devices import BlockDevice
from core.history import VolumeHistory
from core.preflight import VolumeCheck
from tui.format import findings_table, human_size


def identity_lines(dev: BlockDevice) -> list[str]:
    """Return what identifies a device to a person: path, kind, size, fs, uuid, backing."""
    head = f"[bold]{escape(dev.path)}[/]  {dev.kind.value}  {human_size(dev.size)}"
    head += f"  {escape(dev.fstype or 'raw')}"
    if dev.fs_label:
        head += f" “{escape(dev.fs_label)}”"
    lines = [head]
    if dev.mount_points:
        lines.append(f"mounted at {escape(', '.join(dev.mount_points))}")
    if dev.uuid or dev.serial:
        ids = [f"uuid {dev.uuid}" if dev.uuid else "", f"serial {dev.serial}" if dev.serial else ""]
        lines.append(escape("  ".join(i for i in ids if i)))
    if dev.loop is not None:
        lines.append(f"backing file {escape(dev.loop.backing_file)}")
    return lines


def timeline_lines(history: VolumeHistory) -> list[str]:
    """Return the volume's images and increments, newest first, one line each."""
    entries = history.timeline()
    if not entries:
        return ["no backups yet: [bold]b[/] takes an image"]
    lines = []
    for t in entries:
        when = t.finished[:16].replace("T", " ")
        if t.kind == "image":
            lines.append(f"■ image     {when}  {human_size(t.size)}  {escape(t.summary)}")
        else:
            lines.append(f"│ increment {when}  sent {human_size(t.size)}, {escape(t.summary)}")
    return lines


class VolumeDetails(VerticalScroll):
    """Findings and history of the highlighted volume; renders what the app hands it."""

    DEFAULT_CSS = """
    VolumeDetails { padding: 0 1; }
    VolumeDetails > Static { width: 1fr; }
    VolumeDetails > .heading { text-style: bold; color: $accent; margin-top: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Scanning devices…", id="volume-identity")
        yield Static("findings", classes="heading")
        yield Static("", id="volume-findings")
        yield Static("backups (newest first)", classes="heading")
        yield Static("", id="volume-history")

    def show_identity(self, dev: BlockDevice) -> None:
        """Show what identifies ``dev`` (path, kind, size, fs, mount, uuid, backing file)."""
        self.query_one("#volume-identity", Static).update("\n".join(identity_lines(dev)))

    def show_pending(self, dev: BlockDevice) -> None:
        """Show ``dev``'s identity while its findings and history load."""
        self.show_identity(dev)
        self.query_one("#volume-findings", Static).update("checking…")
        self.query_one("#volume-history", Static).update("reading the repository…")

    def show_group(self, text: str) -> None:
        """Show a line for a node that is not a device."""
        self.query_one("#volume-identity", Static).update(escape(text))
        self.query_one("#volume-findings", Static).update("")
        self.query_one("#volume-history", Static).update("")

    def show_check(self, check: VolumeCheck) -> None:
        """Show a volume's findings (mount checks, labels)."""
        self.query_one("#volume-findings", Static).update(findings_table(check.findings))

    def show_history(self, history: VolumeHistory | None, error: str | None = None) -> None:
        """Show a volume's image history and increments as a timeline."""
        text = escape(error) if error else "\n".join(timeline_lines(history)) if history else ""
        self.query_one("#volume-history", Static).update(text)
