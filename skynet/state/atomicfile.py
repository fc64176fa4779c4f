"""Write a small file atomically, without ever following a planted link.

A fixed temporary name (`path + ".tmp"`) is a trap in any folder another
user can write to, and a nuisance in our own: whoever creates a symlink at
that name first makes `open(tmp, O_CREAT|O_TRUNC)` truncate and fill the
file the link points to (the config with our secrets, written into their
file; or a file of ours truncated). So the temporary file gets a fresh
random name from `tempfile.mkstemp`, which opens it with O_CREAT|O_EXCL:
that never follows a link (an existing name, link or not, is an error and
mkstemp tries another), and the file is created 0600 before a byte is
written. It is then renamed over `path` (atomic on POSIX: readers see the
old or the new file, never half of one), and the file and its folder are
fsynced so that the new content survives a crash once we return.
"""
from __future__ import annotations

import contextlib
import os
import tempfile


def write_atomic(path: str, data: bytes | str, mode: int = 0o600, *, sync: bool = True) -> None:
    """Replace `path` with `data` (str: UTF-8, surrogates kept), the file ending with `mode`.

    The temporary file is made in the same folder (rename(2) must not cross
    file systems). `path` itself, if it is a symlink, is replaced by the new
    file, never written through.

    `sync=False` skips both fsyncs: for files that are rewritten often and
    only describe the present (a status snapshot), where losing the last
    version in a crash costs nothing and an fsync per write would.
    """
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp made it 0600; chmod so the umask does not decide
            f.write(raw)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    """Make the rename durable (the folder's entry is what changed)."""
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is done
    finally:
        os.close(dfd)
