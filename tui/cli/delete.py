"""``blockvault delete backup``: image versions of a volume, by id, inactive, or all (confirmed)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from core.errors import TargetError
from core.repo.repository import Repository
from tui.cli.confirm import confirm_by_name
from tui.cli.output import help_page
from tui.cli.query import select_images

if TYPE_CHECKING:
    from rich.console import Console


def cmd_delete_backup(args: argparse.Namespace, out: Console) -> int:
    if args.objtype not in ("image", "increment"):
        raise TargetError(
            f"--objtype {args.objtype} is not supported; use --objtype image (or increment)"
        )
    repo = Repository.open(args.repo, create=False)
    if args.objtype == "increment":
        deleted = [_delete_damaged_increment(repo, args.increment)]
    elif args.image:
        deleted = [_delete_image_by_id(repo, args.target, args.image)]
    else:
        if args.target is None:
            raise TargetError("delete backup needs TARGET (or --image ID); see --help")
        entries = select_images(repo, args.target)
        victims = entries if not args.inactive else [e for e in entries if not e.active]
        if victims and not args.inactive:
            confirm_by_name(args, args.target, f"delete all {len(victims)} images of {args.target}")
        deleted = [e.manifest.id for e in victims]
        for image_id in deleted:
            repo.delete_image(image_id)
    if args.json:
        print(json.dumps({"deleted": deleted}))
    else:
        out.print(
            f"deleted {len(deleted)} {args.objtype}(s); 'blockvault repo prune' frees their chunks"
        )
    return 0


def _delete_image_by_id(repo: Repository, target: str | None, image_id: str) -> str:
    """Delete one image by id: of ``target`` when given, or a damaged one (its volume unknown)."""
    if image_id not in repo.image_ids():
        raise TargetError(f"the repository has no image {image_id}; see 'blockvault query image'")
    if target is not None:
        ids = {e.manifest.id for e in select_images(repo, target)}
        if image_id not in ids and f"images/{image_id}" not in repo.damaged:
            raise TargetError(
                f"image {image_id} is not one of {target}'s; see 'blockvault query image {target}'"
            )
    repo.delete_image(image_id)
    return image_id


def _delete_damaged_increment(repo: Repository, increment_id: str | None) -> str:
    """Delete an increment whose manifest cannot be read (readable ones go with retention)."""
    if not increment_id:
        raise TargetError("--objtype increment needs --increment ID (a damaged increment's id)")
    if increment_id not in repo.increment_ids():
        raise TargetError(
            f"the repository has no increment {increment_id}; see 'blockvault repo check'"
        )
    repo.increments()
    if f"increments/{increment_id}" not in repo.damaged:
        raise TargetError(
            f"increment {increment_id} is intact: only a damaged increment is deleted by id "
            "(a later increment builds on it)"
        )
    repo.delete_increment(increment_id)
    return increment_id


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``delete backup`` to the command line's subparsers."""
    delete = sub.add_parser("delete", help="delete backups").add_subparsers(
        dest="what", metavar="backup", required=True
    )
    p = delete.add_parser(
        "backup",
        parents=[common],
        help="delete image versions of TARGET",
        **help_page(
            "Delete images of TARGET: one by --image ID, the inactive versions (--inactive), "
            "or all of them (confirmed by --confirm TARGET). A damaged image (its manifest "
            "unreadable, so its volume unknown) is deleted by --image ID alone, and a damaged "
            "increment by --objtype increment --increment ID. 'blockvault repo prune' then "
            "frees the chunks no other backup needs.",
            "blockvault delete backup /srv --objtype image --inactive",
            "blockvault delete backup --objtype image --image 20261126T101010Z-1a2b3c",
            "blockvault delete backup /srv --objtype image --confirm /srv",
        ),
    )
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.add_argument("--objtype", required=True, help="image (or increment, for a damaged one)")
    p.add_argument("--image", metavar="ID", help="only this image")
    p.add_argument(
        "--increment", metavar="ID", help="a damaged increment (with --objtype increment)"
    )
    p.add_argument("--inactive", action="store_true", help="only the inactive versions")
    p.add_argument("--confirm", metavar="NAME", help="TARGET, to delete all its images")
    p.add_argument("--noprompt", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_delete_backup)
