"""Mapper: local absolute paths <-> relative paths <-> remote paths of a mapping.

Inside the engine every file is named by its *relative* POSIX path under the
mapping's source root ("photos/2024/a.jpg"). Connections join that to their own
remote root (connections.contract.xcon.remote_join), which re-checks it, so a path can
never escape the remote root. Names keep their exact bytes: Python's
surrogate-escaped str round-trips through os functions and the state database.
"""
from __future__ import annotations

import os

from connections.contract.xcon import UnsafePath, check_rel


class Mapper:
    def __init__(self, source: str, remote_root: str = "") -> None:
        self.source = os.path.abspath(source)
        self.remote_root = remote_root
        self._prefix = self.source.rstrip("/") + "/"

    def rel(self, path: str | bytes) -> str | None:
        """Relative path of an absolute local path; '' for the root itself,
        None if the path is outside the source folder."""
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path == self.source or path + "/" == self._prefix:
            return ""
        if not path.startswith(self._prefix):
            return None
        rel = path[len(self._prefix):]
        try:
            return check_rel(rel)
        except UnsafePath:
            return None

    def local(self, rel: str) -> str:
        # rel is a clean relative path (see rel()): plain concatenation is
        # os.path.join's answer, at a fraction of its cost (called per file).
        return self._prefix + rel if rel else self.source

    @staticmethod
    def is_utf8(rel: str) -> bool:
        """False for names holding bytes that are not valid UTF-8."""
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
