"""Beneath: paths opened below a directory descriptor, never through a symlink or off its device.

An increment reads files by the paths its scan found, and a replay changes a
restored file system by the paths a manifest lists; either tree may change under
it, and a directory swapped for a symlink (or a file system mounted on the way)
must not make it read or write anything elsewhere. So a path is never resolved as
a string from ``/``:

- with ``openat2`` (Linux 5.6+) the kernel resolves it below the root descriptor
  with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
  RESOLVE_NO_XDEV`` in one call;
- otherwise (an older kernel, a seccomp filter that hides the call) each component
  is opened in turn relative to the last with ``O_DIRECTORY | O_NOFOLLOW``, and
  every directory and the final file must lie on the root's device.

The walk sees another file system by its device number; a bind mount of the root's
own file system has the same number and is not seen (``openat2`` refuses it too).
"""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_SYS_OPENAT2 = 437
"""The same number on every architecture Linux gave it to (5.6+)."""
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_NO_XDEV | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""How :meth:`Beneath.directory` opens directories: readable (listed, fchmod-ed), never a link."""
_STEP_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""A directory the walk only passes through: search permission suffices, as for openat2."""
_NOT_THERE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
"""What opening a directory without following says of a missing name, a file, a symlink."""


class OtherFileSystem(OSError):
    """The path leads onto another file system mounted below the root (``EXDEV``).

    ``filename`` is the path, below the root, of the first component that lies there.
    """


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


class Beneath:
    """Opens paths below the directory open at ``root_fd``, confined to its file system.

    :meth:`open` may be called from several threads at once. :meth:`directory` keeps
    the descriptors of the last path it walked, for the next path to share: it is
    for one thread, and :meth:`close` releases them. ``root_fd`` stays the caller's.
    """

    def __init__(self, root_fd: int, *, device: int | None = None, openat2: bool = True) -> None:
        """Confine to ``root_fd``'s file system, or to ``device`` (an ``st_dev``) when given.

        ``openat2=False`` walks component by component from the start (as on a
        kernel without the call).
        """
        self.root_fd = root_fd
        self.device = os.fstat(root_fd).st_dev if device is None else device
        self.openat2 = openat2
        """True while openat2 resolves :meth:`open`'s paths; False once the kernel (or a
        seccomp filter) says it has no such call: then every component is opened in turn."""
        self._walked: list[tuple[str, int]] = []

    def open(self, path: str, flags: int) -> int:
        """Return a descriptor of ``path`` (relative to the root) opened with ``flags``.

        ``O_NOFOLLOW`` and ``O_CLOEXEC`` are always added.

        Raises:
            OtherFileSystem: a component or the file itself lies on another file system.
            OSError: ``ELOOP`` (or ``ENOTDIR``, from the walk) for a symlink on the way,
                ``ENOTDIR`` for a file where a directory is needed, ``EXDEV`` for a path
                that climbs out of the root, ``ENOENT``; any other error of the open.
        """
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        if self.openat2:
            try:
                return self._openat2(path, flags)
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise
                self.openat2 = False
        return self._walk_open(path, flags)

    def directory(self, parts: tuple[str, ...]) -> int | None:
        """Return a descriptor of the directory ``parts`` below the root (``()``: the root).

        None when a component is missing, or is a file or a symlink (never followed).
        Paths given one after another share their leading directories: only the
        components that differ from the last path's are closed and opened. The
        descriptor stays valid until the next call or :meth:`close`.

        Raises:
            OtherFileSystem: a component is another file system mounted there.
        """
        walked = self._walked
        keep = 0
        while keep < len(walked) and keep < len(parts) and walked[keep][0] == parts[keep]:
            keep += 1
        while len(walked) > keep:
            os.close(walked.pop()[1])
        for i in range(keep, len(parts)):
            parent = walked[-1][1] if walked else self.root_fd
            sub = self.subdir(parent, parts[i], "/".join(parts[: i + 1]))
            if sub is None:
                return None
            walked.append((parts[i], sub))
        return walked[-1][1] if walked else self.root_fd

    def subdir(self, parent_fd: int, name: str, shown: str) -> int | None:
        """Return a descriptor of directory ``name`` in ``parent_fd``; None if it is not one.

        ``parent_fd`` must itself lie below the root (the root, or a descriptor from
        :meth:`directory` or this method); ``shown`` is ``name``'s path for errors.

        Raises:
            OtherFileSystem: ``name`` is another file system mounted there.
            OSError: ``EXDEV`` for a name that is not one plain component (``..``, ``a/b``).
        """
        if name in ("", ".", "..") or "/" in name:
            raise OSError(errno.EXDEV, "not a plain name below the root", shown)
        try:
            return self._step(parent_fd, name, DIR_FLAGS, shown)
        except OSError as e:  # OtherFileSystem (EXDEV) is not among them
            if e.errno in _NOT_THERE:
                return None
            raise

    def close(self) -> None:
        """Close the descriptors :meth:`directory` holds (not the root's)."""
        while self._walked:
            os.close(self._walked.pop()[1])

    def _openat2(self, path: str, flags: int) -> int:
        how = _OpenHow(flags, 0, _RESOLVE)
        fd = _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(self.root_fd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err == errno.EXDEV and not _climbs(path):
            raise OtherFileSystem(err, "another file system is mounted on the way", path)
        raise OSError(err, os.strerror(err), path)

    def _walk_open(self, path: str, flags: int) -> int:
        names = path.split("/")
        if _climbs(path) or "" in names or "." in names:
            raise OSError(errno.EXDEV, "not a plain path below the root", path)
        passed: list[int] = []
        try:
            parent = self.root_fd
            for i, name in enumerate(names[:-1]):
                parent = self._step(parent, name, _STEP_FLAGS, "/".join(names[: i + 1]))
                passed.append(parent)
            return self._step(parent, names[-1], flags, path)
        finally:
            for fd in passed:
                os.close(fd)

    def _step(self, parent_fd: int, name: str, flags: int, shown: str) -> int:
        """Open ``name`` in ``parent_fd`` with ``flags``; it must be on the root's device."""
        fd = os.open(name, flags, dir_fd=parent_fd)
        if os.fstat(fd).st_dev != self.device:
            os.close(fd)
            raise OtherFileSystem(errno.EXDEV, "another file system is mounted there", shown)
        return fd


def _climbs(path: str) -> bool:
    """True when ``path`` is absolute or has a ``..`` component (it could leave the root)."""
    return path.startswith("/") or ".." in path.split("/")
