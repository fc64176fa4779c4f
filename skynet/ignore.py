"""Ignore rules: gitignore-style patterns that keep files out of the remote.

The defaults cover editor swap and backup files, partial downloads, and
skynet's own state and temporary files, so that an editor's save-by-rename or a
browser's download lands on the remote as the final file only.
"""
from __future__ import annotations

import os

import pathspec

DEFAULT_PATTERNS: tuple[str, ...] = (
    # vim, emacs, nano, LibreOffice, gedit, JetBrains, generic temp/backup names
    "*.swp",
    "*.swo",
    "*.swx",
    ".*.sw?",
    "4913",
    "*~",
    ".#*",
    "#*#",
    ".~lock.*#",
    ".goutputstream-*",
    "*___jb_tmp___",
    "*___jb_old___",
    "*.tmp",
    "*.temp",
    # partial downloads and partial copies
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    ".rsync-partial/",
    # desktop junk
    ".DS_Store",
    "Thumbs.db",
    # skynet's own temporary files and state
    ".skynet-tmp-*",
    ".skynet/",
)


class IgnoreRules:
    """Matches relative paths against the default and the configured patterns."""

    def __init__(self, patterns: list[str] | tuple[str, ...] = (), use_defaults: bool = True, extra_paths: tuple[str, ...] = ()) -> None:
        lines = list(DEFAULT_PATTERNS if use_defaults else ()) + [p for p in patterns if p.strip()]
        self.patterns = lines
        self.spec = pathspec.GitIgnoreSpec.from_lines(lines)
        # Absolute-ish relative prefixes to skip whatever the patterns say (the
        # state folder when it sits inside the source tree).
        self.extra = tuple(p.rstrip("/") for p in extra_paths if p)

    def ignored(self, rel: str, is_dir: bool = False) -> bool:
        if not rel:
            return False
        for p in self.extra:
            if rel == p or rel.startswith(p + "/"):
                return True
        return self.spec.match_file(rel + "/" if is_dir else rel)

    def ignored_path(self, rel: str) -> bool:
        """For a path whose type is unknown (gone from disk): file or folder rules."""
        return self.ignored(rel) or self.ignored(rel, is_dir=True)


def validate_pattern(pattern: str) -> str:
    """Raise ValueError for a pattern pathspec cannot compile."""
    try:
        pathspec.GitIgnoreSpec.from_lines([pattern])
    except Exception as exc:  # pathspec raises several types
        raise ValueError(f"bad ignore pattern {pattern!r}: {exc}") from exc
    return pattern


def rel_inside(root: str, path: str) -> str | None:
    """`path` relative to `root` if inside it (used to ignore an inner state dir)."""
    root, path = os.path.abspath(root), os.path.abspath(path)
    if path == root or not path.startswith(root.rstrip("/") + "/"):
        return None
    return path[len(root.rstrip("/")) + 1:]
