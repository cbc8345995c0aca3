"""``blockvault query image`` and ``query backup``: what the repository holds."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from core.errors import TargetError
from core.repo.catalog import CatalogEntry, catalog
from core.repo.repository import Repository
from tui.cli.output import escape, plain_table, print_json
from tui.format import human_size

if TYPE_CHECKING:
    from rich.console import Console


def select_images(repo: Repository, target: str | None) -> list[CatalogEntry]:
    """Return every image, or those of ``target`` (a device or mount point, gone or not)."""
    from core.history import volume_history

    if target is None:
        return catalog(repo)
    return list(volume_history(repo, target, increments=()).images)


def cmd_query_image(args: argparse.Namespace, out: Console) -> int:
    repo = Repository.open(args.repo, create=False)
    found = select_images(repo, args.target)
    if args.target and not found and not os.path.exists(args.target):
        raise TargetError(
            f"{args.target} does not exist and no images are filed under that name; "
            "'blockvault query image' lists every volume's"
        )
    entries = [e for e in found if e.active or args.inactive]
    if args.json:
        print_json({"images": [e.to_dict() for e in entries]})
        return 0
    if not entries:
        what = f" of {args.target}" if args.target else ""
        out.print(f"no {'' if args.inactive else 'active '}images{escape(what)} in {repo.location}")
        return 0
    # One block per volume, so the rows fit 80 columns without cutting an id.
    by_volume: dict[str, list[CatalogEntry]] = {}
    for e in entries:
        by_volume.setdefault(e.manifest.volume.key, []).append(e)
    for key, group in by_volume.items():
        v = group[0].manifest.volume
        out.print(
            f"[bold]{escape(key)}[/]  ({escape(v.device)}, "
            f"{escape(v.fstype or 'raw')}, host {escape(v.host)})"
        )
        table = plain_table()
        for col in ("image", "taken", "size", "type", "state"):
            table.add_column(col, no_wrap=True)
        for e in group:
            m = e.manifest
            table.add_row(
                m.id,
                m.started[:16].replace("T", " "),
                human_size(m.size),
                m.imagetype + (" fuzzy" if m.fuzzy else ""),
                "active" if e.active else "inactive",
            )
        out.print(table)
    return 0


def cmd_query_backup(args: argparse.Namespace, out: Console) -> int:
    from core.devices import scan
    from core.increments.chain import file_versions
    from core.mounts import mount_containing
    from core.repo.catalog import volume_matches
    from core.targets import target_names

    repo = Repository.open(args.repo, create=False)
    path = os.path.abspath(args.path)
    tree = scan()
    mount = mount_containing(path, tree.mounts)
    device = tree.by_number(mount.major, mount.minor) if mount else None
    if mount is None or device is None:
        raise TargetError(f"{args.path} is not on a mounted volume; give a path on one")
    rel = os.path.relpath(path, mount.mount_point)
    names = target_names(mount.mount_point, device)
    increments = [m for m in repo.increments() if volume_matches(m.volume, names)]
    versions = file_versions(increments, rel)
    if args.json:
        doc = {
            "path": path,
            "volume": mount.mount_point,
            "versions": [v.to_dict() for v in versions],
        }
        print_json(doc)
        return 0
    if not versions:
        out.print(f"no increment of {escape(mount.mount_point)} holds {escape(path)}")
        return 0
    table = plain_table()
    # The increment's id is in --json; its time is what a point-in-time restore takes.
    for col in ("increment taken", "state", "size", "mode", "owner", "modified"):
        table.add_column(col, no_wrap=True)
    for v in versions:
        e = v.entry
        table.add_row(
            v.finished[:19].replace("T", " "),
            v.state,
            human_size(e.size) if e else "",
            oct(e.mode)[2:] if e else "",
            f"{e.uid}:{e.gid}" if e else "",
            _ns_time(e.mtime_ns) if e else "",
        )
    out.print(f"[bold]{escape(path)}[/] on {escape(mount.mount_point)}")
    out.print(table)
    return 0


def _ns_time(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``query image`` and ``query backup`` to the command line's subparsers."""
    query = sub.add_parser("query", help="list images or a file's versions").add_subparsers(
        dest="what", metavar="image|backup", required=True
    )
    p = query.add_parser("backup", parents=[common], help="versions of a file across increments")
    p.add_argument("path", metavar="PATH", help="a file on a mounted volume (absolute path)")
    p.set_defaults(func=cmd_query_backup)

    p = query.add_parser("image", parents=[common], help="list images (of TARGET)")
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.add_argument("--inactive", action="store_true", help="also list inactive versions")
    p.set_defaults(func=cmd_query_image)
