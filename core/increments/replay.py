"""Replay a file manifest onto a restored image: the file system becomes the increment's state.

This is the file half of ``restore image -incremental -deletefiles``: the image
restores Monday's volume, then :func:`replay` makes the mounted file system match
Thursday's manifest — it creates what is missing, replaces what changed, sets
modes, owners and times, and (with ``delete``) removes what Thursday no longer had.

Manifests are untrusted input (a repository can be tampered with), and so is the
restored file system (it may hold a symlink where a directory was). So:

- every path of the manifest is checked before anything is touched
  (:func:`check_manifest`); one bad path refuses the whole manifest;
- the replay never resolves a path string: it walks from the root one directory
  at a time with ``openat(O_DIRECTORY|O_NOFOLLOW)`` and changes things only by
  directory descriptor and name, never following a symlink, and it never descends
  into another file system mounted below the root.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from core import findings as F
from core.confined import DIR_FLAGS, Beneath, OtherFileSystem
from core.errors import BlockvaultError
from core.findings import Finding
from core.progress import Cancelled, Meter, ProgressFn
from core.repo.filemanifest import FILE_CHUNK, KINDS, FileEntry, FileManifest, entries_sorted
from core.repo.format import ID_BYTES, ZERO_ID, DamagedObject
from core.repo.repository import Repository
from core.repo.store import ObjectMissing
from core.report import JobReport

LOST_FOUND = "lost+found"
NOT_BACKED_UP = frozenset({"unreadable", "unstattable", "unknown-type"})
"""Problem kinds of a manifest whose path exists but was not backed up by that increment:
a replay never deletes them (or anything below them), whatever ``delete`` says."""
KEPT_NAMED = 5
"""Kept at the root even when the manifest does not list it: fsck needs it there."""
TEMP_PREFIX = ".bv-replay-"
"""New content is made under this name in the same directory and renamed into place."""
NAME_MAX = 255
"""Longest name (in bytes) of one path component on Linux file systems."""
SOCKETS_NAMED = 20
"""How many skipped sockets a finding names (the count covers all of them)."""

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NODE_FORMATS = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO, "s": stat.S_IFSOCK}


class HostileManifest(BlockvaultError):
    """A manifest names a path the replay must not touch, or is inconsistent; nothing changed."""


class ReplayDamaged(BlockvaultError):
    """A content chunk is missing or failed its hash check; the replay stopped at that file."""

    def __init__(self, message: str, path: str, chunk: bytes) -> None:
        super().__init__(message)
        self.path = path
        """The manifest path whose content needed the chunk."""
        self.chunk = chunk
        """The chunk's digest."""


class ReplayError(BlockvaultError):
    """The file system under the root could not be brought to the manifest's state."""


@dataclass
class ReplayReport(JobReport):
    """What a replay did; every count is of manifest entries or of paths on disk."""

    manifest_id: str
    root: str
    delete: bool = False
    files_created: int = 0
    """Entries of every kind (files, directories, links, nodes) that did not exist."""
    files_replaced: int = 0
    """Paths whose type or content differed and were made anew."""
    metadata_updated: int = 0
    """Paths with the right content whose mode, owner or mtime were set."""
    deleted: int = 0
    """Paths removed and not replaced: unlisted ones (``delete``), the contents of a
    directory that a type change displaced, what stood where a socket belongs.
    Every path of a removed tree counts; a displaced path itself counts as replaced."""
    bytes_written: int = 0
    """Content bytes written (holes of sparse files are not written)."""
    unchanged: int = 0
    kept_not_backed_up: int = 0
    """Unlisted paths left in place because the increment could not back them up."""
    duration: float = 0.0
    findings: list[Finding] = field(default_factory=list)


def not_backed_up(target: FileManifest) -> frozenset[str]:
    """Return the paths ``target`` saw but could not back up (unreadable, unstattable, …).

    They exist; they are missing from the entries only because that increment could
    not read them. The manifest is untrusted: a problem that is not a well-formed
    record is ignored (it can only keep files from being deleted, never touch one).
    """
    out: set[str] = set()
    for p in target.problems:
        if isinstance(p, dict) and p.get("kind") in NOT_BACKED_UP:
            path = p.get("path")
            if isinstance(path, str) and (path == "." or _path_problem(path) is None):
                out.add(path)
    return frozenset(out)


def replay(
    target: FileManifest,
    root: str | os.PathLike[str],
    repo: Repository,
    *,
    delete: bool,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> ReplayReport:
    """Return the report of bringing the file system at ``root`` to the state ``target`` lists.

    ``root`` is the mount point of a freshly restored image (the caller mounts it
    privately and unmounts it afterwards, which also makes the changes durable).

    For every entry of ``target``, what is on disk is compared with it: a missing
    path is created, one of another type (or a symlink with another target, a
    device node with another number) is replaced, and mode, owner and mtime are set
    where they differ. A regular file counts as unchanged when its size and mtime
    equal the entry's — rsync's quick check: its content is not read. Content is
    written to a temporary name in the same directory and renamed into place, so
    the old file is never half-overwritten and a hard link elsewhere keeps the old
    content; all-zero pieces become holes. Hard links are made after all files,
    directories' times are set last, deepest first (their children's creation
    would change them otherwise). Sockets are not created (their server makes
    them); a finding names them.

    With ``delete`` (``-deletefiles``), every path the manifest does not list is
    removed, whole directory trees included; ``lost+found`` at the root is kept
    even when unlisted, and so is a path the increment saw but could not back up
    (an unreadable file, a directory it could not list, and what lies below it): it
    keeps the version the image (or the file system) has, and a finding says so.
    Without it, unlisted paths stay — except the contents of a directory that the
    manifest says is now a file or link: a path holds one thing.

    A failed or cancelled replay leaves the file system part-way between the image
    and the manifest (never a half-written file under its real name); running it
    again finishes the job, as replay is idempotent.

    Raises:
        HostileManifest: a path of ``target`` is unsafe or inconsistent (nothing was changed).
        ReplayDamaged: a chunk is missing or damaged (the path and chunk id are named).
        ReplayError: ``root`` is not a directory, a path could not be changed, or
            another file system is mounted below ``root``.
        Cancelled: ``cancel`` was set.
    """
    entries = check_manifest(target)
    root = os.fspath(root)
    report = ReplayReport(target.id, root, delete=delete)
    meter = Meter("comparing", 0, progress, cancel)
    with repo.lock():
        root_fd = _open_root(root)
        try:
            job = _Replay(
                entries,
                root,
                root_fd,
                repo,
                delete=delete,
                report=report,
                meter=meter,
                not_backed_up=not_backed_up(target),
            )
            try:
                meter.total = job.bytes_to_write()
                meter.phase = "replaying"
                job.apply()
            finally:
                job.close()
        finally:
            os.close(root_fd)
    if job.kept:
        report.findings.append(
            _paths_finding(
                F.warning,
                "REPLAY_KEPT_NOT_BACKED_UP",
                f"path(s) that increment {target.id} could not back up were left as the "
                "image has them, not deleted",
                job.kept,
                KEPT_NAMED,
            )
        )
    if job.sockets:
        report.findings.append(
            _paths_finding(
                F.info,
                "REPLAY_SOCKETS_SKIPPED",
                "socket(s) not re-created (their servers make them when they start)",
                job.sockets,
                SOCKETS_NAMED,
            )
        )
    report.duration = meter.elapsed
    meter.finish("done")
    return report


def _paths_finding(
    make: Callable[..., Finding], code: str, what: str, paths: Sequence[str], named: int
) -> Finding:
    """Return ``make(code, "N <what>: 'a', 'b' and M more")`` naming at most ``named`` paths."""
    shown = ", ".join(repr(p) for p in paths[:named])
    more = f" and {len(paths) - named} more" if len(paths) > named else ""
    return make(
        code, f"{len(paths)} {what}: {shown}{more}", paths=list(paths[:named]), count=len(paths)
    )


def check_manifest(target: FileManifest) -> tuple[FileEntry, ...]:
    """Return ``target``'s entries parents-first once every path in it is safe to replay.

    Refused: a path that is absolute or empty, holds a NUL, an empty, "." or ".."
    component, or a name longer than 255 bytes; a path listed twice; an entry whose
    parent is not a directory entry (the root entry "." must be one); a hard link
    (``link``) failing the same checks or not naming another regular file's first
    path; a symlink without a target; a regular file whose chunk list does not fit
    its size; an unknown kind or negative or out-of-range numbers.

    Raises:
        HostileManifest: naming the manifest, the bad path and what is wrong with it.
    """

    def refuse(path: object, why: str) -> HostileManifest:
        return HostileManifest(
            f"file manifest {target.id} refused: path {path!r} {why}; nothing was changed"
        )

    by_path: dict[str, FileEntry] = {}
    for e in target.entries:
        if e.path != ".":
            bad = _path_problem(e.path)
            if bad:
                raise refuse(e.path, bad)
        if e.path in by_path:
            raise refuse(e.path, "is listed twice")
        if e.kind not in KINDS:
            raise refuse(e.path, f"has unknown kind {e.kind!r}")
        numbers = (e.mode, e.uid, e.gid, e.size, e.rdev)
        if not all(isinstance(n, int) and n >= 0 for n in numbers) or e.mode > 0o7777:
            raise refuse(e.path, "has negative or out-of-range mode, owner, size or rdev")
        if not isinstance(e.mtime_ns, int):
            raise refuse(e.path, "has a malformed mtime")
        by_path[e.path] = e
    top = by_path.get(".")
    if top is None or top.kind != "d":
        raise refuse(".", "(the root directory entry) is missing or not a directory")
    for e in target.entries:
        if e.path == ".":
            continue
        parent = e.path.rpartition("/")[0] or "."
        up = by_path.get(parent)
        if up is None or up.kind != "d":
            raise refuse(e.path, f"lies in {parent!r}, which is not a directory of the manifest")
        if e.link is not None:
            bad = _path_problem(e.link)
            if bad:
                raise refuse(e.path, f"is a hard link to {e.link!r}, which {bad}")
            first = by_path.get(e.link)
            if e.kind != "f" or first is None or first.kind != "f" or first.link is not None:
                raise refuse(
                    e.path,
                    f"is a hard link to {e.link!r}, which is not another regular file's "
                    "first path in the manifest",
                )
        elif e.kind == "f":
            if len(e.chunks) != -(-e.size // FILE_CHUNK) or any(
                not isinstance(d, bytes) or len(d) != ID_BYTES for d in e.chunks
            ):
                raise refuse(e.path, f"has a chunk list that does not fit its size {e.size}")
        elif e.kind == "l" and (not isinstance(e.target, str) or not e.target or "\0" in e.target):
            raise refuse(e.path, "is a symlink without a usable target")
    return entries_sorted(target.entries)


def _path_problem(path: object) -> str | None:
    """Return what makes ``path`` unsafe as a manifest path, or None when it is fine."""
    if not isinstance(path, str) or not path:
        return "is empty or not text"
    if "\0" in path:
        return "contains a NUL byte"
    if path.startswith("/"):
        return "is absolute"
    for name in path.split("/"):
        if name == "":
            return "has an empty component"
        if name == "..":
            return "climbs out with '..'"
        if name == ".":
            return "has a '.' component"
        try:
            encoded = os.fsencode(name)
        except UnicodeEncodeError:
            return "is not encodable as a file name"
        if len(encoded) > NAME_MAX:
            return f"has a component longer than {NAME_MAX} bytes"
    return None


def _open_root(root: str) -> int:
    try:
        return os.open(root, DIR_FLAGS)
    except OSError as e:
        raise ReplayError(f"cannot replay onto {root}: {e.strerror} (a directory is needed)") from e


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _temp_name() -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}"


def _parts(path: str) -> tuple[str, ...]:
    return () if path == "." else tuple(path.split("/"))


def _stored_bytes(e: FileEntry) -> int:
    """Return how many bytes of ``e``'s content are not holes."""
    return sum(
        min(FILE_CHUNK, e.size - i * FILE_CHUNK) for i, d in enumerate(e.chunks) if d != ZERO_ID
    )


def _same_file_content(st: os.stat_result, e: FileEntry) -> bool:
    """Quick check: a regular file of the entry's size and mtime holds its content.

    A file that shares its inode with another path while the entry had one link
    is rewritten all the same, so that the entry's metadata cannot leak onto
    the other path.
    """
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == e.size
        and st.st_mtime_ns == e.mtime_ns
        and not (st.st_nlink > 1 and e.nlink <= 1)
    )


def _same_metadata(st: os.stat_result, e: FileEntry) -> bool:
    same_mode = stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) == e.mode
    return same_mode and (st.st_uid, st.st_gid, st.st_mtime_ns) == (e.uid, e.gid, e.mtime_ns)


def _set_fd_metadata(fd: int, e: FileEntry) -> None:
    # chown before chmod: chown clears the set-user-ID and set-group-ID bits.
    os.fchown(fd, e.uid, e.gid)
    os.fchmod(fd, e.mode)
    os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))


def _set_named_metadata(dir_fd: int, name: str, e: FileEntry, *, symlink: bool) -> None:
    """Set a symlink's or device node's metadata by name, never following a symlink."""
    os.chown(name, e.uid, e.gid, dir_fd=dir_fd, follow_symlinks=False)
    if not symlink:  # a symlink's own mode is fixed (0777) on Linux
        os.chmod(name, e.mode, dir_fd=dir_fd, follow_symlinks=False)
    os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


@dataclass(eq=False)
class _Replay:
    """One replay: the checked entries, the open root and the running counts."""

    entries: tuple[FileEntry, ...]
    root: str
    root_fd: int
    repo: Repository
    delete: bool
    report: ReplayReport
    meter: Meter
    not_backed_up: frozenset[str] = frozenset()
    """Paths the increment saw but could not back up: never deleted, nor what is below."""
    kept: list[str] = field(init=False, default_factory=list)
    """Unlisted paths left in place because of :attr:`not_backed_up`."""
    dirs: Beneath = field(init=False)
    link_dirs: Beneath = field(init=False)
    """A second walker: a hard link's first path lies elsewhere than the link."""
    children: dict[str, set[str]] = field(init=False, default_factory=dict)
    sockets: list[str] = field(init=False, default_factory=list)
    _dirs_done: list[FileEntry] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.dirs = Beneath(self.root_fd)
        self.link_dirs = Beneath(self.root_fd)
        for e in self.entries:
            if e.path != ".":
                parent, _, name = e.path.rpartition("/")
                self.children.setdefault(parent or ".", set()).add(name)

    def close(self) -> None:
        self.dirs.close()
        self.link_dirs.close()

    # --- the passes -----------------------------------------------------------

    def bytes_to_write(self) -> int:
        """Return the content bytes the replay will write (nothing is changed)."""
        total = 0
        for e in self.entries:
            if e.kind != "f" or e.link is not None:
                continue
            self.check_cancel()
            parts = _parts(e.path)
            st = None
            with self._failure_names(e.path):
                parent = self.dirs.directory(parts[:-1])
                if parent is not None:
                    st = _lstat(parent, parts[-1])
            if st is None or not _same_file_content(st, e):
                total += _stored_bytes(e)
        self.dirs.close()
        return total

    def apply(self) -> None:
        """Create, replace, delete and set metadata until the disk matches the entries."""
        links: list[FileEntry] = []
        for e in self.entries:
            self.check_cancel()
            if e.link is not None:
                links.append(e)  # after every file: the first path may sort later
                continue
            with self._failure_names(e.path):
                if e.path == ".":
                    self._root_entry(e)
                else:
                    self._entry(e)
        for e in links:
            self.check_cancel()
            with self._failure_names(e.path):
                self._hard_link(e)
        # Deepest first; creating, renaming or removing children changed the times.
        for e in reversed(self._dirs_done):
            self.check_cancel()
            with self._failure_names(e.path):
                self._directory_metadata(e)

    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` once the cancel event is set."""
        if self.meter.cancel is not None and self.meter.cancel.is_set():
            raise Cancelled(
                f"replay onto {self.root} cancelled; what it replayed so far is kept "
                "(never a half-written file) — replay again to finish"
            )

    @contextlib.contextmanager
    def _failure_names(self, path: str) -> Iterator[None]:
        """Turn an OS error into a :class:`ReplayError` naming ``path``."""
        try:
            yield
        except OtherFileSystem as err:
            raise ReplayError(
                f"{err.filename!r} in {self.root} is another file system mounted there; "
                "unmount it and replay again"
            ) from err
        except OSError as err:
            raise ReplayError(
                f"replay onto {self.root} failed at {path!r}: {err.strerror or err}"
            ) from err
        except (ValueError, OverflowError) as err:
            # chmod refusing a symlink that appeared mid-replay; a time out of range
            raise ReplayError(f"replay onto {self.root} failed at {path!r}: {err}") from err

    def _parent(self, e: FileEntry) -> tuple[int, str]:
        parts = _parts(e.path)
        fd = self.dirs.directory(parts[:-1])
        if fd is None:
            raise ReplayError(
                f"replay onto {self.root} failed at {e.path!r}: its directory is missing on disk"
            )
        return fd, parts[-1]

    def _counted(self, what: str) -> None:
        setattr(self.report, what, getattr(self.report, what) + 1)
        self.meter.add(0, **{what: 1})

    # --- entries ----------------------------------------------------------------

    def _root_entry(self, e: FileEntry) -> None:
        st = os.fstat(self.root_fd)
        self._counted("unchanged" if _same_metadata(st, e) else "metadata_updated")
        if self.delete:
            self._delete_unlisted(".", self.root_fd)
        self._dirs_done.append(e)

    def _entry(self, e: FileEntry) -> None:
        parent, name = self._parent(e)
        st = _lstat(parent, name)
        if e.kind == "d":
            self._directory(e, parent, name, st)
        elif e.kind == "f":
            if st is not None and _same_file_content(st, e):
                self._existing_metadata(e, parent, name, st)
            else:
                tmp = self._write_file(e, parent)
                self._install(parent, name, st, tmp)
        elif e.kind == "l":
            if (
                st is not None
                and stat.S_ISLNK(st.st_mode)
                and os.readlink(name, dir_fd=parent) == e.target
            ):
                self._existing_metadata(e, parent, name, st)
            else:
                self._install(parent, name, st, self._make(parent, e, self._symlink))
        elif e.kind == "s":
            if st is not None and stat.S_ISSOCK(st.st_mode):
                self._existing_metadata(e, parent, name, st)
                return
            if st is not None:
                self._remove(parent, name, st)  # what a socket replaced is gone
            self.sockets.append(e.path)
        else:
            fmt = _NODE_FORMATS[e.kind]
            if (
                st is not None
                and stat.S_IFMT(st.st_mode) == fmt
                and (e.kind == "p" or st.st_rdev == e.rdev)
            ):
                self._existing_metadata(e, parent, name, st)
            else:
                self._install(parent, name, st, self._make(parent, e, self._node))

    def _directory(self, e: FileEntry, parent: int, name: str, st: os.stat_result | None) -> None:
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._counted("unchanged" if _same_metadata(st, e) else "metadata_updated")
        else:
            if st is not None:
                # Not a directory — possibly a planted symlink: remove the link itself.
                self._remove(parent, name, st, displaced=True)
            os.mkdir(name, 0o700, dir_fd=parent)
            self._counted("files_created" if st is None else "files_replaced")
        if self.delete:
            fd = self.dirs.directory(_parts(e.path))
            if fd is None:
                raise ReplayError(
                    f"replay onto {self.root} failed at {e.path!r}: it is not a directory on disk"
                )
            self._delete_unlisted(e.path, fd)
        self._dirs_done.append(e)

    def _directory_metadata(self, e: FileEntry) -> None:
        fd = self.dirs.directory(_parts(e.path))
        if fd is None:
            raise ReplayError(
                f"replay onto {self.root} failed at {e.path!r}: it is not a directory on disk"
            )
        if not _same_metadata(os.fstat(fd), e):
            _set_fd_metadata(fd, e)

    def _existing_metadata(self, e: FileEntry, parent: int, name: str, st: os.stat_result) -> None:
        """Give what stands at ``name`` (content already right) the entry's metadata; count it."""
        if _same_metadata(st, e):
            self._counted("unchanged")
            return
        if stat.S_ISREG(st.st_mode):
            self._set_file_metadata(e, parent, name, st)
        else:  # a node or symlink cannot be opened safely: by name, never following
            _set_named_metadata(parent, name, e, symlink=stat.S_ISLNK(st.st_mode))
        self._counted("metadata_updated")

    def _set_file_metadata(self, e: FileEntry, parent: int, name: str, st: os.stat_result) -> None:
        # O_NONBLOCK|O_NOFOLLOW: a fifo or symlink swapped in since the lstat neither
        # blocks nor is followed; the inode check below refuses it.
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent
        )
        try:
            now = os.fstat(fd)
            if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                raise ReplayError(f"{e.path!r} in {self.root} changed during the replay")
            _set_fd_metadata(fd, e)
        finally:
            os.close(fd)

    def _hard_link(self, e: FileEntry) -> None:
        assert e.link is not None
        parent, name = self._parent(e)
        first_parts = _parts(e.link)
        first_dir = self.link_dirs.directory(first_parts[:-1])
        first = _lstat(first_dir, first_parts[-1]) if first_dir is not None else None
        if first_dir is None or first is None or not stat.S_ISREG(first.st_mode):
            raise ReplayError(
                f"replay onto {self.root} failed at {e.path!r}: its first path {e.link!r} "
                "is not a regular file on disk"
            )
        st = _lstat(parent, name)
        if st is not None and (st.st_ino, st.st_dev) == (first.st_ino, first.st_dev):
            self._counted("unchanged")
            return
        tmp = _temp_name()
        os.link(
            first_parts[-1],
            tmp,
            src_dir_fd=first_dir,
            dst_dir_fd=parent,
            follow_symlinks=False,
        )
        self._install(parent, name, st, tmp)

    # --- making and removing ----------------------------------------------------

    def _make(self, parent: int, e: FileEntry, make: Callable[[int, str, FileEntry], None]) -> str:
        """Return a temporary name in ``parent`` holding a new node made by ``make``."""
        tmp = _temp_name()
        make(parent, tmp, e)
        try:
            _set_named_metadata(parent, tmp, e, symlink=e.kind == "l")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
        return tmp

    @staticmethod
    def _symlink(parent: int, tmp: str, e: FileEntry) -> None:
        assert e.target is not None
        os.symlink(e.target, tmp, dir_fd=parent)

    @staticmethod
    def _node(parent: int, tmp: str, e: FileEntry) -> None:
        if e.kind == "p":
            os.mkfifo(tmp, 0o600, dir_fd=parent)
        else:
            os.mknod(tmp, _NODE_FORMATS[e.kind] | 0o600, e.rdev, dir_fd=parent)

    def _install(self, parent: int, name: str, old: os.stat_result | None, tmp: str) -> None:
        """Rename ``tmp`` over ``name`` (removing a directory there first); count it."""
        try:
            if old is not None and stat.S_ISDIR(old.st_mode):
                self._remove(parent, name, old, displaced=True)
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
        self._counted("files_created" if old is None else "files_replaced")

    def _write_file(self, e: FileEntry, parent: int) -> str:
        """Return a temporary name in ``parent`` holding ``e``'s content and metadata."""
        tmp = _temp_name()
        fd = os.open(tmp, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            offset = 0
            for index, digest in enumerate(e.chunks):
                self.check_cancel()
                length = min(FILE_CHUNK, e.size - offset)
                if digest != ZERO_ID:  # an all-zero piece stays a hole
                    data = self._chunk(e, digest, offset)
                    if len(data) != length:
                        raise ReplayDamaged(
                            f"replay stopped at {e.path!r}: chunk {digest.hex()} (piece {index}) "
                            f"holds {len(data)} bytes where the manifest needs {length}",
                            e.path,
                            digest,
                        )
                    view = memoryview(data)
                    while view:
                        view = view[os.pwrite(fd, view, offset + len(data) - len(view)) :]
                    self.report.bytes_written += length
                    self.meter.add(length)
                offset += length
            os.ftruncate(fd, e.size)  # also makes a trailing hole
            _set_fd_metadata(fd, e)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
        os.close(fd)
        return tmp

    def _chunk(self, e: FileEntry, digest: bytes, offset: int) -> bytes:
        try:
            return self.repo.get_chunk(digest)
        except (DamagedObject, ObjectMissing) as err:
            raise ReplayDamaged(
                f"replay stopped at {e.path!r} (offset {offset}): chunk {digest.hex()} "
                f"cannot be used — {err.message}; run 'blockvault repo check'",
                e.path,
                digest,
            ) from None

    def _delete_unlisted(self, path: str, fd: int) -> None:
        listed = self.children.get(path, set())
        for name in os.listdir(fd):
            if name in listed or (path == "." and name == LOST_FOUND):
                continue
            full = name if path == "." else f"{path}/{name}"
            if self._not_backed_up(full):
                self.kept.append(full)
                self.report.kept_not_backed_up += 1
                continue
            self.check_cancel()
            st = _lstat(fd, name)
            if st is not None:
                self._remove(fd, name, st)

    def _not_backed_up(self, path: str) -> bool:
        """True when ``path`` is, or lies below, a path the increment could not back up."""
        if not self.not_backed_up:
            return False
        if "." in self.not_backed_up:  # the root could not be listed: nothing was seen
            return True
        parts = path.split("/")
        return any("/".join(parts[: i + 1]) in self.not_backed_up for i in range(len(parts)))

    def _remove(
        self, parent: int, name: str, st: os.stat_result, *, displaced: bool = False
    ) -> None:
        """Remove ``name`` (a whole tree if it is a directory), never following a symlink.

        ``displaced``: something new takes the path (counted as replaced, not deleted).
        """
        removed = (
            self._remove_tree(parent, name) if stat.S_ISDIR(st.st_mode) else _unlink(parent, name)
        )
        if displaced:
            removed -= 1
        self.report.deleted += removed
        self.meter.add(0, deleted=removed)

    def _remove_tree(self, parent: int, name: str) -> int:
        """Remove directory ``name`` and everything below it, deepest first; return the count."""
        top = self.dirs.subdir(parent, name, name)
        if top is None:
            raise ReplayError(f"{name!r} in {self.root} changed during the replay")
        # An explicit stack, not recursion: a restored tree may be deeper than Python's limit.
        stack: list[tuple[str, int, list[str]]] = [(name, top, os.listdir(top))]
        removed = 0
        try:
            while stack:
                _, fd, pending = stack[-1]
                if pending:
                    self.check_cancel()
                    child = pending.pop()
                    st = _lstat(fd, child)
                    if st is None:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        sub = self.dirs.subdir(fd, child, child)
                        if sub is None:
                            raise ReplayError(f"{child!r} in {self.root} changed during the replay")
                        stack.append((child, sub, os.listdir(sub)))
                    else:
                        removed += _unlink(fd, child)
                    continue
                done, fd, _ = stack.pop()
                os.close(fd)
                os.rmdir(done, dir_fd=stack[-1][1] if stack else parent)
                removed += 1
        finally:
            for _, fd, _ in stack:
                os.close(fd)
        return removed


def _unlink(parent: int, name: str) -> int:
    os.unlink(name, dir_fd=parent)  # unlink removes a symlink itself, never its target
    return 1
