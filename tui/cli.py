"""The ``blockvault`` command line: TSM-style commands, rich output, ``--json``, TSM return codes.

It renders core's results and never re-implements a check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from core.errors import BlockvaultError, NeedsRootError, TargetError
from core.findings import ReturnCode
from core.repo.repository import REPO_ENV, ROOT_DEFAULT
from tui.format import SEVERITY_STYLE, badges, human_size
from tui.image_commands import add_image_commands

if TYPE_CHECKING:  # rich is imported only for human output: --json runs start faster
    from rich.console import Console
    from rich.tree import Tree

    from core.devices import BlockDevice, DeviceTree

_TSM_OPTION = re.compile(r"^-([a-z][a-z]+)(=.*)?$")


def normalize_tsm_args(argv: Sequence[str]) -> list[str]:
    """Return ``argv`` with TSM single-dash options (``-imagetype=x``) as ``--imagetype=x``."""
    return [f"-{a}" if _TSM_OPTION.match(a) else a for a in argv]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and TSM return code 12."""

    def error(self, message: str) -> NoReturn:
        self.exit(int(ReturnCode.FAILED), f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise NeedsRootError(
            f"blockvault {command} must run as root: it reads and writes block devices and "
            "looks at other processes' open files; run it with sudo"
        )


def _device_line(dev: BlockDevice) -> str:
    from rich.markup import escape

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
    from rich.markup import escape

    if result.volume is not None:
        dev = result.volume.device
        out.print(
            f"[bold]{escape(dev.path)}[/]  {human_size(dev.size)}  {dev.kind.value}  "
            f"{escape(dev.fstype or 'no file system')}"
        )
    for f in result.findings:
        style = SEVERITY_STYLE[f.severity]
        out.print(
            f"[{style}]{f.severity.word:<7}[/] {f.code}: {escape(f.message)}",
            soft_wrap=True,
        )
    if result.volume is not None and not result.findings:
        out.print("no findings")
    return int(result.return_code)


def cmd_agent(args: argparse.Namespace, out: Console) -> int:
    from core.agent.client import default_socket_path
    from core.agent.server import serve
    from core.agent.store import default_db_path

    serve(
        args.socket or default_socket_path(),
        repo_location=args.repo,
        db_path=args.db or default_db_path(),
        max_running=args.max_running,
    )
    return 0


def cmd_jobs(args: argparse.Namespace, out: Console) -> int:
    from core.agent.client import AgentClient, default_socket_path

    client = AgentClient(default_socket_path())
    try:
        if args.action in ("cancel", "rerun"):
            if args.job is None:
                raise TargetError(
                    f"jobs {args.action} needs a job id: blockvault jobs {args.action} ID"
                )
            if args.action == "cancel":
                done = client.cancel(args.job)
                doc: dict[str, object] = {"job": args.job, "cancelled": done}
                text = f"job {args.job}: " + ("cancel requested" if done else "already ended")
            else:
                new = client.rerun(args.job)
                doc = {"job": args.job, "rerun": new}
                text = f"job {args.job} queued again as job {new}"
            if args.json:
                print(json.dumps(doc))
            else:
                out.print(text)
            return 0
        views = client.views()
    finally:
        client.close()
    if args.json:
        from core.jobs import view_to_dict

        print(json.dumps({"jobs": [view_to_dict(v, samples=False) for v in views]}, indent=2))
        return 0
    if not views:
        out.print("no jobs")
        return 0
    from rich.markup import escape
    from rich.table import Table

    from tui.format import COLUMNS, row_cells

    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    for _, heading, _ in COLUMNS:
        table.add_column(heading, no_wrap=True)
    for v in views:
        table.add_row(*(escape(c) for c in row_cells(v)))
    out.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for every ``blockvault`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--repo",
        metavar="PATH",
        default=os.environ.get(REPO_ENV) or None,
        help=f"repository (default: ${REPO_ENV}, else {ROOT_DEFAULT} for root)",
    )
    common.add_argument("--json", action="store_true", help="print one JSON document")

    parser = _Parser(
        prog="blockvault",
        description="Image backups of Linux volumes. With no command, opens the console.",
    )
    console = parser.add_argument_group("console (no COMMAND)")
    console.add_argument(
        "--repo",
        metavar="PATH",
        default=os.environ.get(REPO_ENV) or None,
        help=f"repository (default: ${REPO_ENV}, else {ROOT_DEFAULT} for root)",
    )
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

    p = sub.add_parser("devices", parents=[common], help="list the machine's block devices")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("check-volume", parents=[common], help="preflight findings for a volume")
    p.add_argument("target", metavar="TARGET", help="block device path or mount point")
    p.set_defaults(func=cmd_check_volume, needs_root=True)

    add_image_commands(sub, common)

    p = sub.add_parser(
        "agent", parents=[common], help="run the job queue that outlives the console"
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="default: $BLOCKVAULT_AGENT_SOCKET, else /run/blockvault/agent.sock",
    )
    p.add_argument(
        "--db",
        metavar="PATH",
        help="job history (default: $BLOCKVAULT_AGENT_DB, else /var/lib/blockvault/agent.db)",
    )
    p.add_argument(
        "--max-running",
        type=int,
        default=2,
        metavar="N",
        help="jobs at once (never two on one volume; default 2)",
    )
    p.set_defaults(func=cmd_agent, needs_root=True)

    p = sub.add_parser("jobs", parents=[common], help="the agent's jobs: list, cancel, rerun")
    p.add_argument("action", nargs="?", choices=["list", "cancel", "rerun"], default="list")
    p.add_argument("job", nargs="?", metavar="ID")
    p.set_defaults(func=cmd_jobs)
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


if __name__ == "__main__":
    sys.exit(main())
