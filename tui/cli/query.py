"""``blockvault query image`` and ``query backup``: what the repository holds."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from core import findings as F
from core.errors import TargetError
from core.findings import Finding
from core.repo.catalog import CatalogEntry, catalog
from core.repo.repository import Repository
from tui.cli.output import escape, help_page, plain_table, print_findings, print_json
from tui.format import human_size

if TYPE_CHECKING:
    from rich.console import Console


def select_images(repo: Repository, target: str | None) -> list[CatalogEntry]:
    """Return every image, or those of ``target`` (a device or mount point, gone or not)."""
    from core.history import volume_history

    if target is None:
        return catalog(repo)
    return list(volume_history(repo, target, increments=()).images)


def damaged_findings(repo: Repository) -> list[Finding]:
    """Return a warning per manifest the last listing of ``repo`` could not read."""
    out = []
    for key, damage in sorted(repo.damaged.items()):
        kind, object_id = key.split("/", 1)
        what = kind.removesuffix("s")
        fix = (
            f"delete it with 'blockvault delete backup --objtype image --image {object_id}'"
            if what == "image"
            else "'blockvault repo check' lists what depends on it"
        )
        out.append(
            F.warning(
                "MANIFEST_DAMAGED",
                f"{damage.message}; it is left out, the rest of the repository is usable — {fix}",
                **{what: object_id},
            )
        )
    return out


def cmd_query_image(args: argparse.Namespace, out: Console) -> int:
    repo = Repository.open(args.repo, create=False)
    found = select_images(repo, args.target)
    damaged = damaged_findings(repo)
    if args.target and not found and not os.path.exists(args.target):
        raise TargetError(
            f"{args.target} does not exist and no images are filed under that name; "
            "'blockvault query image' lists every volume's"
        )
    entries = [e for e in found if e.active or args.inactive]
    rc = int(F.return_code(damaged))
    if args.json:
        print_json(
            {
                "images": [e.to_dict() for e in entries],
                "findings": [f.to_dict() for f in damaged],
                "return_code": rc,
            }
        )
        return rc
    print_findings(out, damaged)
    if not entries:
        what = f" of {args.target}" if args.target else ""
        out.print(f"no {'' if args.inactive else 'active '}images{escape(what)} in {repo.location}")
        return rc
    # One block per volume, so the rows fit 80 columns without cutting an id: the
    # volume's size is on its line, and a fuzzy image is marked by a star.
    by_volume: dict[str, list[CatalogEntry]] = {}
    for e in entries:
        by_volume.setdefault(e.manifest.volume.key, []).append(e)
    for key, group in by_volume.items():
        v = group[0].manifest.volume
        out.print(
            f"[bold]{escape(key)}[/]  ({escape(v.device)}, "
            f"{escape(v.fstype or 'raw')}, {human_size(group[0].manifest.size)}, "
            f"host {escape(v.host)})"
        )
        table = plain_table()
        for col in ("image", "taken", "stored", "dedup", "type", "state"):
            table.add_column(col, no_wrap=True, justify="right" if col == "dedup" else "left")
        for e in group:
            m = e.manifest
            stored, dedup = _stored_and_dedup(m.stats)
            table.add_row(
                m.id,
                m.started[:16].replace("T", " "),
                stored,
                dedup,
                m.imagetype + ("*" if m.fuzzy else ""),
                "active" if e.active else "inactive",
            )
        out.print(table)
    if any(e.manifest.fuzzy for e in entries):
        out.print(
            "* fuzzy: taken while the volume was in use (check the file system after restore)"
        )
    out.print(
        "stored: what the image added to the repository, compressed; "
        "dedup: its data the repository already held"
    )
    return rc


def _stored_and_dedup(stats: dict[str, Any]) -> tuple[str, str]:
    """Return the ``stored`` and ``dedup`` cells of an image's row ("-" where not recorded)."""
    stored_new, new, dedup = (
        _count(stats, k) for k in ("bytes_stored_new", "bytes_new", "bytes_dedup")
    )
    if stored_new is None or new is None or dedup is None:
        return "-", "-"
    data = new + dedup
    return human_size(stored_new), f"{100 * dedup // data}%" if data else "-"


def _count(stats: dict[str, Any], key: str) -> int | None:
    v = stats.get(key)
    return v if type(v) is int and v >= 0 else None


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
    p = query.add_parser(
        "backup",
        parents=[common],
        help="versions of a file across increments",
        **help_page(
            "List the versions of PATH (a file on a mounted volume) the increments hold: when "
            "each was taken, and the file's size, mode, owner and time in it.",
            "blockvault query backup /srv/www/index.html",
        ),
    )
    p.add_argument("path", metavar="PATH", help="a file on a mounted volume (absolute path)")
    p.set_defaults(func=cmd_query_backup)

    p = query.add_parser(
        "image",
        parents=[common],
        help="list images (of TARGET)",
        **help_page(
            "List the images of every volume, or of TARGET (a device or mount point, even "
            "one that is gone): newest first, with what each added to the repository and how "
            "much of it was already there. Damaged manifests are reported and left out.",
            "blockvault query image",
            "blockvault query image /srv --inactive",
        ),
    )
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.add_argument("--inactive", action="store_true", help="also list inactive versions")
    p.set_defaults(func=cmd_query_image)
