"""``blockvault delete backup``: image versions of a volume, by id, inactive, or all (confirmed)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from core.errors import TargetError
from core.repo.repository import Repository
from tui.cli.confirm import confirm_by_name
from tui.cli.query import select_images

if TYPE_CHECKING:
    from rich.console import Console


def cmd_delete_backup(args: argparse.Namespace, out: Console) -> int:
    if args.objtype != "image":
        raise TargetError(f"--objtype {args.objtype} is not supported; use --objtype image")
    repo = Repository.open(args.repo, create=False)
    entries = select_images(repo, args.target)
    if args.image:
        victims = [e for e in entries if e.manifest.id == args.image]
        if not victims:
            raise TargetError(
                f"{args.target} has no image {args.image}; see 'blockvault query image'"
            )
    elif args.inactive:
        victims = [e for e in entries if not e.active]
    else:
        victims = entries
        if victims:
            confirm_by_name(args, args.target, f"delete all {len(victims)} images of {args.target}")
    for e in victims:
        repo.delete_image(e.manifest.id)
    if args.json:
        print(json.dumps({"deleted": [e.manifest.id for e in victims]}))
    else:
        out.print(f"deleted {len(victims)} image(s); 'blockvault repo prune' frees their chunks")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``delete backup`` to the command line's subparsers."""
    delete = sub.add_parser("delete", help="delete backups").add_subparsers(
        dest="what", metavar="backup", required=True
    )
    p = delete.add_parser("backup", parents=[common], help="delete image versions of TARGET")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--objtype", required=True, help="image")
    p.add_argument("--image", metavar="ID", help="only this image")
    p.add_argument("--inactive", action="store_true", help="only the inactive versions")
    p.add_argument("--confirm", metavar="NAME", help="TARGET, to delete all its images")
    p.add_argument("--noprompt", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_delete_backup)
