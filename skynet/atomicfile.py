"""Write a small file whole, or not at all, without trusting its folder.

Why: a fixed temporary name ("known_hosts.tmp") next to the file is a name
anyone who can write to that folder may plant first, as a symlink to a file
of ours (the daemon then truncates and overwrites what the link points to),
or as a file with wider permissions that we would fill with secrets.
mkstemp() creates a fresh name with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600,
so nothing planted is ever opened; the data are flushed to disk before
rename(2) puts them in place atomically (readers see the old file or the new
one, never a part).
"""
from __future__ import annotations

import contextlib
import os
import tempfile


def write_atomic(path: str, data: bytes | str, mode: int = 0o600) -> None:
    """Replace `path` with `data` (str: UTF-8, surrogates kept) atomically, with `mode`.

    The temporary file is made in the same folder (rename(2) must not cross
    file systems) and removed if anything fails. `path` itself, if it is a
    symlink, is replaced by the new file, never written through.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # mkstemp's 0600, or what the caller asks (umask does not apply)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash once its folder is synced
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
