"""The machine's block devices as a tree: disks → partitions → holders, and a RAW group."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from core.devices import BlockDevice, DeviceTree
from tui.format import badges, short_size

RAW_GROUP = "RAW"
"""The group that lists volumes without a file system again, as the guide's GUI does."""


def device_label(dev: BlockDevice, tree: DeviceTree, *, busy: bool = False) -> Text:
    """Return one tree line: name, size, file system, mount point and state words."""
    text = Text(dev.name, style="bold")
    text.append(f" {short_size(dev.size)}")
    if dev.fstype:
        text.append(f" {dev.fstype}")
    # State words before the mount point, so a narrow pane cuts the path, not the state;
    # "mounted" is said by the mount point itself.
    for word in badges(dev, tree, busy=busy):
        if not (word == "mounted" and dev.mount_points):
            text.append(f" [{word}]", style="italic")
    if dev.mount_points:
        text.append(f" {dev.mount_points[0]}")
    return text


def _matches(dev: BlockDevice, needle: str) -> bool:
    hay = " ".join([dev.name, dev.path, dev.fstype or "raw", *dev.mount_points, dev.fs_label or ""])
    return needle in hay.lower()


class DeviceTreeView(Tree[str]):
    """The device tree; node data is the device name (None for group nodes).

    ``show_devices`` rebuilds it from a scan, keeping the highlighted device, so a
    rescan (on demand or when devices come and go) never loses the user's place.
    Letters typed here are commands (the app's keys), never filter text: only ``/``
    opens the filter, so a word typed in the wrong place cannot start a backup.
    """

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="tree.down"),
        Binding("k", "cursor_up", "Up", show=False, id="tree.up"),
        Binding("g", "scroll_home", "Top", show=False, id="tree.top"),
        Binding("G", "scroll_end", "Bottom", show=False, id="tree.bottom"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("block devices", id=id)
        self.show_root = False
        self.guide_depth = 2
        self.data_tree: DeviceTree | None = None
        self.filter_text = ""
        self.busy: frozenset[str] = frozenset()

    def render_label(self, node: TreeNode[str], base_style: Style, style: Style) -> Text:
        """Return the node's line, cut with … where the pane is too narrow for all of it.

        Without the ellipsis a cut line reads as whole: ``[cyl0`` or ``/srv/da`` look
        like a state word and a mount point.
        """
        text = super().render_label(node, base_style, style)
        depth = 0
        parent = node.parent
        while parent is not None and parent is not self.root:
            depth += 1
            parent = parent.parent
        room = self.scrollable_content_region.width - depth * self.guide_depth
        if 0 < room < text.cell_len:
            text.truncate(room, overflow="ellipsis")
        return text

    @property
    def selected(self) -> BlockDevice | None:
        """Return the highlighted device (None on a group node or before the first scan)."""
        node = self.cursor_node
        if node is None or node.data is None or self.data_tree is None:
            return None
        return self.data_tree.devices.get(node.data)

    def show_devices(self, tree: DeviceTree | None = None) -> None:
        """Rebuild the tree from ``tree`` (or the last scan), applying the filter."""
        if tree is not None:
            self.data_tree = tree
        tree = self.data_tree
        if tree is None:
            return
        keep = self.cursor_node.data if self.cursor_node else None
        self.clear()
        needle = self.filter_text.lower()
        shown: dict[str, TreeNode[str]] = {}

        def visible(name: str, seen: frozenset[str]) -> bool:
            dev = tree.devices[name]
            if not needle or _matches(dev, needle):
                return True
            return any(visible(c, seen | {c}) for c in dev.children if c not in seen)

        def add(parent: TreeNode[str], name: str, seen: frozenset[str]) -> None:
            dev = tree.devices[name]
            node = parent.add(device_label(dev, tree, busy=dev.path in self.busy), data=name)
            node.expand()
            shown.setdefault(name, node)
            children = [c for c in dev.children if c not in seen and visible(c, seen | {c})]
            if not children:
                node.allow_expand = False
            for child in children:
                add(node, child, seen | {child})

        for root in tree.roots:
            if visible(root, frozenset({root})):
                add(self.root, root, frozenset({root}))
        raw = [d for d in tree if d.is_raw and (not needle or _matches(d, needle))]
        if raw:
            group = self.root.add(Text(f"{RAW_GROUP} ({len(raw)})", style="bold"), data=None)
            group.expand()
            for dev in raw:
                label = device_label(dev, tree, busy=dev.path in self.busy)
                leaf = group.add_leaf(label, data=dev.name)
                shown.setdefault(dev.name, leaf)
        # The tree lays its lines out lazily, and a node without a line yet would put the
        # cursor on line 0: asking for the last line builds them first.
        _ = self.last_line
        if keep in shown:
            self.move_cursor(shown[keep])
        elif shown:
            self.move_cursor(next(iter(shown.values())))

    def set_filter(self, text: str) -> None:
        """Show only devices whose name, path, fs, mount point or label contain ``text``."""
        if text != self.filter_text:
            self.filter_text = text
            self.show_devices()

    def set_busy(self, devices: frozenset[str]) -> None:
        """Mark the devices jobs run on (``busy``), repainting only on change."""
        if devices != self.busy:
            self.busy = devices
            self.show_devices()
