"""``blockvault backup image``: an image backup or a file-level increment of a volume."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.errors import TargetError
from core.units import parse_size
from tui.cli.jobs import add_agent_options, run_spec
from tui.cli.output import help_page, print_report
from tui.format import human_size

if TYPE_CHECKING:
    from rich.console import Console

    from core.jobs import BackupSpec

IMAGE_TYPES = ("static", "snapshot", "dynamic")


def increment_rows(d: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return the rows of an increment's report (its JSON form)."""
    return [
        ("volume", f"{d['device']} at {d['mount_point']}"),
        ("base image", str(d["base_image"])),
        ("previous", d["previous"] or "none (the first increment)"),
        ("files scanned", str(d["files_scanned"])),
        (
            "new / changed",
            f"{d['files_new']} / {d['files_changed']} ({d['files_metadata_only']} metadata only)",
        ),
        ("deleted", str(d["files_deleted"])),
        ("skipped", str(d["files_skipped"])),
        ("read", f"{human_size(d['bytes_read'])} from {d['files_read']} files"),
        ("sent", f"{human_size(d['bytes_sent'])} (deduplicated {human_size(d['bytes_dedup'])})"),
        ("duration", f"{d['duration']:.2f} s (scan {d['scan_seconds']:.2f} s)"),
    ]


def image_rows(d: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return the rows of an image backup's report (its JSON form)."""
    return [
        ("volume", f"{d['device']} ({d['target']})"),
        ("imagetype", d["imagetype"] + (" (fuzzy)" if d["fuzzy"] else "") + f", {d['provider']}"),
        ("volume size", human_size(d["bytes_volume"])),
        ("read from device", human_size(d["bytes_read"])),
        ("not read (unused)", f"{human_size(d['bytes_skipped'])}  [{d['used_method']}]"),
        ("zero, not stored", human_size(d["bytes_zero"])),
        ("new chunk bytes", human_size(d["bytes_new"])),
        (
            "stored compressed",
            human_size(d["bytes_stored_new"])
            + (f" (×{d['compression_ratio']:.2f})" if d.get("compression_ratio") else ""),
        ),
        ("already stored", human_size(d["bytes_dedup"])),
        (
            "chunks",
            f"{d['chunks']} ({d['chunks_new']} new, {d['chunks_dedup']} dedup, "
            f"{d['chunks_zero']} zero)",
        ),
        ("duration", f"{d['duration']:.2f} s ({human_size(int(d['throughput']))}/s read)"),
    ]


def backup_spec(args: argparse.Namespace) -> BackupSpec:
    """Return the job ``backup image`` describes."""
    from core.jobs import BackupSpec

    if args.compare_content and args.mode != "incremental":
        raise TargetError("--compare-content applies to --mode incremental")
    return BackupSpec(
        # The agent runs in /: a relative target would name something else there.
        target=os.path.abspath(args.target),
        mode="incremental" if args.mode == "incremental" else "full",
        imagetype=args.imagetype,
        fallback_dynamic=args.snapshot_fallback == "dynamic",
        snapshot_cache_pct=args.snapshotcachesize,
        gap_size=args.imagegapsize,
        compare_content=args.compare_content,
    )


def cmd_backup_image(args: argparse.Namespace, out: Console) -> int:
    spec = backup_spec(args)
    result = run_spec(args, spec)
    if result is None:  # it goes on in the agent
        return 0
    doc = result.report
    if spec.mode == "incremental":
        title, rows = f"increment {doc['increment_id']}", increment_rows(doc)
    else:
        title, rows = f"image {doc['image_id']}", image_rows(doc)
    return print_report(out, args, doc, result.findings, title, rows)


def percent_argument(text: str) -> int:
    """Parse a percentage from 1 to 100 for argparse."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 1 to 100")
    return value


def size_argument(text: str) -> int:
    """Parse a size option (``32K``, ``4M``, bytes) for argparse."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``backup image`` to the command line's subparsers."""
    backup = sub.add_parser("backup", help="back up a volume").add_subparsers(
        dest="what", metavar="image", required=True
    )
    p = backup.add_parser(
        "image",
        parents=[common],
        help="take an image backup of TARGET",
        **help_page(
            "Take an image of TARGET (a device, or a mount point) into the repository: only "
            "used blocks are read, chunks the repository holds are not stored again. "
            "--imagetype static remounts a mounted volume read-only while it is read; snapshot "
            "reads a consistent copy; dynamic reads it live (marked fuzzy). --mode incremental "
            "backs up the files changed since the last image or increment.",
            "blockvault backup image /srv",
            "blockvault backup image /dev/sdb1 -imagetype=snapshot -snapshot-fallback=dynamic",
            "blockvault backup image /srv --mode incremental",
        ),
    )
    p.add_argument("target", metavar="TARGET", help="block device or mount point")
    p.add_argument(
        "--imagetype",
        choices=IMAGE_TYPES,
        help="static (offline, remount ro), snapshot (online), dynamic (as is, fuzzy); "
        "default: snapshot where possible, else static",
    )
    p.add_argument(
        "--snapshot-fallback",
        choices=["none", "dynamic"],
        default="none",
        help="when no snapshot provider applies: fail (none) or copy as is (dynamic)",
    )
    p.add_argument(
        "--snapshotcachesize",
        type=percent_argument,
        default=10,
        metavar="PCT",
        help="LVM snapshot size, percent of the origin (default 10)",
    )
    p.add_argument(
        "--imagegapsize",
        type=size_argument,
        default=None,
        metavar="SIZE",
        help="smallest unused gap skipped rather than read (default 32K)",
    )
    p.add_argument(
        "--mode",
        choices=["selective", "incremental"],
        default="selective",
        help="selective: a full image (default); incremental: the files changed since the "
        "last increment (the volume needs a full image first)",
    )
    p.add_argument(
        "--compare-content",
        action="store_true",
        help="incremental: hash every file instead of trusting size, mtime and ctime",
    )
    add_agent_options(p)
    p.set_defaults(func=cmd_backup_image, needs_root=True)
