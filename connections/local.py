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

cp never opens a source path itself: the worker opens each file as send() does
(connections/source.py: beneath the source folder, no link followed, never
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
from typing import Iterator

from connections.base import (
    Abilities,
    LocalFile,
    PermanentError,
    RemoteEntry,
    RemoteNotFound,
    SendResult,
    TransferContext,
    TransientError,
    UnsafePath,
    XCon,
    check_rel,
)
from connections.source import open_root, open_source_fd
from skynet.values import parse_bool

log = logging.getLogger(__name__)

TMP_PREFIX = ".skynet-tmp-"
# Target folders whose realpath() check is remembered. Work arrives folder by
# folder (the scan walks them in order), so a short memory saves nearly every
# check; a long one grew with the tree (~150 bytes a folder, kept for good).
SAFE_PARENTS_KEPT = 1024
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
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EFBIG,
}


def classify_os_error(exc: OSError, what: str) -> Exception:
    """Turn an OSError on the target side into the contract's error kinds."""
    if isinstance(exc, FileNotFoundError):
        return RemoteNotFound(f"{what}: {exc.strerror}")
    if exc.errno in _PERMANENT:
        return PermanentError(f"{what}: {exc.strerror}")
    return TransientError(f"{what}: {exc.strerror or exc}")


class LocalCon(XCon):
    service = "local"
    abilities = Abilities(server_side_move=True, resumable=False, byte_names=True)

    def __init__(self, root: str, fsync: bool = False) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.fsync = fsync
        if not fsync and gnu_cp() is not None:  # (fsync: each file is flushed by send())
            self.abilities = Abilities(server_side_move=True, resumable=False, byte_names=True, batch_send=True)
        self._stages = itertools.count()
        self._stages_lock = threading.Lock()
        self._active_stages: set[str] = set()
        self._real_root = os.path.realpath(self.root)
        self._safe_parents: dict[str, None] = {}  # folders found safe, oldest first

    # -- paths -------------------------------------------------------------
    def _path(self, rel: str, root_check: bool = True) -> str:
        """The absolute target path of `rel`, guaranteed to stay inside root.

        Raises TransientError while the root itself is missing (an unmounted
        share): "not found" must then mean "ask later", never "already gone".
        send() skips that stat (root_check=False): it never takes "not found"
        for success, and _makedirs refuses to create the root."""
        if root_check and not os.path.isdir(self.root):
            raise TransientError(f"target folder {self.root!r} is not there")
        if rel == "":
            return self.root
        # check_rel forbids absolute paths and empty, "." and ".." parts, so
        # root + "/" + rel is already normal and cannot climb out of root.
        full = self.root + "/" + check_rel(rel)
        # A symlinked folder inside the target must not lead writes elsewhere.
        # realpath() costs a stat per path level, so folders found safe are
        # remembered (forgotten when a delete or move changes the tree).
        parent = os.path.dirname(full)
        if parent != self.root and parent not in self._safe_parents:
            real = os.path.realpath(parent)
            if real != os.path.normpath(parent) and os.path.commonpath([self._real_root, real]) != self._real_root:
                raise UnsafePath(f"{rel!r} goes through a link out of {self.root!r}")
            if len(self._safe_parents) >= SAFE_PARENTS_KEPT:  # forget the oldest (dicts keep insertion order)
                del self._safe_parents[next(iter(self._safe_parents))]
            self._safe_parents[parent] = None
        return full

    def _error(self, exc: OSError, what: str) -> Exception:
        """classify_os_error(), except while the root itself is gone (a share
        unmounted in the middle of the call): then every failure is transient,
        and "not found" means "ask later", never "already gone"."""
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

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"local:{self.root}"

    # -- operations --------------------------------------------------------
    def _makedirs(self, folder: str, what: str) -> None:
        """Create the folders between the root and `folder`, one level at a
        time, and never the root itself: if the share is unmounted (even in the
        instant since _path checked), mkdir fails instead of filling the bare
        mount point on the local disk."""
        if folder == self.root:
            return
        current = self.root
        for part in folder[len(self.root) + 1:].split("/"):
            current = os.path.join(current, part)
            try:
                os.mkdir(current)
            except FileExistsError:
                if not os.path.isdir(current):
                    raise PermanentError(f"{what}: a file is in the way of folder {current!r}") from None
            except FileNotFoundError:
                raise TransientError(f"{what}: target folder {self.root!r} is not there") from None
            except NotADirectoryError:
                raise PermanentError(f"{what}: a file is in the way of folder {current!r}") from None
            except OSError as exc:
                raise self._error(exc, what) from exc

    def send(self, f: LocalFile, ctx: TransferContext) -> SendResult:
        target = self._path(f.rel, root_check=False)
        folder, name = target.rsplit("/", 1)
        what = f"send {f.rel!r}"
        tmp = folder + "/" + temp_name(name)
        # Errors opening the source are the caller's (local side): connections/source.py
        src = open_source_fd(f)
        try:
            try:
                dst = self._open_tmp(tmp, what)
                try:
                    done = self._copy(src, dst, f.size, ctx, what)
                    try:  # on the descriptor: no path lookups
                        os.fchmod(dst, f.mode)
                        os.utime(dst, ns=(f.mtime_ns, f.mtime_ns))
                        if self.fsync:
                            os.fsync(dst)
                    except OSError as exc:
                        raise self._error(exc, what) from exc
                finally:
                    os.close(dst)
                try:
                    os.replace(tmp, target)
                except IsADirectoryError:
                    raise PermanentError(f"{what}: a folder is in the way of the file") from None
                except OSError as exc:
                    raise self._error(exc, what) from exc
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        finally:
            os.close(src)
        return SendResult(size=done, etag=None, bytes_sent=done)

    def send_many(self, files: list[LocalFile], stop: threading.Event) -> list[SendResult | Exception]:
        """Copy the files with one cp into a staging folder, then rename each
        into place. Anything out of the ordinary (cp failed for a file, a rename
        refused, special permission bits cp may not keep) goes through send(),
        which reports it the way it always does."""
        cp = gnu_cp() if self.abilities.batch_send else None
        if cp is None or len(files) < BATCH_MIN:
            return super().send_many(files, stop)
        results: list[SendResult | Exception | None] = [None] * len(files)
        by_root: dict[tuple[str, bool], list[tuple[int, LocalFile, str]]] = {}
        for i, f in enumerate(files):
            if f.mode & 0o7000:  # cp drops setuid/setgid bits it cannot vouch for
                continue
            try:
                target = self._path(f.rel, root_check=False)
            except Exception as exc:  # UnsafePath, a bad name: this file's own result
                results[i] = exc
                continue
            by_root.setdefault((f.root, f.follow), []).append((i, f, target))
        for (source_root, follow), batch in by_root.items():
            if len(batch) >= BATCH_MIN:
                per_cp = fds_per_cp()
                with _source_root(source_root, follow) as root_fd:
                    for start in range(0, len(batch), per_cp):
                        self._copy_staged(cp, root_fd, batch[start:start + per_cp], results)
        rest = [i for i, r in enumerate(results) if r is None]
        for i, r in zip(rest, super().send_many([files[i] for i in rest], stop)):
            results[i] = r
        return results  # type: ignore[return-value]  (every slot is filled)

    def _copy_staged(self, cp: str, root_fd: int | None, batch: list[tuple[int, LocalFile, str]],
                     results: list[SendResult | Exception | None]) -> None:
        """Open the files (beneath `root_fd`, see connections/source.py), one cp of
        them into a new staging folder, permission bits and mtime kept; then one
        rename per file. A file that failed its checks gets that error as its
        result; one left unstaged keeps results[i] None (send() takes it)."""
        opened: list[tuple[int, LocalFile, str, int]] = []
        try:
            for i, f, target in batch:
                try:
                    opened.append((i, f, target, open_source_fd(f, root_fd, reads=False)))
                except Exception as exc:  # gone, replaced, a FIFO now...: the caller looks again
                    results[i] = exc
            if len(opened) >= BATCH_MIN:
                self._cp_fds(cp, opened, results)
        finally:
            for *_, fd in opened:
                os.close(fd)

    def _cp_fds(self, cp: str, opened: list[tuple[int, LocalFile, str, int]],
                results: list[SendResult | Exception | None]) -> None:
        """cp the open files into a staging folder (each named by its descriptor
        number), then rename each into place."""
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
            subprocess.run([cp, "--preserve=timestamps", "-t", stage, "--", *(f"/proc/self/fd/{fd}" for fd in fds)],
                           pass_fds=fds, umask=0, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            for i, f, target, fd in opened:
                staged = f"{stage}/{fd}"
                try:
                    os.replace(staged, target)
                except FileNotFoundError:
                    if not os.path.lexists(staged):
                        continue  # cp did not copy it (unreadable...)
                    try:  # the target's folder is missing
                        self._makedirs(os.path.dirname(target), f"send {f.rel!r}")
                        os.replace(staged, target)
                    except Exception:
                        continue
                except OSError:
                    continue  # a folder in the way, the share gone...: send() says which
                results[i] = SendResult(size=f.size, etag=None, bytes_sent=f.size)
        finally:
            try:
                os.rmdir(stage)  # empty unless a rename failed
            except FileNotFoundError:
                pass
            except OSError:
                shutil.rmtree(stage, ignore_errors=True)
            with self._stages_lock:
                self._active_stages.discard(stage)

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
            shutil.rmtree(path, ignore_errors=True)
            while os.path.lexists(path) and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting on another process, off the sync pipeline (start-up only)
                shutil.rmtree(path, ignore_errors=True)
            if os.path.lexists(path):
                log.warning("could not remove the staging folder %r left by an earlier run", path)

    @staticmethod
    def _copy(src: int, dst: int, size: int, ctx: TransferContext, what: str) -> int:
        """Copy up to `size` bytes (the size stat saw) in the kernel with
        sendfile(), without a trip through Python buffers. Stopping at `size`
        saves the extra call that would only find the end of the file; a file
        that grew or shrank meanwhile is caught by the caller's second stat and
        sent again. Falls back to read/write where sendfile cannot be used."""
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
                    raise self._error(exc, what) from exc
            else:
                chunk = os.pread(src, want, done)  # source errors: the caller's
                if not chunk:
                    break
                try:
                    n = os.write(dst, chunk)
                except OSError as exc:
                    raise self._error(exc, what) from exc
            if n == 0:
                break  # the file shrank: the caller sees it and sends again
            done += n
            ctx.report(done, size)
        return done

    def _open_tmp(self, tmp: str, what: str) -> int:
        """Open the temporary file; create its folders only if they are missing
        (trying first saves a stat per file in the common case)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        folder = os.path.dirname(tmp)
        for attempt in (1, 2):
            try:
                return os.open(tmp, flags, 0o600)
            except FileNotFoundError:
                if attempt == 2:
                    raise TransientError(f"{what}: folder {folder!r} vanished while writing") from None
                self._makedirs(folder, what)
            except NotADirectoryError:
                raise PermanentError(f"{what}: a file is in the way of folder {folder!r}") from None
            except OSError as exc:
                raise self._error(exc, what) from exc
        raise AssertionError("not reached")

    def delete(self, rel: str) -> None:
        target = self._path(check_rel(rel))
        self._safe_parents.clear()
        try:  # an upload of this file cut short by a crash may have left its temp file
            os.unlink(os.path.join(os.path.dirname(target), temp_name(os.path.basename(target))))
        except OSError:
            pass
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, f"delete {rel!r}") from exc
        try:
            if statmod.S_ISDIR(st.st_mode):
                shutil.rmtree(target)
            else:
                os.unlink(target)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, f"delete {rel!r}") from exc

    def discard(self, rel: str, state: dict | None) -> None:
        """Remove the temp file a send of `rel` cut short may have left (a kill -9,
        or the share unmounted mid-write): its name is derived from rel's, so
        this is one unlink, and nothing when there is none."""
        target = self._path(check_rel(rel))  # TransientError while the root is gone
        try:
            os.unlink(os.path.join(os.path.dirname(target), temp_name(os.path.basename(target))))
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            raise self._error(exc, f"discard {rel!r}") from exc

    def move(self, src: str, dest: str) -> None:
        a, b = self._path(check_rel(src)), self._path(check_rel(dest))
        self._safe_parents.clear()
        what = f"move {src!r} -> {dest!r}"
        if not os.path.lexists(a):
            raise RemoteNotFound(f"{what}: source not on the target")
        self._makedirs(os.path.dirname(b), what)
        try:
            if os.path.isdir(a) and os.path.isdir(b):
                # rename() refuses a non-empty destination folder: the moved
                # folder replaces it, as it does on the source side.
                shutil.rmtree(b)
            os.replace(a, b)
        except OSError as exc:
            raise self._error(exc, what) from exc

    def stat(self, rel: str) -> RemoteEntry | None:
        try:
            st = os.lstat(self._path(check_rel(rel)))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(exc, f"stat {rel!r}") from exc
        if not statmod.S_ISREG(st.st_mode):
            return None
        return RemoteEntry(rel, st.st_size, st.st_mtime_ns, statmod.S_IMODE(st.st_mode))

    def list(self, rel: str = "") -> Iterator[RemoteEntry]:
        base = self._path(rel)
        stack = [(base, rel)]
        while stack:
            folder, prefix = stack.pop()
            try:
                it = os.scandir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise self._error(exc, f"list {prefix!r}") from exc
            with it:
                for entry in it:
                    if entry.name.startswith(TMP_PREFIX):
                        continue
                    child = f"{prefix}/{entry.name}" if prefix else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, child))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        yield RemoteEntry(child, st.st_size, st.st_mtime_ns, statmod.S_IMODE(st.st_mode))

    def leftovers(self) -> list[str]:
        """Temporary files and staging folders left in the target (the contract checks for none)."""
        found = []
        for folder, dirs, files in os.walk(self.root):
            found += [os.path.join(folder, n) for n in files + dirs if n.startswith(TMP_PREFIX)]
        return found


@contextlib.contextmanager
def _source_root(root: str, follow: bool) -> Iterator[int | None]:
    """The descriptor the batch's files are opened beneath (one open for the
    batch), or None when they are opened by their own paths: links followed on
    purpose, or files outside any mapping (see connections/source.py)."""
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
    try:
        fsync = parse_bool(options.get("fsync", KEYS["fsync"][0]))
    except ValueError as exc:
        raise ValueError(f"fsync: {exc}") from None
    return target.strip(), fsync


def validate(options: dict[str, str], target: str) -> None:
    _parse(options, target)


def build(options: dict[str, str], target: str) -> LocalCon:
    root, fsync = _parse(options, target)
    return LocalCon(root, fsync=fsync)
