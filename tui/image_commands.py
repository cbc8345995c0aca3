"""The image commands of the command line: backup, query, restore, delete, repo.

They call core and render its results (rich for people, ``--json`` for scripts);
no check is re-implemented here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import BlockvaultError, TargetError
from core.findings import Finding, ReturnCode
from core.repo.catalog import CatalogEntry, catalog, target_names, volume_matches
from core.repo.repository import Repository
from tui.format import SEVERITY_STYLE, human_size

if TYPE_CHECKING:
    from rich.console import Console

    from core.agent.client import AgentClient
    from core.engine.restore import RestorePlan
    from core.increments.chain import RestorePoint
    from core.jobs import BackupSpec, JobSpec, JobView
    from core.progress import Progress

# Each command imports the engine it drives when it runs (not at start-up): a
# scripted backup pays only for the code it uses.
IMAGE_TYPES = ("static", "snapshot", "dynamic")
T = TypeVar("T")


def escape(text: str) -> str:
    """Escape rich markup in ``text`` (rich is imported on first use only)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def stderr_console() -> Console:
    """Return a console on stderr for progress lines."""
    from rich.console import Console

    return Console(stderr=True)


class ConfirmationRefused(BlockvaultError):
    """The user did not confirm a destructive command by the exact name."""


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
        out.file.write(f"\r{p.phase:<10} {pct:5.1f}%  {human_size(int(p.rate))}/s{eta}".ljust(60))
        out.file.flush()

    return show


def _end_progress(out: Console) -> None:
    if out.is_terminal:
        out.file.write("\r" + " " * 60 + "\r")


def open_repo(args: argparse.Namespace, *, create: bool) -> Repository:
    """Open the repository named by ``--repo`` / ``$BLOCKVAULT_REPO`` / the default."""
    return Repository.open(args.repo, create=create)


def confirm_by_name(args: argparse.Namespace, name: str, what: str) -> None:
    """Require ``--confirm NAME`` or, on a terminal, the name typed; raise otherwise."""
    if getattr(args, "noprompt", False):
        raise ConfirmationRefused(
            f"-noprompt is not accepted for {what}: name the target with --confirm {name}"
        )
    given = args.confirm
    if given is None:
        if not sys.stdin.isatty() or args.json:
            raise ConfirmationRefused(
                f"{what} needs confirmation: add --confirm {name}; nothing was changed"
            )
        print(f"This will {what}. Type {name} to confirm: ", end="", file=sys.stderr, flush=True)
        given = sys.stdin.readline().strip()
    if given != name and os.path.realpath(given) != os.path.realpath(name):
        raise ConfirmationRefused(
            f"confirmation '{given}' does not name {name}; nothing was changed"
        )


# --- backup image ----------------------------------------------------------------------


def with_progress(
    args: argparse.Namespace, job: Callable[[Callable[[Progress], None] | None], T]
) -> T:
    """Run ``job(progress)``, drawing a status line on a terminal unless ``--json``."""
    progress = None if args.json else progress_printer(stderr_console())
    try:
        return job(progress)
    finally:
        if progress:
            _end_progress(stderr_console())


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
        print(json.dumps(doc, indent=2))
        return rc
    from rich.table import Table

    table = Table(title=title, show_header=False, box=None)
    for k, v in rows:
        table.add_row(k, escape(v))
    out.print(table)
    print_findings(out, findings)
    return rc


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
        ("read", human_size(d["bytes_read"])),
        ("skipped (unused)", f"{human_size(d['bytes_skipped'])}  [{d['used_method']}]"),
        ("zero", human_size(d["bytes_zero"])),
        (
            "stored new",
            f"{human_size(d['bytes_stored_new'])} from {human_size(d['bytes_new'])}"
            f" (×{d['compression_ratio']:.2f})",
        ),
        ("deduplicated", human_size(d["bytes_dedup"])),
        (
            "chunks",
            f"{d['chunks']} ({d['chunks_new']} new, {d['chunks_dedup']} dedup, "
            f"{d['chunks_zero']} zero)",
        ),
        ("duration", f"{d['duration']:.2f} s ({human_size(int(d['throughput']))}/s)"),
    ]


def backup_spec(args: argparse.Namespace) -> BackupSpec:
    """Return the job ``backup image`` describes."""
    from core.jobs import BackupSpec

    if args.compare_content and args.mode != "incremental":
        raise TargetError("--compare-content applies to --mode incremental")
    return BackupSpec(
        target=args.target,
        mode="incremental" if args.mode == "incremental" else "full",
        imagetype=args.imagetype,
        fallback_dynamic=args.snapshot_fallback == "dynamic",
        snapshot_cache_pct=args.snapshotcachesize,
        gap_size=args.imagegapsize,
        compare_content=args.compare_content,
    )


def cmd_backup_image(args: argparse.Namespace, out: Console) -> int:
    spec = backup_spec(args)
    agent = agent_for(args)
    if agent is not None:
        view = submit_and_follow(args, agent, spec)
        if view is None:
            return 0
        doc, findings = view.report or {}, list(view.findings)
    elif spec.mode == "incremental":
        from core.increments.backup import backup_increment

        repo = open_repo(args, create=False)
        report: Any = with_progress(
            args,
            lambda progress: backup_increment(
                args.target, repo, hash_all=args.compare_content, progress=progress
            ),
        )
        doc, findings = report.to_dict(), report.findings
    else:
        from core.engine.backup import BackupOptions, backup_image
        from core.snapshots import ImageType

        repo = open_repo(args, create=True)
        options = BackupOptions(
            imagetype=ImageType(spec.imagetype) if spec.imagetype else None,
            fallback_dynamic=spec.fallback_dynamic,
            snapshot_cache_pct=spec.snapshot_cache_pct,
            gap_size=args.imagegapsize,
        )
        report = with_progress(
            args, lambda progress: backup_image(args.target, repo, options, progress=progress)
        )
        doc, findings = report.to_dict(), report.findings
    if spec.mode == "incremental":
        title, rows = f"increment {doc['increment_id']}", increment_rows(doc)
    else:
        title, rows = f"image {doc['image_id']}", image_rows(doc)
    return print_report(out, args, doc, findings, title, rows)


# --- the agent ------------------------------------------------------------------------------


def agent_for(args: argparse.Namespace) -> AgentClient | None:
    """Return a client of the agent when one runs on this repository, else None (run here).

    ``--no-agent`` runs here anyway; a job for an agent that serves another
    repository runs here too, so ``--repo`` always means what it says.
    """
    if getattr(args, "no_agent", False):
        return None
    from core.agent import default_socket_path

    path = default_socket_path()
    if not os.path.exists(path):
        return None  # no agent: the HTTP client is not even imported (startup time)
    from core.agent.client import AgentClient, AgentUnavailable
    from core.repo.repository import default_location

    client = AgentClient(path)  # one client: each costs a connection
    try:
        served = client.health().get("repo")
    except AgentUnavailable:
        client.close()
        return None
    if os.path.realpath(str(served)) != os.path.realpath(args.repo or default_location()):
        client.close()
        return None
    return client


def submit_and_follow(
    args: argparse.Namespace, agent: AgentClient, spec: JobSpec
) -> JobView | None:
    """Submit ``spec``; with ``--wait`` (the default) follow it to its end and return its view.

    Ctrl-C detaches (the job keeps running in the agent) and returns None, as does
    ``--no-wait``.
    """
    from core.errors import BlockvaultError

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
            _end_progress(stderr_console())
        agent.close()
    if view.report is None:
        raise BlockvaultError(view.error or f"job {job_id} ended {view.state.value}")
    return view


# --- query image ---------------------------------------------------------------------------


def _select(repo: Repository, target: str | None) -> list[CatalogEntry]:
    from core.history import volume_history

    if target is None:
        return catalog(repo)
    return list(volume_history(repo, target, increments=()).images)


def cmd_query_image(args: argparse.Namespace, out: Console) -> int:
    repo = open_repo(args, create=False)
    entries = [e for e in _select(repo, args.target) if e.active or args.inactive]
    if args.json:
        print(json.dumps({"images": [e.to_dict() for e in entries]}, indent=2))
        return 0
    if not entries:
        what = f" of {args.target}" if args.target else ""
        out.print(f"no {'' if args.inactive else 'active '}images{escape(what)} in {repo.location}")
        return 0
    from rich.table import Table

    # One block per volume, so the rows fit 80 columns without cutting an id.
    by_volume: dict[str, list[CatalogEntry]] = {}
    for e in entries:
        by_volume.setdefault(str(e.manifest.volume.get("key")), []).append(e)
    for key, group in by_volume.items():
        v = group[0].manifest.volume
        out.print(
            f"[bold]{escape(key)}[/]  ({escape(str(v.get('device')))}, "
            f"{escape(str(v.get('fstype') or 'raw'))}, host {escape(str(v.get('host')))})"
        )
        table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
        table.add_column("image", no_wrap=True)
        for col in ("taken", "size", "type", "state"):
            table.add_column(col, no_wrap=True)
        for e in group:
            m = e.manifest
            table.add_row(
                m.id,
                m.started[:16].replace("T", " "),
                human_size(m.size),
                m.imagetype + (" fuzzy" if m.fuzzy else ""),
                "active" if e.active else "inactive",
            )
        out.print(table)
    return 0


def cmd_query_backup(args: argparse.Namespace, out: Console) -> int:
    from core.devices import scan
    from core.increments.chain import file_versions
    from core.mounts import mount_containing

    repo = open_repo(args, create=False)
    path = os.path.abspath(args.path)
    tree = scan()
    mount = mount_containing(path, tree.mounts)
    device = tree.by_number(mount.major, mount.minor) if mount else None
    if mount is None or device is None:
        raise TargetError(f"{args.path} is not on a mounted volume; give a path on one")
    rel = os.path.relpath(path, mount.mount_point)
    rel = "." if rel == "." else rel
    names = target_names(mount.mount_point, device)
    increments = [m for m in repo.increments() if volume_matches(m.volume, names)]
    versions = file_versions(increments, rel)
    if args.json:
        doc = {
            "path": path,
            "volume": mount.mount_point,
            "versions": [v.to_dict() for v in versions],
        }
        print(json.dumps(doc, indent=2))
        return 0
    if not versions:
        out.print(f"no increment of {escape(mount.mount_point)} holds {escape(path)}")
        return 0
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    # The increment's id is in --json; its time is what a point-in-time restore takes.
    for col in ("increment taken", "state", "size", "mode", "owner", "modified"):
        table.add_column(col, no_wrap=True)
    for v in versions:
        e = v.entry
        table.add_row(
            v.finished[:19].replace("T", " "),
            v.state,
            human_size(e.size) if e else "",
            oct(e.mode)[2:] if e else "",
            f"{e.uid}:{e.gid}" if e else "",
            _ns_time(e.mtime_ns) if e else "",
        )
    out.print(f"[bold]{escape(path)}[/] on {escape(mount.mount_point)}")
    out.print(table)
    return 0


def _ns_time(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M")


# --- restore image ----------------------------------------------------------------------------


def _print_plan(out: Console, plan: RestorePlan, entry: CatalogEntry) -> None:
    m = entry.manifest
    out.print(
        f"restore image [bold]{m.id}[/] ({escape(str(m.volume.get('key')))}, "
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
    from core.history import volume_history
    from core.increments.chain import point_in_time

    if args.deletefiles and not args.incremental:
        raise TargetError("--deletefiles applies to --incremental restores; add --incremental")
    if args.incremental and args.imagetofile:
        raise TargetError("--incremental replays files onto a mounted volume: give a device DEST")
    pit = point_in_time(args.pitdate, args.pittime)
    history = volume_history(repo, args.source, increments=None if args.incremental else ())
    return history.point(pit, image_id=args.image, incremental=args.incremental)


def cmd_restore_image(args: argparse.Namespace, out: Console) -> int:
    from core.engine.restore import plan_restore, restore_image
    from core.increments.restore import restore_with_increments

    repo = open_repo(args, create=False)
    point = _restore_point(repo, args)
    entry = point.image
    m = entry.manifest
    dest = args.dest or str(m.volume.get("device"))
    plan = plan_restore(m, dest, repo, to_file=args.imagetofile, preserve_label=args.preserve_label)
    if not args.json:
        _print_plan(out, plan, entry)
        if args.incremental:
            inc = point.increment
            out.print(
                f"  then replay increment {inc.id} (finished {inc.finished[:19]})"
                + (", deleting files it does not list" if args.deletefiles else "")
                if inc
                else "  no increment is newer than this image: nothing to replay"
            )
    refusal = None
    if plan.blocked:
        refusal = "refused: a blocker cannot be confirmed away; nothing was written"
    else:
        try:
            confirm_by_name(
                args, plan.confirm_name, f"overwrite {plan.confirm_name} with image {m.id}"
            )
        except ConfirmationRefused as e:
            refusal = e.message
    if refusal is not None:
        if args.json:
            doc = {
                "image": m.id,
                "increment": point.increment.id if point.increment else None,
                "dest": plan.confirm_name,
                "error": refusal,
                "findings": [f.to_dict() for f in plan.findings],
                "return_code": int(ReturnCode.FAILED),
            }
            print(json.dumps(doc, indent=2))
        print(f"blockvault: {refusal}", file=sys.stderr)
        return int(ReturnCode.FAILED)

    agent = None if args.imagetofile else agent_for(args)
    if agent is not None:
        from core.jobs import RestoreSpec

        inc = point.increment if args.incremental else None
        spec = RestoreSpec(
            image_id=m.id,
            dest=plan.confirm_name,
            confirm=plan.confirm_name,
            expected=plan.identity,
            increment_id=inc.id if inc else None,
            deletefiles=args.deletefiles,
            preserve_label=args.preserve_label,
            verify=args.verifyimage,
        )
        view = submit_and_follow(args, agent, spec)
        if view is None:
            return 0
        doc: dict[str, Any] = dict(view.report or {})
    else:

        def run(progress: Callable[[Progress], None] | None) -> dict[str, Any]:
            if args.incremental:
                return restore_with_increments(
                    point,
                    dest,
                    repo,
                    confirm=plan.confirm_name,
                    delete=args.deletefiles,
                    preserve_label=args.preserve_label,
                    verify=args.verifyimage,
                    progress=progress,
                    expected=plan.identity,
                ).to_dict()
            return restore_image(
                m,
                dest,
                repo,
                confirm=plan.confirm_name,
                to_file=args.imagetofile,
                preserve_label=args.preserve_label,
                verify=args.verifyimage,
                progress=progress,
                expected=plan.identity,
            ).to_dict()

        doc = with_progress(args, run)
    rc = int(doc.get("return_code", 0))
    if args.json:
        print(json.dumps(doc, indent=2))
        return rc
    from core.findings import finding_from_dict

    image = doc["image"] if isinstance(doc.get("image"), dict) else doc
    replayed = doc.get("replay")
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


# --- delete backup ------------------------------------------------------------------------------


def cmd_delete_backup(args: argparse.Namespace, out: Console) -> int:
    if args.objtype != "image":
        raise TargetError(f"--objtype {args.objtype} is not supported; use --objtype image")
    repo = open_repo(args, create=False)
    entries = _select(repo, args.target)
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


# --- repo ------------------------------------------------------------------------------


def cmd_repo(args: argparse.Namespace, out: Console) -> int:
    from core.repo.check import check_repository, prune_repository

    if args.action == "init":
        from core.repo.repository import default_location

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
    repo = open_repo(args, create=False)
    if args.action == "check":
        report = check_repository(repo)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
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
        print(json.dumps(pruned.to_dict()))
    else:
        out.print(
            f"deleted {pruned.chunks_deleted} chunks ({human_size(pruned.bytes_freed)} freed), "
            f"kept {pruned.chunks_kept}; removed {pruned.temp_files_removed} leftovers"
        )
    return 0


def parse_size(text: str) -> int:
    """Parse ``32K``, ``4M``, ``1G`` or bytes, for ``--imagegapsize``."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 32K, 4M or bytes") from None


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


def add_image_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add backup/query/restore/delete/repo to the command line's subparsers."""
    backup = sub.add_parser("backup", help="back up a volume").add_subparsers(
        dest="what", metavar="image", required=True
    )
    p = backup.add_parser("image", parents=[common], help="take an image backup of TARGET")
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
        type=int,
        default=10,
        metavar="PCT",
        help="LVM snapshot size, percent of the origin (default 10)",
    )
    p.add_argument(
        "--imagegapsize",
        type=parse_size,
        default=32 << 10,
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

    query = sub.add_parser("query", help="list images or a file's versions").add_subparsers(
        dest="what", metavar="image|backup", required=True
    )
    p = query.add_parser("backup", parents=[common], help="versions of a file across increments")
    p.add_argument("path", metavar="PATH", help="a file on a mounted volume (absolute path)")
    p.set_defaults(func=cmd_query_backup)

    p = query.add_parser("image", parents=[common], help="list images (of TARGET)")
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.add_argument("--inactive", action="store_true", help="also list inactive versions")
    p.set_defaults(func=cmd_query_image)

    restore = sub.add_parser("restore", help="restore a volume").add_subparsers(
        dest="what", metavar="image", required=True
    )
    p = restore.add_parser("image", parents=[common], help="restore an image of SOURCE to DEST")
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

    p = sub.add_parser("repo", parents=[common], help="init, check or prune the repository")
    p.add_argument("action", choices=["init", "check", "prune"])
    p.add_argument(
        "--keep-versions",
        type=int,
        default=3,
        metavar="N",
        help="init: active images kept per volume (default 3)",
    )
    p.set_defaults(func=cmd_repo)
