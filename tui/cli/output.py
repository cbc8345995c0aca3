"""How the command line prints: findings, progress lines and job reports (rich or ``--json``).

It renders core's results and never re-implements a check. rich is imported on
first use only, so a ``--json`` run starts faster.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from core.findings import Finding
from tui.format import SEVERITY_STYLE, human_size

if TYPE_CHECKING:
    from rich.console import Console

    from core.progress import Progress

T = TypeVar("T")
_STATUS_WIDTH = 60


def escape(text: str) -> str:
    """Escape rich markup in ``text``."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def stderr_console() -> Console:
    """Return a console on stderr for progress lines."""
    from rich.console import Console

    return Console(stderr=True)


def print_findings(out: Console, findings: Sequence[Finding]) -> None:
    """Print one line per finding, its severity as a word (never colour alone)."""
    for f in findings:
        style = SEVERITY_STYLE[f.severity]
        out.print(f"[{style}]{f.severity.word:<7}[/] {f.code}: {escape(f.message)}", soft_wrap=True)


def progress_printer(out: Console) -> Callable[[Progress], None] | None:
    """Return a progress callback that redraws one status line on a terminal, else None."""
    if not out.is_terminal:
        return None

    def show(p: Progress) -> None:
        pct = 100 * p.done / p.total if p.total else 100.0
        eta = f"  ETA {p.eta:.0f}s" if p.eta is not None else ""
        line = f"\r{p.phase:<10} {pct:5.1f}%  {human_size(int(p.rate))}/s{eta}"
        out.file.write(line.ljust(_STATUS_WIDTH))
        out.file.flush()

    return show


def end_progress(out: Console) -> None:
    """Clear the status line :func:`progress_printer` drew."""
    if out.is_terminal:
        out.file.write("\r" + " " * _STATUS_WIDTH + "\r")


def with_progress(
    args: argparse.Namespace, job: Callable[[Callable[[Progress], None] | None], T]
) -> T:
    """Run ``job(progress)``, drawing a status line on a terminal unless ``--json``."""
    progress = None if args.json else progress_printer(stderr_console())
    try:
        return job(progress)
    finally:
        if progress:
            end_progress(stderr_console())


def print_json(doc: Any) -> None:
    """Print ``doc`` as the one JSON document of a ``--json`` run."""
    print(json.dumps(doc, indent=2))


def print_report(
    out: Console,
    args: argparse.Namespace,
    doc: Mapping[str, Any],
    findings: Sequence[Finding],
    title: str,
    rows: Sequence[tuple[str, str]],
) -> int:
    """Print a job's JSON report ``doc`` (a two-column table and its findings, or ``--json``).

    Returns the report's TSM return code.
    """
    rc = int(doc.get("return_code", 0))
    if args.json:
        print_json(doc)
        return rc
    from rich.table import Table

    table = Table(title=title, show_header=False, box=None)
    for k, v in rows:
        table.add_row(k, escape(v))
    out.print(table)
    print_findings(out, findings)
    return rc


def plain_table() -> Any:
    """Return a rich table without borders that fits 80 columns (bold headers, two-space gaps)."""
    from rich.table import Table

    return Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))


def help_page(description: str, *examples: str) -> dict[str, Any]:
    """Return the ``add_parser`` keywords for a command's ``--help``: what it does, examples."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    return {"description": description, "epilog": epilog, "formatter_class": _HelpFormatter}


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps a description to the terminal; keeps the examples one per line, as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
