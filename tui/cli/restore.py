"""``blockvault restore image``: guards first, the typed confirmation, then the write."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from core.errors import TargetError
from core.findings import ReturnCode, Severity, finding_from_dict
from core.repo.repository import Repository
from tui.cli.confirm import ConfirmationRefused, confirm_by_name
from tui.cli.jobs import add_agent_options, run_spec
from tui.cli.output import escape, help_page, print_findings, print_json
from tui.cli.query import damaged_findings
from tui.format import human_size

if TYPE_CHECKING:
    from rich.console import Console

    from core.engine.restore import RestorePlan
    from core.increments.chain import RestorePoint
    from core.repo.catalog import CatalogEntry


def _print_plan(out: Console, plan: RestorePlan, entry: CatalogEntry) -> None:
    m = entry.manifest
    out.print(
        f"restore image [bold]{m.id}[/] ({escape(m.volume.key)}, "
        f"{human_size(m.size)}, {m.imagetype}) → [bold]{escape(plan.confirm_name)}[/]"
    )
    dev = plan.device
    if dev is not None:
        ident = [human_size(dev.size), dev.kind.value, dev.fstype or "no file system"]
        if dev.serial:
            ident.append(f"serial {dev.serial}")
        if dev.loop:
            ident.append(f"backing {dev.loop.backing_file}")
        out.print(f"  target: {escape(', '.join(ident))}")
    print_findings(out, plan.findings)


def _restore_point(repo: Repository, args: argparse.Namespace) -> RestorePoint:
    """Return the image (and increment) ``restore image`` uses for SOURCE and the options."""
    from core.engine.restore import RestoreRefused
    from core.history import volume_history
    from core.increments.chain import point_in_time

    if args.deletefiles and not args.incremental:
        raise TargetError("--deletefiles applies to --incremental restores; add --incremental")
    if args.incremental and args.imagetofile:
        raise TargetError("--incremental replays files onto a mounted volume: give a device DEST")
    pit = point_in_time(args.pitdate, args.pittime)
    history = volume_history(repo, args.source, increments=None if args.incremental else ())
    damage = repo.damaged.get(f"images/{args.image}") if args.image else None
    if damage is not None:
        raise RestoreRefused(f"{damage.message}; choose another image (nothing was written)")
    return history.point(pit, image_id=args.image, incremental=args.incremental)


def _refuse(args: argparse.Namespace, point: RestorePoint, plan: RestorePlan, why: str) -> int:
    """Say why nothing was written (and print the findings as JSON with ``--json``)."""
    if args.json:
        print_json(
            {
                "image": point.image.manifest.id,
                "increment": point.increment.id if point.increment else None,
                "dest": plan.confirm_name,
                "error": why,
                "findings": [f.to_dict() for f in plan.findings],
                "return_code": int(ReturnCode.FAILED),
            }
        )
    print(f"blockvault: {why}", file=sys.stderr)
    return int(ReturnCode.FAILED)


def cmd_restore_image(args: argparse.Namespace, out: Console) -> int:
    from core.engine.restore import plan_restore
    from core.increments.restore import recover_replay_mounts
    from core.jobs import RestoreSpec

    repo = Repository.open(args.repo, create=False)
    point = _restore_point(repo, args)
    # An unreadable manifest may have been this volume's newest image or increment: say
    # so before the confirmation, so that an older state is never restored unawares.
    # A restore killed while replaying may have left DEST mounted: unmount it before the
    # guards look, or they would refuse DEST as mounted.
    damaged = [*recover_replay_mounts(), *damaged_findings(repo)]
    if args.json:
        for f in damaged:
            print(f"blockvault: warning: {f.message}", file=sys.stderr)
    m = point.image.manifest
    dest = os.path.abspath(args.dest) if args.dest else m.volume.device
    plan = plan_restore(m, dest, repo, to_file=args.imagetofile, preserve_label=args.preserve_label)
    inc = point.increment if args.incremental else None
    if not args.json:
        print_findings(out, damaged)
        _print_plan(out, plan, point.image)
        if args.incremental:
            out.print(
                f"  then replay increment {inc.id} (finished {inc.finished[:19]})"
                + (", deleting files it does not list" if args.deletefiles else "")
                if inc
                else "  no increment is newer than this image: nothing to replay"
            )
    blockers = [f for f in plan.findings if f.severity is Severity.BLOCKER]
    if blockers:
        first = blockers[0]
        more = f" (and {len(blockers) - 1} more blocker(s))" if len(blockers) > 1 else ""
        return _refuse(
            args,
            point,
            plan,
            f"refused: {first.code}: {first.message}{more}; a blocker cannot be confirmed "
            "away; nothing was written",
        )
    try:
        confirm_by_name(args, plan.confirm_name, f"overwrite {plan.confirm_name} with image {m.id}")
    except ConfirmationRefused as e:
        return _refuse(args, point, plan, e.message)
    spec = RestoreSpec(
        image_id=m.id,
        dest=plan.confirm_name,
        confirm=plan.confirm_name,
        expected=plan.identity,
        increment_id=inc.id if inc else None,
        deletefiles=args.deletefiles,
        preserve_label=args.preserve_label,
        verify=args.verifyimage,
        to_file=args.imagetofile,
    )
    result = run_spec(args, spec)
    if result is None:  # it goes on in the agent
        return 0
    doc = result.report
    rc = int(doc.get("return_code", 0))
    if args.json:
        print_json(doc)
        return rc
    image, replayed = doc["image"], doc.get("replay")
    out.print(
        f"restored {human_size(image['bytes_written'])} of data and zeroed "
        f"{human_size(image['bytes_zeroed'])} in {image['duration']:.2f} s"
        + ("; verified by reading back" if image.get("verified") else "")
    )
    if replayed:
        out.print(
            f"replayed increment {doc.get('increment')}: {replayed['files_created']} created, "
            f"{replayed['files_replaced']} replaced, {replayed['metadata_updated']} metadata "
            f"updated, {replayed['deleted']} deleted, {human_size(replayed['bytes_written'])} "
            "written"
        )
        print_findings(out, [finding_from_dict(f) for f in replayed.get("findings", ())])
    fsck = [finding_from_dict(f) for f in image.get("findings", ()) if f["code"].startswith("FSCK")]
    print_findings(out, fsck)
    return rc


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``restore image`` to the command line's subparsers."""
    restore = sub.add_parser("restore", help="restore a volume").add_subparsers(
        dest="what", metavar="image", required=True
    )
    p = restore.add_parser(
        "image",
        parents=[common],
        help="restore an image of SOURCE to DEST",
        **help_page(
            "Restore an image of SOURCE (the volume it was taken from) onto DEST, or back onto "
            "the original device. The target's findings are shown first; nothing is written "
            "until DEST's exact name is typed (or given with --confirm). --incremental then "
            "replays the newest increment (or the one of --pitdate/--pittime) onto it.",
            "blockvault restore image /srv /dev/sdc1",
            "blockvault restore image /srv /dev/sdc1 --incremental --deletefiles",
            "blockvault restore image /srv /dev/sdc1 -pitdate=12/02/2026 -pittime=10:00:00 "
            "--incremental",
            "blockvault restore image /srv /tmp/srv.img --imagetofile",
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="the volume the image was taken from")
    p.add_argument("dest", metavar="DEST", nargs="?", help="default: the original device")
    p.add_argument("--image", metavar="ID", help="image version (default: newest active)")
    p.add_argument("--imagetofile", action="store_true", help="restore into a regular file DEST")
    p.add_argument("--verifyimage", action="store_true", help="read DEST back and compare")
    p.add_argument(
        "--preserve-label",
        action="store_true",
        help="leave DEST's disk label area (sector 0 / VTOC, GPT headers) untouched",
    )
    p.add_argument(
        "--incremental", action="store_true", help="replay the file increments onto the image"
    )
    p.add_argument(
        "--deletefiles",
        action="store_true",
        help="with --incremental: delete files the chosen increment no longer lists",
    )
    p.add_argument("--pitdate", metavar="YYYY-MM-DD", help="restore the state as of this date")
    p.add_argument("--pittime", metavar="HH:MM:SS", help="with --pitdate: the time of day")
    p.add_argument(
        "--confirm", metavar="NAME", help="DEST's exact name: required without a terminal"
    )
    p.add_argument("--noprompt", action="store_true", help=argparse.SUPPRESS)
    add_agent_options(p)
    p.set_defaults(func=cmd_restore_image, needs_root=True)
