"""A VersionStore kept in a folder of small JSON files, for unit tests of the CLI and
of pruning: it outlives the process (a pruner killed with -9 and started again sees
what the first one left), and each removal is one unlink, as atomic as a real one."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from connections.contract.xcon import RemoteNotFound
from skynet.versions.model import Version, VersionStore

SUFFIX = ".versions"


class FolderVersionStore(VersionStore):
    """Versions of `rel` live in ROOT/rel.versions/SINCE_NS.json."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.removed: list[Version] = []

    def add(self, rel: str, since_ns: int, until_ns: int | None, size: int = 4, deleted: bool = False,
            etag: str | None = "0123456789abcdef0123456789abcdef") -> Version:
        folder = self.root / (rel + SUFFIX)
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"rel": rel, "since_ns": since_ns, "until_ns": until_ns, "size": 0 if deleted else size,
               "mtime_ns": None, "mode": 0o644, "etag": None if deleted else etag, "deleted": deleted}
        (folder / f"{since_ns}.json").write_text(json.dumps(doc))
        return self._version(folder / f"{since_ns}.json")

    def _version(self, p: Path) -> Version:
        doc = json.loads(p.read_text())
        return Version(ref=str(p), **doc)

    def _folders(self) -> list[tuple[str, Path]]:
        out = []
        for folder, dirs, _files in os.walk(self.root):
            for d in dirs:
                if d.endswith(SUFFIX):
                    full = Path(folder) / d
                    out.append((str(full.relative_to(self.root))[: -len(SUFFIX)], full))
        return sorted(out, key=lambda t: os.fsencode(t[0]))

    def history(self, prefix: str = "") -> Iterator[Version]:
        for rel, folder in self._folders():
            if prefix and rel != prefix and not rel.startswith(prefix + "/"):
                continue
            files = sorted(folder.glob("*.json"), key=lambda p: int(p.stem), reverse=True)
            for p in files:
                yield self._version(p)

    def at(self, when_ns: int, prefix: str = "") -> Iterator[Version]:
        for v in self.history(prefix):
            if v.covers(when_ns) and not v.deleted:
                yield v

    def read_range(self, version: Version, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def remove(self, version: Version) -> None:
        assert version.until_ns is not None, "never the current one"
        try:
            os.unlink(version.ref)
        except FileNotFoundError:
            raise RemoteNotFound(version.ref) from None
        self.removed.append(version)
