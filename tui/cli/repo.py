"""``blockvault repo init|check|prune``: make, verify and tidy the repository."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from core.errors import BlockvaultError
from core.repo.remote import is_remote
from core.repo.repository import Repository, default_location
from core.repo.s3 import is_s3
from tui.cli.keys import cmd_repo_key, init_passphrase, init_result
from tui.cli.output import escape, help_page, print_findings, print_json
from tui.format import human_size

if TYPE_CHECKING:
    from rich.console import Console


def cmd_repo(args: argparse.Namespace, out: Console) -> int:
    from core.repo.check import check_repository, prune_repository

    if args.action == "init":
        location = args.repo or default_location()
        # Backups that leave the machine are sealed unless plain is asked for.
        encryption = args.encryption or (
            "aes-256-gcm" if is_remote(location) or is_s3(location) else "none"
        )
        repo = Repository.init(
            location,
            keep_versions=args.keep_versions,
            encryption=encryption,
            passphrase=init_passphrase(encryption),
        )
        result = init_result(repo)
        if args.json:
            print(json.dumps(result))
        else:
            out.print(
                f"initialised repository {escape(repo.location)} "
                f"(keeps {repo.config.keep_versions} versions per volume; "
                + (
                    f"encrypted with {result['encryption']}: keep the passphrase, and a copy of "
                    "the keys offline ('blockvault repo key export'))"
                    if repo.encrypted
                    else "not encrypted)"
                )
            )
        return 0
    if args.action != "check" and args.read_data:
        raise BlockvaultError("--read-data applies to repo check")
    # check needs no keys: without a passphrase it verifies every object's checksum.
    repo = Repository.open(args.repo, create=False, locked=args.action == "check")
    if args.action == "key":
        return cmd_repo_key(args, repo, out)
    if args.action == "check":
        report = check_repository(repo, read_data=args.read_data)
        if args.json:
            print_json(report.to_dict())
        else:
            out.print(
                f"checked {report.images} images, {report.increments} increments and "
                f"{report.chunks} chunks "
                + (f"({report.packs} packs) " if report.packs else "")
                + f"({human_size(report.bytes_checked)})"
                + (f" in {report.requests} requests" if report.requests is not None else "")
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
            f"kept {pruned.chunks_kept}; "
            + (
                f"deleted {pruned.packs_deleted} packs, rewrote {pruned.packs_repacked} "
                f"into {pruned.packs_written}; "
                if pruned.packs_deleted or pruned.packs_repacked
                else ""
            )
            + f"removed {pruned.temp_files_removed} leftovers"
            + (f" ({pruned.requests} requests)" if pruned.requests is not None else "")
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
            "init: make a repository (--keep-versions N active images per volume; "
            "--encryption seals every object on this host, under keys a passphrase wraps). "
            "check: read every object and verify every hash and reference (rc 12 on damage). "
            "prune: delete chunks no image or increment needs, and leftovers of interrupted "
            "writes. key: list, add, remove or passwd the passphrase-wrapped copies of an "
            "encrypted repository's keys; export prints a key file to keep offline.",
            "blockvault repo init --repo /backup/repo --keep-versions 5",
            "blockvault repo init --repo /backup/vault --encryption aes-256-gcm",
            "blockvault repo check",
            "blockvault repo check --read-data",
            "blockvault repo prune",
            "blockvault repo key add laptop",
            "blockvault repo key export > /root/vault.key",
        ),
    )
    p.add_argument("action", choices=["init", "check", "prune", "key"])
    p.add_argument(
        "key_action",
        nargs="?",
        choices=["list", "add", "remove", "passwd", "export"],
        help="key: what to do with the key copies (default list)",
    )
    p.add_argument("slot", nargs="?", metavar="NAME", help="key: the key copy's name")
    p.add_argument(
        "--encryption",
        choices=["aes-256-gcm", "chacha20-poly1305", "none"],
        default=None,
        help="init: seal every object with this cipher (default none in a directory, "
        "aes-256-gcm on a server); the passphrase is "
        "typed or read from $BLOCKVAULT_PASSPHRASE_FILE / _COMMAND, never an argument",
    )
    p.add_argument(
        "--read-data",
        action="store_true",
        help="check, encrypted repository: open every chunk and verify its content too",
    )
    p.add_argument(
        "--keep-versions",
        type=int,
        default=3,
        metavar="N",
        help="init: active images kept per volume (default 3)",
    )
    p.set_defaults(func=cmd_repo)
