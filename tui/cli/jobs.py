"""``blockvault agent``, ``blockvault jobs``, and how a command runs its job: here or in the agent.

``backup image`` and ``restore image`` both hand their spec to :func:`run_spec`: with
an agent serving the same repository the job is submitted there and followed to its
end; otherwise it runs in this process through core's one runner.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from core.errors import BlockvaultError, TargetError
from tui.cli.output import end_progress, print_json, progress_printer, stderr_console, with_progress

if TYPE_CHECKING:
    from rich.console import Console

    from core.agent.client import AgentClient
    from core.jobs import JobResult, JobSpec, JobView
    from core.progress import Progress


def run_spec(args: argparse.Namespace, spec: JobSpec) -> JobResult | None:
    """Run ``spec`` in the agent (when one serves ``--repo``) or here; return its result.

    None means the job goes on in the agent without this command: ``--no-wait``, or
    Ctrl-C while following it.
    """
    from core.jobs import JobResult, run_job

    agent = None
    if not getattr(args, "no_agent", False):
        from core.agent import agent_for

        agent, _ = agent_for(args.repo)
    if agent is not None:
        view = submit_and_follow(args, agent, spec)
        if view is None:
            return None
        return JobResult(dict(view.report or {}), view.findings)
    from core.repo.repository import Repository

    return with_progress(
        args,
        lambda progress: run_job(
            spec, lambda create: Repository.open(args.repo, create=create), progress=progress
        ),
    )


def submit_and_follow(
    args: argparse.Namespace, agent: AgentClient, spec: JobSpec
) -> JobView | None:
    """Submit ``spec``; with ``--wait`` (the default) follow it to its end and return its view.

    Ctrl-C detaches (the job keeps running in the agent) and returns None, as does
    ``--no-wait``.
    """
    job_id = agent.submit(spec)
    print(f"blockvault: job {job_id} queued in the agent", file=sys.stderr)
    if not args.wait:
        if args.json:
            print(json.dumps({"job": job_id}))
        agent.close()
        return None
    show = None if args.json else progress_printer(stderr_console())
    seen: list[Progress | None] = [None]

    def changed(changed_id: str) -> None:
        if changed_id == job_id and show is not None:
            p = agent.view(job_id).progress
            if p is not None and p is not seen[0]:
                seen[0] = p
                show(p)

    stop = agent.subscribe(changed)
    try:
        view = agent.wait(job_id)
    except KeyboardInterrupt:
        print(
            f"\nblockvault: detached; job {job_id} keeps running: 'blockvault jobs' shows it",
            file=sys.stderr,
        )
        return None
    finally:
        stop()
        if show is not None:
            end_progress(stderr_console())
        agent.close()
    if view.report is None:
        raise BlockvaultError(view.error or f"job {job_id} ended {view.state.value}")
    return view


def add_agent_options(p: argparse.ArgumentParser) -> None:
    """Add ``--wait/--no-wait`` and ``--no-agent`` to a command that can run in the agent."""
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with a running agent: follow the job to its end (default; Ctrl-C detaches), "
        "or --no-wait to print its id and return",
    )
    p.add_argument(
        "--no-agent",
        action="store_true",
        help="run the job in this process even when an agent runs",
    )


def cmd_agent(args: argparse.Namespace, out: Console) -> int:
    from core.agent import default_socket_path
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
    from core.agent import default_socket_path
    from core.agent.client import AgentClient

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

        print_json({"jobs": [view_to_dict(v, samples=False) for v in views]})
        return 0
    if not views:
        out.print("no jobs")
        return 0
    from tui.cli.output import escape, plain_table
    from tui.format import COLUMNS, row_cells

    table = plain_table()
    for _, heading, _ in COLUMNS:
        table.add_column(heading, no_wrap=True)
    for v in views:
        table.add_row(*(escape(c) for c in row_cells(v)))
    out.print(table)
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``agent`` and ``jobs`` to the command line's subparsers."""
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
