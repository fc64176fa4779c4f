"""LocalCon: the remote is a folder (a mounted disk, a NAS share, another path).

Writes are atomic: the bytes go to a hidden temporary file beside the target,
get their mtime and mode, and are renamed over the target. A reader of the
target folder sees the old file or the new one, never half of one.

Many small files at once (send_many): GNU cp copies them into a hidden staging
folder in the target root, and each is renamed into place from there (still one
atomic rename per file, from the same file system). Why: in Python every system call of a copy (about ten
per file) gives the GIL away, and with several worker threads each of those
hand-offs is a futex wake and a context switch. Measured on 10,000 x 4 KiB
(bench/local_bench.py): 35-40 context switches and ~700 us of CPU per file, half
of rclone's files/s. cp makes those calls without the GIL; the worker is left
with the rename and its own checks.

Nothing in the target is trusted to stay as it was: each operation opens the
root, then each folder under it by descriptor without following links, and
works relative to those descriptors (see DIR_FLAGS). Permission bits go over
without setuid, setgid and sticky (MODE_BITS). A full disk is transient: the
mapping pauses until there is room (check()).

cp never opens a source path itself: the worker opens each file as send() does
(connections/contract/source.py: beneath the source folder, no link followed, never
blocking, the inode the scan saw) and hands cp the descriptors, as
/proc/self/fd/N. cp reopens exactly those files: a name swapped for a link or
a FIFO after the check cannot send an outside file or block the worker.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import logging
import os
import resource
import shutil
import stat as statmod
import subprocess
import threading
import time
from typing import Callable, Iterator, TypeVar

from connections.contract.xcon import (
    Abilities,
    BatchSend,
    ChecksumMismatch,
    FolderEntry,
    Folders,
    FreeSpace,
    HardLink,
    InTheWay,
    LocalFile,
    PermanentError,
    PutBytes,
    RemoteChanged,
    RemoteEntry,
    RemoteNotFound,
    SendResult,
    ServerSideCopy,
    ServerSideMove,
    Stream,
    StreamOpener,
    StreamSend,
    TakeOver,
    TransferContext,
    TransientError,
    Unsupported,
    XCon,
    check_range,
    check_rel,
    send_each,
    within_listing,
)
from connections.contract.source import open_root, open_source_fd
from skynet.config.values import keyed, parse_bool
from skynet.transfer import streams
from skynet.transfer.chunks import TransferStopped

log = logging.getLogger(__name__)
T = TypeVar("T")

TMP_PREFIX = ".skynet-tmp-"
# Target folders are opened one level at a time from the root's descriptor,
# never following a link (O_NOFOLLOW), and everything in them is done relative
# to that descriptor (openat, mkdirat, renameat, unlinkat): a folder swapped
# for a link can never lead a write, delete or move out of the root. O_PATH:
# the descriptor only names the folder (no read permission needed, no I/O).
DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MODE_BITS = 0o777  # never setuid, setgid or sticky on the target (a root daemon would make setuid programs)
FULL_MARGIN = 64 << 10  # free bytes beyond a failed write's size before a full target counts as having room
CHUNK = 1 << 20
STAGE_PREFIX = TMP_PREFIX + "stage-"  # send_many's staging folders, in the target root
BATCH_MIN = 4  # fewer files than this: one send() each (cp's start-up costs ~1 ms)
BATCH_FDS = 256  # at most this many open source files go to one cp (a whole handler batch)
STALE_STAGE_WAIT = 10.0  # seconds cleanup() keeps removing a killed run's staging folder while its cp writes on


@functools.lru_cache(maxsize=1)
def gnu_cp() -> str | None:
    """The path of GNU cp, or None (send_many needs -t and --preserve, and
    /proc/self/fd to hand it the files already opened)."""
    cp = shutil.which("cp")
    if cp is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        out = subprocess.run([cp, "--version"], capture_output=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return cp if b"GNU coreutils" in out else None


@functools.lru_cache(maxsize=1)
def fds_per_cp() -> int:
    """How many open source files one cp may be handed. A worker holds them open
    during its cp and every worker may do so at once, so a sixteenth of the
    process's descriptor limit at most. The soft limit is first raised to the
    hard one (at most 65536), which Go programs such as rclone get by default:
    the usual 1024 would split each batch into four cps (~1.5 ms each). The
    1024 only protects select(), which the daemon does not use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 16 if hard == resource.RLIM_INFINITY else min(hard, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    room = 1 << 16 if soft == resource.RLIM_INFINITY else soft
    return max(BATCH_MIN, min(BATCH_FDS, room // 16))


def temp_name(name: str) -> str:
    """The temporary name used while `name` is being written, in the same folder.

    It is derived from the name (not random) so that an upload cut short by a
    crash is overwritten by the next attempt instead of left behind, and a later
    delete of the file can remove it too. Hashing keeps it short and byte-safe.
    """
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:24]
    return TMP_PREFIX + digest

# errno values that mean "this action will not work by retrying".
_PERMANENT = {
    errno.EACCES,
    errno.EPERM,
    errno.ENAMETOOLONG,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EINVAL,
    errno.EILSEQ,
    errno.EROFS,
    errno.EFBIG,
}
# A full disk or quota is the target's state, not the file's: transient (the
# files land once there is room again), and LocalCon.check() says "full" until
# there is, so the handler pauses the mapping instead of using up retries.
FULL = {errno.ENOSPC, errno.EDQUOT}


def classify_os_error(exc: OSError, what: str) -> Exception:
    """Turn an OSError on the target side into the contract's error kinds."""
    if isinstance(exc, FileNotFoundError):
        return RemoteNotFound(f"{what}: {exc.strerror}")
    if exc.errno in _PERMANENT:
        return PermanentError(f"{what}: {exc.strerror}")
    return TransientError(f"{what}: {exc.strerror or exc}")


def split_rel(rel: str) -> tuple[list[str], str]:
    """'a/b/c' -> (['a', 'b'], 'c'), after check_rel()."""
    *folders, name = check_rel(rel).split("/")
    return folders, name


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # (O_NONBLOCK: a FIFO never blocks)


class LocalCon(XCon, ServerSideMove, ServerSideCopy, HardLink, FreeSpace, StreamSend, Folders, TakeOver,
               PutBytes):
    """A folder as the remote. Constructed without fsync on a machine with GNU
    cp, LocalCon(...) is a BatchLocalCon (send_many through cp): the batch
    ability is a fact of this machine and configuration, declared by the class."""

    service = "local"
    abilities = Abilities(resumable=False, byte_names=True)

    def __new__(cls, root: str, fsync: bool = False) -> "LocalCon":
        if cls is LocalCon and not fsync and gnu_cp() is not None:  # (fsync: each file is flushed by send())
            cls = BatchLocalCon
        return super().__new__(cls)

    def __init__(self, root: str, fsync: bool = False) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.fsync = fsync
        self._stages = itertools.count()
        self._stages_lock = threading.Lock()
        self._active_stages: set[str] = set()
        # Bytes a write needed when the target ran out of space (None: not full).
        # check() reports the target full until that much is free again.
        self._need: int | None = None

    # -- folders, by descriptor --------------------------------------------
    def _open_root(self) -> int:
        """A descriptor of the root (the configured path may itself be a link).

        Opened for each operation, never kept: a share unmounted and mounted
        again must be written on its new mount, not on the old one. Missing:
        TransientError (an unmounted share), never "not found"."""
        try:
            return os.open(self.root, DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError as exc:
            raise TransientError(f"target folder {self.root!r} is not there ({exc.strerror})") from None

    def _open_folder(self, folders: list[str], what: str, create: bool) -> int | None:
        """_walk() from a root opened for this call alone."""
        root = self._open_root()
        try:
            return self._walk(root, folders, what, create)
        finally:
            os.close(root)

    def _walk(self, root: int, folders: list[str], what: str, create: bool) -> int | None:
        """A new descriptor of root/folders..., opened one level at a time
        without following links. create=True makes missing folders (never the
        root) and replaces a link in the way (see _step); create=False returns
        None when a level is missing, a link or a file (nothing of ours is
        beyond it). No folder is remembered between calls: each is checked
        as it is now."""
        if not folders:
            return os.dup(root)
        fd: int | None = root
        try:
            for i, part in enumerate(folders):
                child = self._step(fd, part, "/".join(folders[: i + 1]), what, create)
                if fd != root:
                    os.close(fd)
                fd = child
                if fd is None:
                    return None
            return fd
        except BaseException:
            if fd != root:
                _close(fd)
            raise

    def _step(self, parent: int, name: str, rel: str, what: str, create: bool) -> int | None:
        """Open the folder `name` in `parent` without following a link.

        The target root is skynet's: a link where a folder should be was not
        put there by skynet (it never makes links), so with create=True the
        link itself is removed (never what it points to) and a real folder
        made in its place. A file in the way is a PermanentError, as before."""
        for _ in range(3):  # a folder made or removed by someone else meanwhile: look again
            try:
                return os.open(name, DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    return None
            except NotADirectoryError:  # (O_NOFOLLOW|O_DIRECTORY on a link: ENOTDIR, or ELOOP below)
                if not self._clear_link(parent, name, rel, what, create):
                    return None
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise self._error(exc, what) from exc
                if not self._clear_link(parent, name, rel, what, create):
                    return None
            try:
                os.mkdir(name, dir_fd=parent)
            except FileExistsError:
                pass
            except FileNotFoundError:  # the parent was removed under us
                raise TransientError(f"{what}: folder {rel!r} vanished while writing") from None
            except OSError as exc:
                raise self._error(exc, what) from exc
        raise TransientError(f"{what}: folder {rel!r} keeps changing")

    def _lstat_at(self, folder: int, name: str, what: str) -> os.stat_result | None:
        """`name` in the open `folder`, its link not followed; None when nothing is there."""
        try:
            return os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(exc, what) from exc

    def _clear_link(self, parent: int, name: str, rel: str, what: str, create: bool) -> bool:
        """Something not a folder is at `name`: True once a link there is gone
        (create=True only), False when nothing there is to be walked into
        (create=False); a file in the way of a folder to make raises."""
        st = self._lstat_at(parent, name, what)
        if st is None:
            return create
        if not create:
            return False
        if not statmod.S_ISLNK(st.st_mode):
            raise InTheWay(f"{what}: a file is in the way of folder {rel!r}", rel)
        log.warning("%s: a link is in the way of folder %r in %r: removing the link (not what it points to)",
                    what, rel, self.root)
        self._remove(parent, name, what)  # a link: unlinked itself, never what it points to
        return True

    def _error(self, exc: OSError, what: str, need: int = 0) -> Exception:
        """classify_os_error(), except while the root itself is gone (a share
        unmounted in the middle of the call): then every failure is transient,
        and "not found" means "ask later", never "already gone". A full target
        (`need` bytes did not fit) is remembered for check()."""
        if exc.errno in FULL:
            self._need = max(self._need or 0, need)
            return TransientError(f"{what}: target folder {self.root!r} is full ({exc.strerror})")
        if not os.path.isdir(self.root):
            return TransientError(f"{what}: target folder {self.root!r} is not there")
        return classify_os_error(exc, what)

    # -- lifecycle ---------------------------------------------------------
    def connect(self) -> None:
        self.check()

    def check(self) -> None:
        if not os.path.isdir(self.root):
            # An unmounted share or a missing disk: it may come back.
            raise TransientError(f"target folder {self.root!r} is not there")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermanentError(f"target folder {self.root!r} is not writable")
        self._check_room()

    def _check_room(self) -> None:
        """After a write found the target full: TransientError until the bytes
        it needed (plus a margin) and an inode are free. The handler then pauses
        the mapping and polls connect() with back-off, instead of retrying each
        file until it is recorded as failed."""
        need = self._need
        if need is None:
            return
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            raise TransientError(f"target folder {self.root!r}: {exc.strerror}") from None
        free = st.f_bavail * st.f_frsize
        if free < need + FULL_MARGIN or st.f_favail == 0:
            raise TransientError(f"target folder {self.root!r} is full: {free} bytes free, {need} needed")
        self._need = None

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"local:{self.root}"

    # -- operations --------------------------------------------------------
    def send(self, f: LocalFile, ctx: TransferContext) -> SendResult:
        def write(root: int, folder: int, name: str, src: int, what: str) -> int:
            return self._write(root, folder, name, src, f, ctx, what)

        done = self._into_place(f, f"send {f.rel!r}", write)
        return SendResult(size=done, etag=None, bytes_sent=done)

    def _into_place(self, f: LocalFile, what: str, put: Callable[[int, int, str, int, str], T]) -> T:
        """The frame of a send: `f` opened as checked (errors opening it are the
        caller's, the local side: connections/contract/source.py), the root and
        f's folder beneath it opened (made where missing), then `put(root, folder,
        name, src, what)`; every descriptor closed after."""
        src = open_source_fd(f)
        try:
            return self._in_folder(f.rel, what, lambda root, folder, name: put(root, folder, name, src, what))
        finally:
            os.close(src)

    def _in_folder(self, rel: str, what: str, act: Callable[[int, int, str], T]) -> T:
        """`act(root, folder, name)` with the root and rel's folder beneath it open
        (folders made where missing, never through a link); both closed after."""
        folders, name = split_rel(rel)
        root = self._open_root()
        try:
            folder = self._walk(root, folders, what, create=True)
            assert folder is not None  # (create=True)
            try:
                return act(root, folder, name)
            finally:
                os.close(folder)
        finally:
            os.close(root)

    def _write(self, root: int, folder: int, name: str, src: int, f: LocalFile, ctx: TransferContext,
               what: str) -> int:
        """Write the temp file in `folder` (a descriptor under `root`), give it
        the mtime and the permission bits (never the special ones), rename it
        over `name`."""
        tmp = temp_name(name)
        dst = self._open_tmp(folder, tmp, what)
        try:
            try:
                done = self._copy(src, dst, f.size, ctx, what)
                self._land(root, folder, tmp, name, dst, f.mode, f.mtime_ns, what, f.rel, f.size)
            finally:
                os.close(dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=folder)
            raise
        return done

    def take_over(self, f: LocalFile) -> SendResult:
        """TakeOver: the checked descriptor of `f` is linked by its /proc/self/fd
        name (linkat with AT_SYMLINK_FOLLOW: the very inode that was checked, no
        second lookup of f.path, no privilege needed), then given mtime and mode
        and renamed over the name as send() does. A 1 GiB upload lands in
        microseconds instead of a copy and an fsync of the copy."""
        self._into_place(f, f"take over {f.rel!r}",
                         lambda root, folder, name, src, what: self._link_in(root, folder, name, src, what, f.mode,
                                                                             f.mtime_ns, f.rel, f.size))
        return SendResult(size=f.size, etag=None, bytes_sent=0)

    def put_bytes(self, rel: str, data: bytes | memoryview, *, mode: int = 0o644,
                  replacing: Callable[[], None] | None = None) -> SendResult:
        """PutBytes: the bytes go into an anonymous file (O_TMPFILE) in rel's folder,
        which gets its name only once written: a kill -9 mid-way leaves nothing behind
        (the kernel frees the inode), where a named temp file would stay until the next
        write of that name. A new name is linked in place directly; an existing file is
        replaced as take_over() does (a temp name, then rename). A file system without
        O_TMPFILE gets the named temp file send() writes."""
        what = f"send {rel!r}"
        self._in_folder(rel, what, lambda root, folder, name: self._put_in(root, folder, name, rel, data, mode,
                                                                           replacing, what))
        return SendResult(size=len(data), etag=None, bytes_sent=len(data))

    def _put_in(self, root: int, folder: int, name: str, rel: str, data: bytes | memoryview, mode: int,
                replacing: Callable[[], None] | None, what: str) -> None:
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=folder)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise self._error(exc, what, len(data)) from exc
            fd = -1  # no O_TMPFILE here
        if fd < 0:
            tmp = temp_name(name)
            fd = self._open_tmp(folder, tmp, what)
            try:
                self._write_all(fd, data, what)
                self._before_replacing(folder, name, replacing, what)
                self._land(root, folder, tmp, name, fd, mode, None, what, rel, len(data))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=folder)
                raise
            finally:
                os.close(fd)
            return
        try:
            self._write_all(fd, data, what)
            if self._before_replacing(folder, name, replacing, what) or not self._link_new(root, folder, name, fd,
                                                                                             mode, what, len(data)):
                self._link_in(root, folder, name, fd, what, mode, None, rel, len(data))
        finally:
            os.close(fd)

    def _write_all(self, fd: int, data: bytes | memoryview, what: str) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += os.pwrite(fd, view[done:], done)
            except OSError as exc:
                raise self._error(exc, what, len(view) - done) from exc

    def _before_replacing(self, folder: int, name: str, replacing: Callable[[], None] | None, what: str) -> bool:
        """Whether something is at `name`; `replacing()` first when it is a file."""
        st = self._lstat_at(folder, name, what)
        if st is None:
            return False
        if replacing is not None and statmod.S_ISREG(st.st_mode):
            replacing()
        return True

    def _finish_inode(self, root: int, fd: int, mode: int, mtime_ns: int | None, what: str, size: int) -> None:
        """A written file's last steps before it gets its name: permission bits (never
        the special ones) and mtime on its descriptor, an fsync if this target syncs,
        and a check that the root still leads where the write began."""
        try:
            os.fchmod(fd, mode & MODE_BITS)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            raise self._error(exc, what, size) from exc
        self._still_root(root, what)

    def _link_new(self, root: int, folder: int, name: str, fd: int, mode: int, what: str, size: int) -> bool:
        """Give the written anonymous file `fd` its mode (and an fsync where this target
        syncs) and link it at `name`, which nothing held a moment ago; False when
        something is there now (the caller replaces it the usual way)."""
        self._finish_inode(root, fd, mode, None, what, size)
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=folder, follow_symlinks=True)
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._error(exc, what) from exc
        return True

    def _link_in(self, root: int, folder: int, name: str, src: int, what: str, mode: int, mtime_ns: int | None,
                 rel: str, size: int) -> None:
        tmp = temp_name(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)  # a crash's leftover, never written through
        try:
            os.link(f"/proc/self/fd/{src}", tmp, dst_dir_fd=folder, follow_symlinks=True)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOENT):
                raise Unsupported(f"{what}: cannot link it here ({exc.strerror})") from None
            raise self._error(exc, what) from exc
        try:
            self._land(root, folder, tmp, name, src, mode, mtime_ns, what, rel, size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=folder)
            raise
        # rename() of two names of one inode does nothing: the file was there already
        with contextlib.suppress(FileNotFoundError):
            if os.stat(tmp, dir_fd=folder, follow_symlinks=False).st_ino == os.fstat(src).st_ino:
                os.unlink(tmp, dir_fd=folder)

    # -- streamed sends (migrations) ------------------------------------------
    def send_stream(self, rel: str, open_at: StreamOpener, ctx: TransferContext, *,
                    md5: str | None = None) -> SendResult:
        """StreamSend: the stream is written into the temp file send() uses, at its
        offset; a resumed attempt continues from the temp file's size (the truth
        after a kill -9) and the MD5 is then taken over the whole temp file; the
        temp file gets mtime and mode and is renamed into place."""
        what = f"send {rel!r}"
        return self._in_folder(rel, what, lambda root, folder, name: self._write_stream(root, folder, name, rel,
                                                                                        open_at, ctx, md5, what))

    def _write_stream(self, root: int, folder: int, name: str, rel: str, open_at: StreamOpener,
                      ctx: TransferContext, md5: str | None, what: str) -> SendResult:
        tmp = temp_name(name)
        saved = ctx.resume.load()
        if not saved or saved.get("kind") != "local-stream" or saved.get("rel") != rel:
            saved = None
        dst = self._open_partial(folder, tmp) if saved else None
        offset = os.fstat(dst).st_size if dst is not None else 0
        stream, resumed = streams.reopen(open_at, offset, saved)
        try:
            if not resumed:
                _close(dst)
                dst, offset = None, 0
                dst = self._open_tmp(folder, tmp, what)
                ctx.resume.save({"kind": "local-stream", "rel": rel, "version": stream.version, "size": stream.size})
            feed = streams.Feed(stream)
            pos = self._pour(feed, dst, offset, ctx, what)
            seen = feed.finish(md5)
            if seen is None and not stream.checked:  # resumed: hash the whole temp file (local reads are cheap)
                seen = _md5_of(dst)
                streams.check_md5(seen, md5)
            self._finish_stream(root, folder, tmp, name, dst, stream, what)
        except ChecksumMismatch:
            ctx.resume.clear()
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=folder)
            raise
        finally:
            _close(dst)
            stream.close()
        ctx.resume.clear()
        return SendResult(size=pos, etag=None, bytes_sent=pos - offset, md5=seen)

    def _open_partial(self, folder: int, tmp: str) -> int | None:
        """The temp file an earlier attempt left, for writing on at its end: only a
        plain file of ours (one link, not a link planted at its name), else None."""
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        except OSError:
            return None
        st = os.fstat(fd)
        if not statmod.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            return None
        return fd

    def _pour(self, feed: streams.Feed, dst: int, offset: int, ctx: TransferContext, what: str) -> int:
        """Write the stream from `offset` on, CHUNK bytes at a time; ctx.stop is
        honoured between chunks (what is written stays for the next attempt)."""
        view = memoryview(bytearray(CHUNK))
        pos = offset
        total = feed.stream.size or 0
        ctx.start_at(offset, total)
        while True:
            if ctx.stop.is_set():
                raise TransferStopped(pos, total)
            n = feed.fill(view)
            done = 0
            while done < n:
                try:
                    done += os.pwrite(dst, view[done:n], pos + done)
                except OSError as exc:
                    raise self._error(exc, what, n - done) from exc
            pos += n
            ctx.report(pos, max(total, pos))
            if n < len(view):
                return pos

    def _finish_stream(self, root: int, folder: int, tmp: str, name: str, dst: int, stream: Stream,
                       what: str) -> None:
        """Mode, mtime (where the source gave them), fsync, rename into place."""
        mode = stream.mode if stream.mode is not None else 0o644
        self._land(root, folder, tmp, name, dst, mode, stream.mtime_ns, what)

    def _land(self, root: int, folder: int, tmp: str, name: str, fd: int, mode: int, mtime_ns: int | None,
              what: str, rel: str | None = None, size: int = 0) -> None:
        """The end of every write here: the temp file `tmp` (open as `fd`) gets the
        permission bits (never the special ones) and the mtime on its descriptor (no
        path lookups), an fsync if this target syncs, and is renamed over `name` --
        unless the root no longer leads where the write began. A folder at `name`
        is InTheWay for a mirrored file (`rel`), a plain refusal otherwise."""
        self._finish_inode(root, fd, mode, mtime_ns, what, size)
        try:
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except IsADirectoryError:
            if rel is None:
                raise PermanentError(f"{what}: a folder is in the way of the file") from None
            raise InTheWay(f"{what}: a folder is in the way of the file", rel) from None
        except OSError as exc:
            raise self._error(exc, what) from exc

    def _still_root(self, root: int, what: str) -> None:
        """The root path still leads to the folder this send opened. A share
        unmounted (or its folder moved away) during a long write: the file must
        not be renamed into place on what is no longer the target."""
        try:
            here = os.stat(self.root)
        except OSError:
            raise TransientError(f"{what}: target folder {self.root!r} is not there") from None
        was = os.fstat(root)
        if (was.st_dev, was.st_ino) != (here.st_dev, here.st_ino):
            raise TransientError(f"{what}: target folder {self.root!r} was unmounted or moved while writing")

    def _copy_staged(self, cp: str, root_fd: int | None, batch: list[tuple[int, LocalFile]],
                     results: list[SendResult | Exception | None]) -> None:
        """Open the files (beneath `root_fd`, see connections/contract/source.py), one cp of
        them into a new staging folder, permission bits and mtime kept; then one
        rename per file. A file that failed its checks gets that error as its
        result; one left unstaged keeps results[i] None (send() takes it)."""
        opened: list[tuple[int, LocalFile, int]] = []
        try:
            for i, f in batch:
                try:
                    opened.append((i, f, open_source_fd(f, root_fd, reads=False)))
                except Exception as exc:  # gone, replaced, a FIFO now...: the caller looks again
                    results[i] = exc
            if len(opened) >= BATCH_MIN:
                self._cp_fds(cp, opened, results)
        finally:
            for *_, fd in opened:
                os.close(fd)

    def _cp_fds(self, cp: str, opened: list[tuple[int, LocalFile, int]],
                results: list[SendResult | Exception | None]) -> None:
        """cp the open files into a staging folder (each named by its descriptor
        number), then rename each into place (_unstage)."""
        with self._stages_lock:
            stage = f"{self.root}/{STAGE_PREFIX}{os.getpid()}-{next(self._stages)}"
            self._active_stages.add(stage)
        try:
            try:
                os.mkdir(stage, 0o700)
            except OSError:
                return  # the target is not writable or not there: send() says which
            # cp's own messages only matter for files it could not copy, and
            # send() reports those again with our classification. With umask 0,
            # cp creates each file with its source's permission bits, as send()
            # sets them; --preserve=mode would also copy ACLs (two more system
            # calls a file), which send() does not. The child inherits the
            # descriptors under the same numbers: /proc/self/fd/N is our file N.
            fds = [fd for *_, fd in opened]
            copied = subprocess.run([cp, "--preserve=timestamps", "-t", stage, "--",
                                     *(f"/proc/self/fd/{fd}" for fd in fds)],
                                    pass_fds=fds, umask=0, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, check=False)
            # cp failed for some file (full target, a source gone...): what it
            # left of that file may be cut short, so each is checked.
            self._unstage(stage, opened, results, whole=copied.returncode == 0)
        finally:
            try:
                os.rmdir(stage)  # empty unless a rename failed
            except FileNotFoundError:
                pass
            except OSError:
                shutil.rmtree(stage, ignore_errors=True)
            with self._stages_lock:
                self._active_stages.discard(stage)

    def _unstage(self, stage: str, opened: list[tuple[int, LocalFile, int]],
                 results: list[SendResult | Exception | None], whole: bool) -> None:
        """Rename the staged files (each named by its source descriptor's number)
        into place, folder by folder: each target folder is opened (made if
        missing) once, by descriptor without following links, and each file is
        one renameat() from the staging folder to it.
        whole=False (cp failed for some file): a staged file counts only with
        its source's size and mtime (cp sets the mtime once all is written).
        Anything unusual leaves the file to send(), which reports it."""
        by_folder: dict[tuple[str, ...], list[tuple[int, LocalFile, str, str]]] = {}
        for i, f, fd in opened:
            folders, name = split_rel(f.rel)
            by_folder.setdefault(tuple(folders), []).append((i, f, str(fd), name))
        staged = self._open_folder([os.path.basename(stage)], "unstage", create=False)
        if staged is None:
            return  # the staging folder is gone (the target unmounted...): send() says why
        try:
            for folders, items in by_folder.items():
                target = None
                try:
                    target = self._open_folder(list(folders), f"send {items[0][1].rel!r}", create=True)
                    for i, f, staged_name, name in items:
                        if not whole and not _staged_whole(staged, staged_name, f):
                            continue
                        try:
                            os.replace(staged_name, name, src_dir_fd=staged, dst_dir_fd=target)
                        except OSError:
                            continue  # not staged (vanished, unreadable...), a folder in the way...: send() says which
                        results[i] = SendResult(size=f.size, etag=None, bytes_sent=f.size)
                except Exception:  # the root gone, a file in the way of a folder...: send() says which
                    continue
                finally:
                    _close(target)
        finally:
            _close(staged)

    def cleanup(self, keep: list[dict]) -> None:
        """Remove staging folders a send_many cut short (kill -9) left in the root.

        kill -9 does not reach the cp the dead run started: for a moment it may
        still be writing into its folder, refilling what rmtree just emptied.
        Such a folder is removed again until it stays gone (a cp of one batch
        ends within seconds), then left with a warning."""
        try:
            names = [n for n in os.listdir(self.root) if n.startswith(STAGE_PREFIX)]
        except OSError:
            return
        deadline = time.monotonic() + STALE_STAGE_WAIT
        for n in names:
            path = f"{self.root}/{n}"
            with self._stages_lock:
                if path in self._active_stages:
                    continue
            _remove_stage(path)
            while os.path.lexists(path) and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting on another process, off the sync pipeline (start-up only)
                _remove_stage(path)
            if os.path.lexists(path):
                log.warning("could not remove the staging folder %r left by an earlier run", path)

    def _copy(self, src: int, dst: int, size: int, ctx: TransferContext, what: str) -> int:
        """Copy up to `size` bytes (the size stat saw) in the kernel with
        sendfile(), without a trip through Python buffers. Stopping at `size`
        saves the extra call that would only find the end of the file; a file
        that grew or shrank meanwhile is caught by the caller's second stat and
        sent again. Falls back to read/write where sendfile cannot be used.
        A write error (full, I/O error, a share gone stale) is classified by
        _error(): transient for a full or vanished target."""
        done = 0
        use_sendfile = True
        while done < size:
            if ctx.stop.is_set():
                raise TransientError(f"{what}: stopped")
            want = min(CHUNK, size - done)
            if use_sendfile:
                try:
                    n = os.sendfile(dst, src, done, want)
                except OSError as exc:
                    if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
                        use_sendfile = False
                        continue
                    # sendfile reports read and write errors alike: a plain
                    # read tells them apart (a source error is the caller's).
                    os.pread(src, 1, done)
                    raise self._error(exc, what, size) from exc
            else:
                chunk = os.pread(src, want, done)  # source errors: the caller's
                if not chunk:
                    break
                try:
                    n = os.write(dst, chunk)
                except OSError as exc:
                    raise self._error(exc, what, size) from exc
            if n == 0:
                break  # the file shrank: the caller sees it and sends again
            done += n
            ctx.report(done, size)
        return done

    def _open_tmp(self, folder: int, tmp: str, what: str) -> int:
        """Create the temporary file in `folder`, exclusively and without
        following a link: whatever is at its name (a leftover of a crash, or
        something planted: a link, a hard link to another file) is removed
        first, never opened and truncated."""
        for _ in range(3):
            try:
                return os.open(tmp, TMP_FLAGS, 0o600, dir_fd=folder)
            except FileExistsError:
                try:
                    os.unlink(tmp, dir_fd=folder)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # a folder at the temp name: EISDIR, permanent
                    raise self._error(exc, what) from exc
            except FileNotFoundError:
                raise TransientError(f"{what}: its folder vanished while writing") from None
            except OSError as exc:
                raise self._error(exc, what) from exc
        raise TransientError(f"{what}: its temporary file keeps coming back")

    def delete(self, rel: str) -> None:
        what = f"delete {rel!r}"
        folders, name = split_rel(rel)
        parent = self._open_folder(folders, what, create=False)
        if parent is None:
            return  # a folder on the way is missing (or a link: nothing of ours is beyond it)
        try:
            with contextlib.suppress(OSError):  # an upload of this file cut short by a crash may have left it
                os.unlink(temp_name(name), dir_fd=parent)
            self._remove(parent, name, what)
        finally:
            os.close(parent)

    def _remove(self, parent: int, name: str, what: str) -> None:
        """Remove `name` in `parent`: a folder with everything in it (rmtree
        by descriptor never descends into a link), anything else (a link
        included) by unlinking the name itself. Missing: nothing to do."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if statmod.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, what) from exc

    def discard(self, rel: str, state: dict | None) -> None:
        """Remove the temp file a send of `rel` cut short may have left (a kill -9,
        or the share unmounted mid-write): its name is derived from rel's, so
        this is one unlink, and nothing when there is none."""
        what = f"discard {rel!r}"
        folders, name = split_rel(rel)
        parent = self._open_folder(folders, what, create=False)  # TransientError while the root is gone
        if parent is None:
            return
        try:
            os.unlink(temp_name(name), dir_fd=parent)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            raise self._error(exc, what) from exc
        finally:
            os.close(parent)

    def move(self, src: str, dest: str) -> None:
        what = f"move {src!r} -> {dest!r}"
        (a_folders, a), (b_folders, b) = split_rel(src), split_rel(dest)
        a_parent = b_parent = None
        try:
            a_parent = self._open_folder(a_folders, what, create=False)
            try:
                a_st = None if a_parent is None else os.stat(a, dir_fd=a_parent, follow_symlinks=False)
            except FileNotFoundError:
                a_st = None
            except OSError as exc:
                raise self._error(exc, what) from exc
            if a_st is None:
                raise RemoteNotFound(f"{what}: source not on the target")
            b_parent = self._open_folder(b_folders, what, create=True)
            try:
                b_st = os.stat(b, dir_fd=b_parent, follow_symlinks=False)
            except FileNotFoundError:
                b_st = None
            except OSError as exc:
                raise self._error(exc, what) from exc
            if b_st is not None and statmod.S_ISDIR(a_st.st_mode) and statmod.S_ISDIR(b_st.st_mode):
                # rename() refuses a non-empty destination folder: the moved
                # folder replaces it, as it does on the source side.
                self._remove(b_parent, b, what)
            elif b_st is not None and statmod.S_ISDIR(a_st.st_mode) != statmod.S_ISDIR(b_st.st_mode):
                kind = "folder" if statmod.S_ISDIR(b_st.st_mode) else "file"
                raise InTheWay(f"{what}: a {kind} is in the way of the destination", dest)
            try:
                os.replace(a, b, src_dir_fd=a_parent, dst_dir_fd=b_parent)
            except OSError as exc:
                raise self._error(exc, what) from exc
        finally:
            _close(a_parent)
            _close(b_parent)

    def stat(self, rel: str) -> RemoteEntry | None:
        st = self._lstat_rel(rel)
        if st is None or not statmod.S_ISREG(st.st_mode):
            return None
        return RemoteEntry(rel, st.st_size, st.st_mtime_ns, statmod.S_IMODE(st.st_mode))

    def _lstat_rel(self, rel: str) -> os.stat_result | None:
        """lstat of `rel` beneath the root, no link followed on the way or at rel; None if nothing is there."""
        folders, name = split_rel(rel)
        parent = self._open_folder(folders, f"stat {rel!r}", create=False)
        if parent is None:
            return None
        try:
            return self._lstat_at(parent, name, f"stat {rel!r}")
        finally:
            os.close(parent)

    def read_range(self, rel: str, offset: int, length: int, *, expect: RemoteEntry | None = None) -> bytes:
        """pread() of the file opened beneath the root (no link followed); `expect`
        is checked against the opened descriptor, so the bytes are that file's."""
        check_range(offset, length)
        what = f"read {rel!r}"
        fd = self._open_file(rel, what)
        try:
            st = os.fstat(fd)
            if expect is not None and (st.st_size, st.st_mtime_ns) != (expect.size, expect.mtime_ns):
                raise RemoteChanged(f"{what}: the file changed since it was listed "
                                    f"(size {expect.size} -> {st.st_size})")
            out = bytearray()
            while len(out) < length:
                try:
                    got = os.pread(fd, min(length - len(out), CHUNK), offset + len(out))
                except OSError as exc:
                    raise self._error(exc, what) from exc
                if not got:
                    break
                out += got
            return bytes(out)
        finally:
            os.close(fd)

    def _open_file(self, rel: str, what: str) -> int:
        """A read-only descriptor of the regular file `rel`, opened beneath the root
        by descriptor without following a link (on the way or at `rel` itself);
        RemoteNotFound when no regular file is there."""
        folders, name = split_rel(rel)
        parent = self._open_folder(folders, what, create=False)
        if parent is None:
            raise RemoteNotFound(f"{what}: not on the target")
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            raise RemoteNotFound(f"{what}: not on the target") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # a link, a folder, a socket: no file of ours
                raise RemoteNotFound(f"{what}: not a file on the target") from None
            raise self._error(exc, what) from exc
        finally:
            os.close(parent)
        if not statmod.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RemoteNotFound(f"{what}: not a file on the target")
        return fd

    def copy(self, src: str, dest: str, *, size: int | None = None) -> None:
        """Copy the file `src` to `dest` beneath the root, written as send() writes
        (temp file, mtime and mode, rename): no byte leaves the machine. (`size`
        is not needed: the open file says.)"""
        what = f"copy {src!r} -> {dest!r}"
        fd = self._open_file(src, what)
        try:
            st = os.fstat(fd)
            f = LocalFile(path="", rel=dest, size=st.st_size, mtime_ns=st.st_mtime_ns,
                          mode=statmod.S_IMODE(st.st_mode), ino=st.st_ino)
            self._in_folder(dest, what, lambda root, folder, name: self._write(root, folder, name, fd, f,
                                                                               TransferContext(), what))
        finally:
            os.close(fd)

    def link(self, src: str, dest: str) -> None:
        """linkat() beneath the root, by descriptor: `src` must be a regular file
        (a link at its name is no file of ours), `dest`'s folders are made."""
        what = f"link {src!r} -> {dest!r}"
        (a_folders, a), (b_folders, b) = split_rel(src), split_rel(dest)
        a_parent = b_parent = None
        try:
            a_parent = self._open_folder(a_folders, what, create=False)
            try:
                st = None if a_parent is None else os.stat(a, dir_fd=a_parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            except OSError as exc:
                raise self._error(exc, what) from exc
            if st is None or not statmod.S_ISREG(st.st_mode):
                raise RemoteNotFound(f"{what}: no such file on the target")
            b_parent = self._open_folder(b_folders, what, create=True)
            try:
                os.link(a, b, src_dir_fd=a_parent, dst_dir_fd=b_parent, follow_symlinks=False)
            except FileExistsError:
                raise PermanentError(f"{what}: the name is taken") from None
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise Unsupported(f"{what}: the target's file system refuses hard links ({exc.strerror})") from None
                raise self._error(exc, what) from exc
        finally:
            _close(a_parent)
            _close(b_parent)

    def make_folder(self, rel: str, mode: int) -> None:
        """Folders.make_folder, by descriptor like everything here: each level
        opened (or made) without following a link, the mode set on the folder
        that was opened (through its O_PATH descriptor), never on a name."""
        what = f"make folder {rel!r}"
        fd = self._open_folder(check_rel(rel).split("/"), what, create=True)
        assert fd is not None  # (create=True)
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode & MODE_BITS)  # the opened folder itself (no name looked up again)
        except OSError as exc:
            raise self._error(exc, what) from exc
        finally:
            os.close(fd)

    def folder(self, rel: str) -> FolderEntry | None:
        """Folders.folder: one lstat beneath the root (no link followed on the way or at rel)."""
        st = self._lstat_rel(rel)
        if st is None or not statmod.S_ISDIR(st.st_mode) or split_rel(rel)[1].startswith(TMP_PREFIX):
            return None
        return FolderEntry(rel, statmod.S_IMODE(st.st_mode))

    def list_folders(self, rel: str = "") -> Iterator[FolderEntry]:
        """The folders under `rel`, held to the listing rule (within_listing) like list()."""
        return within_listing((FolderEntry(r, statmod.S_IMODE(st.st_mode)) for r, st in self._walk_tree(rel)
                               if statmod.S_ISDIR(st.st_mode)), rel, _folder_rel, f"local: {self.root}", paths=True)

    def free_space(self) -> int | None:
        """Bytes free for an unprivileged writer on the target's file system."""
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            raise TransientError(f"target folder {self.root!r}: {exc.strerror}") from None
        return st.f_bavail * st.f_frsize

    def list(self, rel: str = "") -> Iterator[RemoteEntry]:
        """The files under `rel`, held to the listing rule (within_listing) like every backend's."""
        files = (RemoteEntry(r, st.st_size, st.st_mtime_ns, statmod.S_IMODE(st.st_mode))
                 for r, st in self._walk_tree(rel) if statmod.S_ISREG(st.st_mode))
        return within_listing(files, rel, _rel_of, f"local: {self.root}", paths=True)

    def _walk_tree(self, rel: str) -> Iterator[tuple[str, os.stat_result]]:
        """(path, lstat) of every file and folder under `rel` (links and the like
        too: callers keep what they list), by descriptor: os.fwalk never descends
        into a link (nor into a folder swapped for one while it walks); our
        temporary files and staging folders are left out."""
        top = self._open_folder(check_rel(rel).split("/") if rel else [], f"list {rel!r}", create=False)
        if top is None:
            return

        def fail(exc: OSError) -> None:
            if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                raise self._error(exc, f"list {rel!r}") from exc

        try:
            for folder, dirs, files, fd in os.fwalk(".", dir_fd=top, onerror=fail):
                dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX)]
                sub = folder[2:]  # "." or "./x/y"
                prefix = "/".join(p for p in (rel, sub) if p)
                for name in dirs + files:
                    if name.startswith(TMP_PREFIX):
                        continue
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        raise self._error(exc, f"list {rel!r}") from exc
                    yield f"{prefix}/{name}" if prefix else name, st
        finally:
            os.close(top)

    def leftovers(self) -> list[str]:
        """Temporary files and staging folders left in the target (the contract checks for none)."""
        found = []
        for folder, dirs, files in os.walk(self.root):
            found += [os.path.join(folder, n) for n in files + dirs if n.startswith(TMP_PREFIX)]
        return found


class BatchLocalCon(LocalCon, BatchSend):
    """LocalCon with batches of small files copied by one GNU cp (see the module's
    docstring); what LocalCon(...) gives where cp is there and fsync is off."""

    def send_many(self, files: list[LocalFile], stop: threading.Event) -> list[SendResult | Exception]:
        """Copy the files with one cp into a staging folder, then rename each
        into place. Anything out of the ordinary (cp failed for a file, a rename
        refused) goes through send(), which reports it the way it always does.
        Special permission bits: cp without --preserve=mode creates each file
        with its source's mode minus setuid, setgid and sticky, as send() does."""
        cp = gnu_cp()
        if cp is None or len(files) < BATCH_MIN:
            return send_each(self, files, stop)
        results: list[SendResult | Exception | None] = [None] * len(files)
        by_root: dict[tuple[str, bool], list[tuple[int, LocalFile]]] = {}
        for i, f in enumerate(files):
            try:
                check_rel(f.rel)
            except Exception as exc:  # UnsafePath (a bad name): this file's own result
                results[i] = exc
                continue
            by_root.setdefault((f.root, f.follow), []).append((i, f))
        for (source_root, follow), batch in by_root.items():
            if len(batch) >= BATCH_MIN:
                per_cp = fds_per_cp()
                with _source_root(source_root, follow) as root_fd:
                    for start in range(0, len(batch), per_cp):
                        self._copy_staged(cp, root_fd, batch[start:start + per_cp], results)
        rest = [i for i, r in enumerate(results) if r is None]
        for i, r in zip(rest, send_each(self, [files[i] for i in rest], stop)):
            results[i] = r
        return results  # type: ignore[return-value]  (every slot is filled)


def _md5_of(fd: int) -> str:
    """The MD5 of an open file's whole content."""
    h = hashlib.md5()
    pos = 0
    while chunk := os.pread(fd, CHUNK, pos):
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


def _folder_rel(entry: FolderEntry) -> str:
    return entry.rel


def _rel_of(entry: RemoteEntry) -> str:
    return entry.rel


def _remove_stage(path: str) -> None:
    """Remove a staging folder left behind; a link planted under its name is
    unlinked itself (rmtree refuses links and never descends into one)."""
    if os.path.islink(path):
        with contextlib.suppress(OSError):
            os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _staged_whole(staged: int, name: str, f: LocalFile) -> bool:
    """The staged copy of `f` is all there: a regular file of its size and mtime."""
    try:
        st = os.stat(name, dir_fd=staged, follow_symlinks=False)
    except OSError:
        return False
    return statmod.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (f.size, f.mtime_ns)


@contextlib.contextmanager
def _source_root(root: str, follow: bool) -> Iterator[int | None]:
    """The descriptor the batch's files are opened beneath (one open for the
    batch), or None when they are opened by their own paths: links followed on
    purpose, or files outside any mapping (see connections/contract/source.py)."""
    if not root or follow:
        yield None
        return
    try:
        fd = open_root(root)
    except OSError:  # the source folder went away: each file's open says so
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


# -- configuration (the [local] section) -------------------------------------
KEYS: dict[str, tuple[str, str]] = {
    "fsync": ("no", "flush each file to the target disk before renaming it into place (slower, survives power loss)"),
}


def _parse(options: dict[str, str], target: str) -> tuple[str, bool]:
    if not target.strip():
        raise ValueError("target: missing: the folder to mirror into")
    fsync = keyed("fsync", options.get("fsync", KEYS["fsync"][0]), parse_bool)
    return target.strip(), fsync


def validate(options: dict[str, str], target: str) -> None:
    _parse(options, target)


def build(options: dict[str, str], target: str) -> LocalCon:
    root, fsync = _parse(options, target)
    return LocalCon(root, fsync=fsync)
