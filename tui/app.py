"""The blockvault console: the machine's block devices as a tree, and a volume's findings.

Every scan runs in a thread worker and reports back through messages, so the
UI never waits on sysfs, a slow device or ``/proc``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Header, Static, Tree
from textual.worker import Worker, WorkerState

from core.devices import BlockDevice, DeviceTree, scan
from core.preflight import VolumeCheck, check_volume
from tui.format import SEVERITY_STYLE, badges, human_size


@dataclass
class DevicesScanned(Message):
    """A device scan finished."""

    tree: DeviceTree


@dataclass
class VolumeChecked(Message):
    """The findings for one device are ready."""

    check: VolumeCheck


def device_label(dev: BlockDevice) -> Text:
    """Return one tree line: name, size, file system, mount point and state words."""
    text = Text(dev.name, style="bold")
    text.append(f"  {human_size(dev.size)}")
    text.append(f"  {dev.fstype or 'raw'}")
    if dev.mount_points:
        text.append(f"  {dev.mount_points[0]}")
    for word in badges(dev):
        text.append(f" [{word}]", style="italic")
    return text


class BlockvaultApp(App[int]):
    """The console's first screen: device tree on the left, details on the right."""

    TITLE = "blockvault"
    CSS = """
    #devices { width: 1fr; min-width: 30; border: round $primary; }
    #details { width: 1fr; border: round $secondary; padding: 0 1; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("r", "refresh", "Refresh", id="devices.refresh"),
        Binding("j", "cursor_down", "Down", show=False, id="tree.down"),
        Binding("k", "cursor_up", "Up", show=False, id="tree.up"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.tree_data: DeviceTree | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            tree: Tree[str] = Tree("block devices", id="devices")
            tree.show_root = False
            yield tree
            with VerticalScroll(id="details"):
                yield Static("Scanning devices…", id="details-text")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#devices", Tree).focus()
        self.action_refresh()

    def action_refresh(self) -> None:
        """Rescan the machine's block devices in a worker."""
        self.scan_devices()

    def action_cursor_down(self) -> None:
        self.query_one("#devices", Tree).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one("#devices", Tree).action_cursor_up()

    @work(thread=True, exclusive=True, exit_on_error=False, group="scan")
    def scan_devices(self) -> None:
        self.post_message(DevicesScanned(scan()))

    @work(thread=True, exclusive=True, exit_on_error=False, group="check")
    def check_device(self, path: str) -> None:
        self.post_message(VolumeChecked(check_volume(path)))

    @on(DevicesScanned)
    def show_devices(self, message: DevicesScanned) -> None:
        self.tree_data = message.tree
        widget = self.query_one("#devices", Tree)
        # Keep the highlighted device across a refresh, so a rescan never loses the user's place.
        keep = widget.cursor_node.data if widget.cursor_node else None
        widget.clear()
        nodes = {}

        def add(parent, name: str, seen: frozenset[str]) -> None:  # type: ignore[no-untyped-def]
            dev = message.tree.devices[name]
            node = parent.add(device_label(dev), data=name, expand=True)
            nodes[name] = node
            children = [c for c in dev.children if c not in seen]
            if not children:
                node.allow_expand = False
            for child in children:
                add(node, child, seen | {child})

        for root in message.tree.roots:
            add(widget.root, root, frozenset({root}))
        if keep in nodes:
            widget.move_cursor(nodes[keep])
        elif nodes:
            widget.move_cursor(next(iter(nodes.values())))

    @on(Tree.NodeHighlighted, "#devices")
    def device_highlighted(self, event: Tree.NodeHighlighted[str]) -> None:
        if self.tree_data is None or event.node.data is None:
            return
        dev = self.tree_data.devices.get(event.node.data)
        if dev is None:
            return
        self.query_one("#details-text", Static).update(f"{escape(dev.path)}: checking…")
        self.check_device(dev.path)

    @on(VolumeChecked)
    def show_check(self, message: VolumeChecked) -> None:
        check = message.check
        lines: list[str] = []
        if check.volume is not None:
            dev = check.volume.device
            lines.append(f"[bold]{escape(dev.path)}[/]  {dev.kind.value}  {human_size(dev.size)}")
            lines.append(
                f"file system: {escape(dev.fstype or 'none (raw)')}"
                + (f"  label: {escape(dev.fs_label)}" if dev.fs_label else "")
            )
            if dev.uuid:
                lines.append(f"uuid: {escape(dev.uuid)}")
            if dev.loop is not None:
                lines.append(f"backing file: {escape(dev.loop.backing_file)}")
            lines.append("")
        for f in check.findings:
            style = SEVERITY_STYLE[f.severity]
            lines.append(f"[{style}]{f.severity.word.upper()}[/] {f.code}")
            lines.append(f"  {escape(f.message)}")
        if not check.findings:
            lines.append("no findings")
        self.query_one("#details-text", Static).update("\n".join(lines))

    @on(Worker.StateChanged)
    def worker_failed(self, event: Worker.StateChanged) -> None:
        # One place for every worker failure: a scan error must be visible, never a hang.
        if event.state is WorkerState.ERROR:
            self.notify(str(event.worker.error), title="error", severity="error", timeout=10)


def run_console() -> int:
    """Open the console; return its exit code."""
    return BlockvaultApp().run() or 0
