"""``blockvault repo init|check|prune``: make, verify and tidy the repository."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from core.repo.repository import Repository, default_location
from tui.cli.output import escape, help_page, print_findings, print_json
from tui.format import human_size

if TYPE_CHECKING:
    from rich.console import Console


def cmd_repo(args: argparse.Namespace, out: Console) -> int:
    from core.repo.check import check_repository, prune_repository

    if args.action == "init":
        repo = Repository.init(args.repo or default_location(), keep_versions=args.keep_versions)
        result: dict[str, Any] = {
            "location": repo.location,
            "id": repo.config.id,
            "keep_versions": repo.config.keep_versions,
        }
        if args.json:
            print(json.dumps(result))
        else:
            out.print(
                f"initialised repository {escape(repo.location)} "
                f"(keeps {repo.config.keep_versions} versions per volume)"
            )
        return 0
    repo = Repository.open(args.repo, create=False)
    if args.action == "check":
        report = check_repository(repo)
        if args.json:
            print_json(report.to_dict())
        else:
            out.print(
                f"checked {report.images} images, {report.increments} increments and "
                f"{report.chunks} chunks "
                f"({human_size(report.bytes_checked)})"
            )
            print_findings(out, report.findings)
            if report.return_code == 0:
                out.print("repository is healthy")
        return int(report.return_code)
    pruned = prune_repository(repo)
    if args.json:
        print_json(pruned.to_dict())
    else:
        out.print(
            f"deleted {pruned.chunks_deleted} chunks ({human_size(pruned.bytes_freed)} freed), "
            f"kept {pruned.chunks_kept}; removed {pruned.temp_files_removed} leftovers"
        )
        print_findings(out, pruned.findings)
    return int(pruned.return_code)


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``repo`` to the command line's subparsers."""
    p = sub.add_parser(
        "repo",
        parents=[common],
        help="init, check or prune the repository",
        **help_page(
            "init: make a repository (--keep-versions N active images per volume). check: "
            "read every object and verify every hash and reference (rc 12 on damage). prune: "
            "delete chunks no image or increment needs, and leftovers of interrupted writes.",
            "blockvault repo init --repo /backup/repo --keep-versions 5",
            "blockvault repo check",
            "blockvault repo prune",
        ),
    )
    p.add_argument("action", choices=["init", "check", "prune"])
    p.add_argument(
        "--keep-versions",
        type=int,
        default=3,
        metavar="N",
        help="init: active images kept per volume (default 3)",
    )
    p.set_defaults(func=cmd_repo)
