"""The ``blockvault`` command line: TSM-style commands, rich output, ``--json``, TSM return codes.

One module per command family (``devices``, ``backup``, ``query``, ``restore``,
``delete``, ``repo``, ``jobs``); this one builds the parser and runs a command.
Commands render core's results and never re-implement a check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from core.errors import BlockvaultError, NeedsRootError
from core.findings import ReturnCode
from core.repo.repository import REPO_ENV, ROOT_DEFAULT
from tui.cli import backup, delete, devices, jobs, query, repo, restore, serve
from tui.cli.keys import use_terminal_prompt

if TYPE_CHECKING:  # rich is imported only for human output: --json runs start faster
    from rich.console import Console

_TSM_OPTION = re.compile(r"^-([a-z][a-z]+(?:-[a-z]+)*)(=.*)?$")
"""``-imagetype=dynamic``, ``-snapshot-fallback=dynamic``, ``-noprompt``: one dash, a word."""
_FAMILIES = (devices, backup, query, restore, delete, repo, jobs, serve)
"""Each adds its commands, in the order ``--help`` lists them."""


def normalize_tsm_args(argv: Sequence[str]) -> list[str]:
    """Return ``argv`` with TSM single-dash options (``-imagetype=x``) as ``--imagetype=x``."""
    return [f"-{a}" if _TSM_OPTION.match(a) else a for a in argv]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and TSM return code 12.

    Abbreviations are off: ``--image`` must never pass for ``--imagetype``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(int(ReturnCode.FAILED), f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise NeedsRootError(
            f"blockvault {command} must run as root: it reads and writes block devices and "
            "looks at other processes' open files; run it with sudo"
        )


def _add_repo_option(group: Any) -> None:
    group.add_argument(
        "--repo",
        metavar="PATH",
        default=os.environ.get(REPO_ENV) or None,
        help=f"repository (default: ${REPO_ENV}, else {ROOT_DEFAULT} for root)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for every ``blockvault`` command."""
    common = argparse.ArgumentParser(add_help=False)
    _add_repo_option(common)
    common.add_argument("--json", action="store_true", help="print one JSON document")

    parser = _Parser(
        prog="blockvault",
        description="Image backups of Linux volumes. With no command, opens the console.",
    )
    console = parser.add_argument_group("console (no COMMAND)")
    _add_repo_option(console)
    console.add_argument(
        "--theme",
        metavar="NAME",
        help="blockvault-dark, blockvault-light, blockvault-contrast, blockvault-16, "
        "or a theme file's name from ~/.config/blockvault/themes",
    )
    console.add_argument(
        "--read-only", action="store_true", help="hide restore actions (look, back up, never write)"
    )
    console.add_argument(
        "--no-agent",
        action="store_true",
        help="run jobs in the console itself (they stop when it closes)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for family in _FAMILIES:
        family.add_parsers(sub, common)
    return parser


def _console(args: argparse.Namespace) -> Console:
    """Return the console for human output (rich is imported here, not at start-up)."""
    from rich.console import Console

    return Console(highlight=False, quiet=bool(getattr(args, "json", False)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the TSM return code."""
    argv = normalize_tsm_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        from tui.app import run_console

        return run_console(
            repo_location=args.repo,
            theme=args.theme,
            read_only=args.read_only,
            use_agent=not args.no_agent and os.geteuid() == 0,
        )
    out = _console(args)
    use_terminal_prompt()
    try:
        if getattr(args, "needs_root", False):
            _require_root(" ".join(a for a in (args.command, getattr(args, "what", None)) if a))
        return int(args.func(args, out))
    except BlockvaultError as e:
        if getattr(args, "json", False):
            print(json.dumps({"error": e.message, "return_code": int(e.return_code)}))
        print(f"blockvault: {e.message}", file=sys.stderr)
        return int(e.return_code)
    except KeyboardInterrupt:
        print("blockvault: interrupted", file=sys.stderr)
        return int(ReturnCode.FAILED)
    except Exception as e:  # a bug: one line and rc 12, the traceback on request
        if os.environ.get("BLOCKVAULT_DEBUG"):
            raise
        print(
            f"blockvault: internal error: {type(e).__name__}: {e} "
            "(run with BLOCKVAULT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return int(ReturnCode.FAILED)

