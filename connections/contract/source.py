"""Opening a source file: the one place every connection reads a local file from.

The engine looks at a file (lstat) and later a connection reads it. Between the
two the file can become something else: a link to a file outside the tree (the
daemon may read what the tree's owner cannot, e.g. the daemon's own key), a FIFO
(an open() that waits for a writer blocks a worker for ever), another file. So a
connection never reopens a source file by its path; it calls `open_source`, which

* resolves the path *below the mapping's root* without following any link:
  openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) from the root's descriptor
  where the kernel has it (Linux 5.6+), else one O_NOFOLLOW|O_DIRECTORY step
  per folder. The root itself may be reached through a link (that is where the
  user pointed the mapping); when its path holds none, which is usual, the
  whole path is opened with RESOLVE_NO_SYMLINKS in one call instead. (With
  follow_symlinks = yes the user asked for links to be followed: the path is
  opened as it is, the rest below still applies.)
* opens with O_NOFOLLOW | O_NONBLOCK | O_NOCTTY: a FIFO or a device does not
  block the open, a link in the last place is refused;
* checks with fstat that the descriptor is a regular file with the device and
  inode the scan saw: anything else raises SourceChanged, and the engine looks
  at the path again (actions are hints, see skynet/engine/reconcile.py);
* clears O_NONBLOCK again for the reads (regular files ignore it on local file
  systems, but a FUSE file system may not).

What cannot be read safely as it is raises SourceRefused with the reason (a
link on the folder path, a path over the system's limits): a permanent failure,
recorded in the failed-actions table, never a silent skip.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import platform
import stat as statmod
from typing import BinaryIO

from connections.contract.xcon import LocalFile, PermanentError, TransientError

# openat2(2): the syscall number is the same on every architecture that has it
# in the generic table; x86_64 and aarch64 are the ones skynet runs on.
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_AT_FDCWD = -100

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Too many open files, or the kernel short of memory: not the file's fault.
_BUSY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM}


class SourceChanged(TransientError):
    """The file at the path is not the one the engine looked at any more (replaced,
    turned into a link, a FIFO, a folder...): look at the path again."""


class SourceRefused(PermanentError):
    """The file cannot be read safely as it is: a link on its folder path, a name
    or path over the system's limits. Recorded as failed with this reason."""


def kind_of(mode: int) -> str:
    """A file type in words, for the reasons given to the user."""
    if statmod.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if statmod.S_ISSOCK(mode):
        return "socket"
    if statmod.S_ISCHR(mode):
        return "character device"
    if statmod.S_ISBLK(mode):
        return "block device"
    if statmod.S_ISLNK(mode):
        return "symbolic link"
    if statmod.S_ISDIR(mode):
        return "folder"
    return "regular file" if statmod.S_ISREG(mode) else "special file"


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_HOW_SIZE = ctypes.sizeof(_OpenHow)


@functools.lru_cache(maxsize=8)
def _how(flags: int, resolve: int = _RESOLVE):
    """A pointer to a struct open_how (the kernel only reads it, so one per
    value serves every thread: no struct built per file)."""
    return ctypes.pointer(_OpenHow(flags, 0, resolve))


@functools.lru_cache(maxsize=1)
def _libc_syscall():
    """libc's syscall(), or None. ctypes lets the GIL go during the call."""
    if _SYS_OPENAT2 is None:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn


_openat2_works: bool | None = None  # None: not tried yet; False: ENOSYS/EPERM seen (old kernel, seccomp)


def _openat2(dir_fd: int, rel: bytes, flags: int, resolve: int = _RESOLVE) -> int | None:
    """openat2(dir_fd, rel, flags, RESOLVE_BENEATH|NO_SYMLINKS|NO_MAGICLINKS); None
    when the kernel (or a seccomp filter) does not offer it: the caller walks."""
    global _openat2_works
    syscall = _libc_syscall() if _openat2_works is not False else None
    if syscall is None:
        return None
    how = _how(flags, resolve)
    while True:
        fd = syscall(_SYS_OPENAT2, dir_fd, rel, how, _HOW_SIZE)
        if fd >= 0:
            _openat2_works = True
            return fd
        err = ctypes.get_errno()
        if err == errno.EINTR:
            continue
        if err in (errno.ENOSYS, errno.EPERM) and not _openat2_works:
            _openat2_works = False  # never worked: the kernel lacks it, or seccomp forbids it
            return None
        raise OSError(err, os.strerror(err))


def _walk_open(dir_fd: int, rel: str, flags: int) -> int:
    """The portable way: one O_PATH|O_NOFOLLOW|O_DIRECTORY step per folder from
    `dir_fd`, then the last name with `flags` (which hold O_NOFOLLOW)."""
    parts = rel.split("/")
    current = dir_fd
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=current)
            except NotADirectoryError:
                # O_NOFOLLOW|O_DIRECTORY on a link says ENOTDIR; openat2 says ELOOP
                if statmod.S_ISLNK(os.stat(part, dir_fd=current, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                raise
            if current != dir_fd:
                os.close(current)
            current = nxt
        return os.open(parts[-1], flags, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)


@functools.lru_cache(maxsize=64)
def _root_has_no_links(root: str) -> bool:
    """True if no part of the root's own path is a link (then resolving the
    whole path without following any link is the same as resolving the rest
    beneath the root: one system call, no descriptor of the root needed)."""
    return os.path.realpath(root) == root


def open_root(root: str) -> int:
    """A descriptor of the mapping's root folder (followed if it is itself a link:
    that is where the user pointed the mapping), to open files beneath it."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _open_beneath(root_fd: int, rel: str, flags: int) -> int:
    fd = _openat2(root_fd, os.fsencode(rel), flags)
    return fd if fd is not None else _walk_open(root_fd, rel, flags)


def open_source_fd(f: LocalFile, root_fd: int | None = None, reads: bool = True) -> int:
    """A read-only descriptor of `f`, checked to be the regular file the engine saw
    (device and inode), opened without following links below the root, never
    blocking. `root_fd` is the root's descriptor when the caller opens many files
    (open_root); `reads=False` when this process will not read it (LocalCon's
    batch hands it to cp), which saves clearing O_NONBLOCK. Raises
    FileNotFoundError if nothing is at the path any more, PermissionError if it
    cannot be read, SourceChanged, SourceRefused, or TransientError when the
    process is out of descriptors."""
    try:
        fd = _open(f, root_fd)
    except OSError as exc:
        raise _classify(exc, f) from exc
    try:
        _check(fd, f)
        if reads:
            fcntl.fcntl(fd, fcntl.F_SETFL, 0)  # drops O_NONBLOCK (the access mode is not a status flag)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open(f: LocalFile, root_fd: int | None) -> int:
    if f.follow:  # follow_symlinks = yes: links are the user's choice; no blocking, same checks after
        return os.open(f.path, (READ_FLAGS & ~os.O_NOFOLLOW))
    if not f.root:  # a file outside any mapping (a probe, a test): the last link refused only
        return os.open(f.path, READ_FLAGS)
    if root_fd is not None:
        return _open_beneath(root_fd, f.rel, READ_FLAGS)
    if _root_has_no_links(f.root):
        # The usual case, one system call: the whole path, no link anywhere on it.
        try:
            fd = _openat2(_AT_FDCWD, os.fsencode(f.root + "/" + f.rel), READ_FLAGS,
                          _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            # A link on the root's own path now, or a path too long as a whole:
            # beneath the root's descriptor (below) tells.
            if exc.errno not in (errno.ELOOP, errno.ENAMETOOLONG):
                raise
        else:
            if fd is not None:
                return fd
    root_fd = open_root(f.root)
    try:
        return _open_beneath(root_fd, f.rel, READ_FLAGS)
    finally:
        os.close(root_fd)


def _check(fd: int, f: LocalFile) -> None:
    """The descriptor must be the file the engine looked at, as a regular file."""
    st = os.fstat(fd)
    if not statmod.S_ISREG(st.st_mode):
        raise SourceChanged(f"{f.rel!r} is now a {kind_of(st.st_mode)}, not the regular file seen before; "
                            "it is looked at again")
    if st.st_ino != f.ino or (f.dev is not None and st.st_dev != f.dev):
        raise SourceChanged(f"{f.rel!r} was replaced by another file since it was looked at; it is looked at again")


def _classify(exc: OSError, f: LocalFile) -> OSError | Exception:
    """Open errors in the contract's terms; FileNotFoundError and PermissionError
    stay as they are (the engine knows them: gone, unreadable)."""
    if exc.errno == errno.ELOOP or exc.errno == errno.EXDEV:
        # The last name is a link now, or a folder on the way is (or leads out of
        # the root): which one, the engine's next look at the path tells.
        return _link_on_path(f)
    if exc.errno == errno.ENAMETOOLONG:
        return SourceRefused(f"cannot read {f.rel!r}: its name or path is longer than the system allows")
    if exc.errno == errno.ENOTDIR:
        return SourceChanged(f"a folder on the path of {f.rel!r} is not a folder any more; it is looked at again")
    if exc.errno == errno.ENXIO or exc.errno == errno.ENODEV or exc.errno == errno.EWOULDBLOCK:
        return SourceChanged(f"{f.rel!r} is not a regular file any more; it is looked at again")
    if exc.errno in _BUSY:
        return TransientError(f"cannot open {f.rel!r} now: {exc.strerror}")
    return exc


def _link_on_path(f: LocalFile) -> Exception:
    """ELOOP: if the file itself became a link, the engine looks again (and skips
    a link); a link on the folder path is refused for good, with the reason."""
    with contextlib.suppress(OSError):
        if statmod.S_ISLNK(os.lstat(f.path).st_mode):
            return SourceChanged(f"{f.rel!r} is now a symbolic link; it is looked at again")
    return SourceRefused(f"not read: a folder on the path of {f.rel!r} is a symbolic link "
                         "(links below the source folder are not followed)")


def open_source(f: LocalFile, buffering: int = -1) -> BinaryIO:
    """open_source_fd() as a binary file object (`buffering=0`: unbuffered)."""
    fd = open_source_fd(f)
    try:
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def local_file(path: str, rel: str, st: os.stat_result, root: str = "", follow: bool = False) -> LocalFile:
    """The version of `rel` that `st` saw, as a connection is given it (and as
    open_source checks it: device and inode)."""
    return LocalFile(path=path, rel=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, mode=statmod.S_IMODE(st.st_mode),
                     ino=st.st_ino, uid=st.st_uid, gid=st.st_gid, dev=st.st_dev, root=root, follow=follow)
