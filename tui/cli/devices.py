"""``blockvault devices`` and ``check-volume``: the block devices and a volume's findings."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tui.cli.output import escape, print_findings
from tui.format import badges, human_size

if TYPE_CHECKING:
    from rich.console import Console
    from rich.tree import Tree

    from core.devices import BlockDevice, DeviceTree


def _device_line(dev: BlockDevice) -> str:
    parts = [f"[bold]{escape(dev.path)}[/]", human_size(dev.size), dev.kind.value]
    if dev.fstype:
        parts.append(escape(dev.fstype))
    if dev.fs_label:
        parts.append(f'"{escape(dev.fs_label)}"')
    if dev.mount_points:
        parts.append(escape(", ".join(dev.mount_points)))
    if dev.loop is not None:
        span = ""
        if dev.loop.offset or dev.loop.size_limit:
            span = f" @{dev.loop.offset}+{dev.loop.size_limit or 'end'}"
        parts.append(f"[dim]← {escape(dev.loop.backing_file)}{span}[/]")
    words = badges(dev)
    if words:
        parts.append(" ".join(f"[reverse] {w} [/]" for w in words))
    return "  ".join(parts)


def cmd_devices(args: argparse.Namespace, out: Console) -> int:
    from core.devices import scan

    tree = scan()
    if args.json:
        print(json.dumps(tree.to_dict(), indent=2))
        return 0
    from rich.tree import Tree

    root = Tree("[bold]block devices[/]", guide_style="dim")
    _add_children(root, tree, tree.roots, frozenset())
    out.print(root)
    if os.geteuid() != 0:
        out.print("[yellow]not root: file systems and labels of unreadable devices are unknown[/]")
    return 0


def _add_children(node: Tree, tree: DeviceTree, names: Sequence[str], seen: frozenset[str]) -> None:
    for name in names:
        dev = tree.devices[name]
        branch = node.add(_device_line(dev))
        children = [c for c in dev.children if c not in seen]
        _add_children(branch, tree, children, seen | {name})


def cmd_check_volume(args: argparse.Namespace, out: Console) -> int:
    from core.preflight import check_volume

    result = check_volume(args.target)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return int(result.return_code)
    if result.volume is not None:
        dev = result.volume.device
        out.print(
            f"[bold]{escape(dev.path)}[/]  {human_size(dev.size)}  {dev.kind.value}  "
            f"{escape(dev.fstype or 'no file system')}"
        )
    print_findings(out, result.findings)
    if result.volume is not None and not result.findings:
        out.print("no findings")
    return int(result.return_code)


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``devices`` and ``check-volume`` to the command line's subparsers."""
    p = sub.add_parser("devices", parents=[common], help="list the machine's block devices")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("check-volume", parents=[common], help="preflight findings for a volume")
    p.add_argument("target", metavar="TARGET", help="block device path or mount point")
    p.set_defaults(func=cmd_check_volume, needs_root=True)
