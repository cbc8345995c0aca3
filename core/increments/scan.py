"""scan_tree: every entry of one mounted file system, parents first, as a manifest lists them.

The walk stays on the file system it starts on: a mount point below the root is
recorded as its directory but not descended (its files belong to another volume),
and reported. Directories are opened relative to their parent's descriptor with
``O_NOFOLLOW``, so a directory swapped for a symlink mid-scan cannot lead the walk
off the volume.

Speed is the point here: an increment of an unchanged file system is mostly this
walk. Each directory is listed once, its entries are ``lstat``-ed by name relative
to the directory's descriptor (no path lookups from the root), entries are built
without the dataclass constructor's per-field cost, the garbage collector is held
off while they pile up, and the per-directory lists are stitched together in path
order at the end instead of sorting all paths. ``workers=2`` lets a second thread
take over subtrees; on the machine measured it only made things slower (see
``DEFAULT_WORKERS``), but on storage with long latencies it may pay.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import ClassVar

from core.mounts import read_mounts
from core.progress import Cancelled
from core.repo.filemanifest import FAST_ENTRIES, FileEntry, gc_paused

_KIND_OF = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_IFREG, _IFDIR, _IFLNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
_IFCHR, _IFBLK = stat.S_IFCHR, stat.S_IFBLK
_BY_PATH = attrgetter("path")

DEFAULT_WORKERS = 1
"""Threads of the walk. A second one made it slower here, warm and cold alike: every
``lstat`` releases the GIL, and with two threads each release is a hand-over between
them (bench/scan_bench.py; bench/RESULTS.md, "Increment scan")."""


@dataclass(frozen=True)
class ScanProblem:
    """A path the scan could not look into (its entries are missing from the result)."""

    path: str
    error: str
    kind: str = "unreadable"
    """``unreadable``: a directory that could not be listed; ``unstattable``: an entry
    whose ``lstat`` failed; ``unknown-type``: a file type the manifest has no letter for."""

    def to_dict(self) -> dict[str, str]:
        """Return the JSON form a manifest's ``problems`` hold."""
        return {"kind": self.kind, "path": self.path, "error": self.error}


@dataclass
class ScanResult:
    """What :func:`scan_tree` saw."""

    entries: list[FileEntry]
    """Every entry, parents first (the order of :func:`~core.repo.filemanifest.entries_sorted`);
    ``chunks`` are empty; ``link`` names the first path of a hard-linked inode."""
    device: int
    """``st_dev`` of the root: the file system the walk stayed on."""
    problems: list[ScanProblem] = field(default_factory=list)
    mount_points: list[str] = field(default_factory=list)
    """Mount points below the root, sorted: recorded as directories, not descended."""


_object_new = object.__new__
_object_setattr = object.__setattr__
_FAST_ENTRIES = FAST_ENTRIES  # see core.repo.filemanifest


def _entry_of(
    path: str, st: os.stat_result, kind: str, target: str | None = None, rdev: int = 0
) -> FileEntry:
    return FileEntry(
        path,
        kind,
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_nlink,
        target,
        rdev,
    )


def _mounts_below(root: str) -> frozenset[str]:
    """Relative paths of the mount points strictly below ``root``.

    Different devices show in ``st_dev`` anyway; this also catches a bind mount of the
    same file system, whose ``st_dev`` is the root's (and which could loop the walk).
    """
    top = os.path.realpath(root)
    prefix = top.rstrip("/") + "/"
    below = set()
    for m in read_mounts():
        if m.mount_point.startswith(prefix):
            below.add(m.mount_point[len(prefix) :])
    return frozenset(below)


@dataclass(eq=False)
class _Walk:
    """The walk's shared state: per-directory results, the hand-off queue, problems."""

    HANDOFF_LIMIT: ClassVar[int] = 8
    """Subtrees waiting for an idle thread at most (each holds an open descriptor)."""

    device: int
    stop_at: frozenset[str]
    cancel: threading.Event | None
    workers: int
    dirs: dict[str, list[FileEntry]] = field(default_factory=dict)
    problems: list[ScanProblem] = field(default_factory=list)
    mount_points: list[str] = field(default_factory=list)
    pending: list[tuple[int, str]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    idle: int = 0
    busy: int = 0
    failure: BaseException | None = None

    # --- one directory -----------------------------------------------------------------

    def list_dir(self, fd: int, rel: str) -> list[tuple[str, str, int]]:
        """Record the entries of the directory open at ``fd``; return its subdirectories.

        Returns ``(name, path, inode)`` of each subdirectory to descend into.
        """
        if self.failure is not None:
            raise Cancelled("scan stopped")
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled by the user; nothing was committed")
        prefix = "" if rel == "." else rel + "/"
        try:
            names = os.listdir(fd)
        except OSError as e:
            self.problems.append(ScanProblem(rel, e.strerror or str(e)))
            return []
        # Name order is the order of the result; the names come in hash order. (Reading
        # the inodes in inode order instead made no difference cold, measured.)
        names.sort()
        entries: list[FileEntry] = []
        subdirs: list[tuple[str, str, int]] = []
        add = entries.append
        device = self.device
        kind_of = _KIND_OF
        lstat = os.lstat
        fast = _FAST_ENTRIES
        new = _object_new
        set_dict = _object_setattr
        cls = FileEntry
        for name in names:
            try:
                st = lstat(name, dir_fd=fd)
            except FileNotFoundError:
                continue  # deleted since the listing: it is not there
            except OSError as e:
                self.problems.append(
                    ScanProblem(prefix + name, e.strerror or str(e), "unstattable")
                )
                continue
            mode = st.st_mode
            fmt = mode & 0o170000
            path = prefix + name
            target = None
            rdev = 0
            if fmt == _IFREG and st.st_dev == device:  # most entries: the short way
                kind = "f"
            elif not (kind := kind_of.get(fmt, "")):
                self.problems.append(ScanProblem(path, f"file type {fmt:o}", "unknown-type"))
                continue
            elif fmt == _IFDIR:
                if st.st_dev != device or path in self.stop_at:
                    self.mount_points.append(path)
                else:
                    subdirs.append((name, path, st.st_ino))
            elif st.st_dev != device:
                # A file bind-mounted over a file: the one underneath cannot be seen.
                self.mount_points.append(path)
                continue
            elif fmt == _IFLNK:
                try:
                    target = os.readlink(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    self.problems.append(ScanProblem(path, e.strerror or str(e), "unstattable"))
                    continue
            elif fmt == _IFCHR or fmt == _IFBLK:  # noqa: SIM109 (two compares beat a tuple)
                rdev = st.st_rdev
            if fast:
                entry = new(cls)
                set_dict(
                    entry,
                    "__dict__",
                    {
                        "path": path,
                        "kind": kind,
                        "mode": mode & 0o7777,
                        "uid": st.st_uid,
                        "gid": st.st_gid,
                        "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                        "ctime_ns": st.st_ctime_ns,
                        "ino": st.st_ino,
                        "nlink": st.st_nlink,
                        "target": target,
                        "rdev": rdev,
                        "chunks": (),
                        "link": None,
                    },
                )
                add(entry)
            else:
                add(_entry_of(path, st, kind, target, rdev))
        self.dirs[rel] = entries
        return subdirs

    def open_subdir(self, parent_fd: int, name: str, path: str, ino: int) -> int | None:
        """Open a subdirectory listed in ``parent_fd``; None (and a problem) if it cannot be."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return None  # removed since the listing
        except OSError as e:
            self.problems.append(ScanProblem(path, e.strerror or str(e)))
            return None
        st = os.fstat(fd)
        if st.st_ino != ino or st.st_dev != self.device:
            # Replaced (or mounted over) between the listing and the open: what is there
            # now was not listed; its files are missing from this scan.
            os.close(fd)
            self.problems.append(ScanProblem(path, "replaced during the scan"))
            return None
        return fd

    # --- subtrees and threads -------------------------------------------------------------

    def subtree(self, fd: int, rel: str) -> None:
        """Walk the directory open at ``fd`` and everything below it; closes ``fd``.

        Depth first with one open descriptor per level; while another thread is idle,
        a subdirectory is handed to it instead of being descended here.
        """
        stack: list[tuple[int, Iterator[tuple[str, str, int]]]] = [(fd, iter(()))]
        try:
            stack[0] = (fd, iter(self.list_dir(fd, rel)))
            while stack:
                parent_fd, subdirs = stack[-1]
                nxt = next(subdirs, None)
                if nxt is None:
                    stack.pop()
                    os.close(parent_fd)
                    continue
                name, path, ino = nxt
                child = self.open_subdir(parent_fd, name, path, ino)
                if child is None:
                    continue
                if self.idle and self.hand_off(child, path):
                    continue
                stack.append((child, iter(())))
                stack[-1] = (child, iter(self.list_dir(child, path)))
        finally:
            for parent_fd, _ in stack:
                os.close(parent_fd)

    def hand_off(self, fd: int, rel: str) -> bool:
        """Queue a subtree for an idle thread; False when the queue is full."""
        with self.cond:
            if len(self.pending) >= self.HANDOFF_LIMIT or not self.idle:
                return False
            self.pending.append((fd, rel))
            self.cond.notify()
        return True

    def worker(self) -> None:
        """Take queued subtrees until none is left and no thread can queue more."""
        while True:
            with self.cond:
                self.idle += 1
                while not self.pending and self.busy and self.failure is None:
                    self.cond.wait()
                self.idle -= 1
                if self.failure is not None or not self.pending:
                    self.cond.notify_all()
                    return
                fd, rel = self.pending.pop()
                self.busy += 1
            try:
                self.subtree(fd, rel)
            except BaseException as e:
                with self.cond:
                    if self.failure is None:
                        self.failure = e
                    self.cond.notify_all()
                return
            finally:
                with self.cond:
                    self.busy -= 1
                    self.cond.notify_all()

    def run(self, root_fd: int) -> None:
        """Walk from ``root_fd`` (not closed here) with ``workers`` threads."""
        fd = os.dup(root_fd)
        with self.cond:
            self.pending.append((fd, "."))
        threads = [
            threading.Thread(target=self.worker, name=f"bv-scan-{i}", daemon=True)
            for i in range(1, self.workers)
        ]
        for t in threads:
            t.start()
        try:
            self.worker()
        except BaseException as e:  # Ctrl-C while waiting for work: stop the others too
            with self.cond:
                self.failure = self.failure or e
                self.cond.notify_all()
            raise
        finally:
            for t in threads:
                t.join()
            with self.cond:
                leftovers, self.pending = self.pending, []
            for fd, _ in leftovers:
                os.close(fd)
        if self.failure is not None:
            raise self.failure

    # --- the result -----------------------------------------------------------------------

    def stitched(self, root: FileEntry) -> list[FileEntry]:
        """Return every entry parents first: the per-directory lists, depth first by name.

        A depth-first walk that visits each directory's entries sorted by name yields
        exactly the order of sorting all paths by their components. Hard links are
        resolved here, in that order, so the "first path" of an inode is the same
        whichever thread saw which directory first.
        """
        out = [root]
        add = out.append
        dirs = self.dirs
        first_path: dict[int, str] = {}
        stack = [iter(dirs.get(".", ()))]
        while stack:
            e = next(stack[-1], None)
            if e is None:
                stack.pop()
                continue
            if e.kind == "d":
                add(e)
                below = dirs.get(e.path)
                if below:
                    stack.append(iter(below))
                continue
            if e.nlink > 1:
                first = first_path.setdefault(e.ino, e.path)
                if first != e.path:
                    e = replace(e, link=first)
            add(e)
        return out


def scan_tree(
    root: str, *, cancel: threading.Event | None = None, workers: int = DEFAULT_WORKERS
) -> ScanResult:
    """Return every entry of the file system mounted at ``root``, parents first.

    The walk does not leave ``root``'s file system: mount points below are recorded as
    directories and listed in ``mount_points``. Directories that cannot be listed are
    recorded (their own entry stays) and listed in ``problems``.

    Raises:
        Cancelled: ``cancel`` was set.
        OSError: ``root`` itself cannot be opened.
    """
    root_fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        st = os.fstat(root_fd)
        walk = _Walk(st.st_dev, _mounts_below(root), cancel, max(1, workers))
        with gc_paused():
            walk.run(root_fd)
            entries = walk.stitched(_entry_of(".", st, "d"))
    finally:
        os.close(root_fd)
    return ScanResult(
        entries=entries,
        device=st.st_dev,
        problems=sorted(walk.problems, key=_BY_PATH),
        mount_points=sorted(walk.mount_points),
    )
