"""Ignore rules: gitignore-style patterns that keep files out of the remote.

The defaults cover editor swap and backup files, partial downloads, and
skynet's own state and temporary files, so that an editor's save-by-rename or a
browser's download lands on the remote as the final file only.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    ".*.skynet-part",  # a restore's part file (--into-source) and its resume state
    ".*.skynet-part.json",
    ".skynet/",
)


class IgnoreRules:
    """Matches relative paths against the default and the configured patterns."""

    def __init__(self, patterns: list[str] | tuple[str, ...] = (), use_defaults: bool = True, extra_paths: tuple[str, ...] = ()) -> None:
        import pathspec  # here, not at the top: loading the config (every command) needs no pathspec

        lines = list(DEFAULT_PATTERNS if use_defaults else ()) + [p for p in patterns if p.strip()]
        self.patterns = lines
        self.spec = pathspec.GitIgnoreSpec.from_lines(lines)
        self._any = _one_regex(self.spec)
        # Absolute-ish relative prefixes to skip whatever the patterns say (the
        # state folder when it sits inside the source tree).
        self.extra = tuple(p.rstrip("/") for p in extra_paths if p)

    def ignored(self, rel: str, is_dir: bool = False) -> bool:
        if not rel:
            return False
        for p in self.extra:
            if rel == p or rel.startswith(p + "/"):
                return True
        path = rel + "/" if is_dir else rel
        if self._any is not None:
            return self._any.search(path) is not None
        return self.spec.match_file(path)

    def ignored_path(self, rel: str) -> bool:
        """For a path whose type is unknown (gone from disk): file or folder rules."""
        return self.ignored(rel) or self.ignored(rel, is_dir=True)


def _one_regex(spec: pathspec.GitIgnoreSpec) -> re.Pattern | None:
    """All patterns as one regular expression, when that gives the same answer.

    pathspec tries the patterns one by one (~15 us a path with the defaults,
    paid for every file the scan and the workers see). Without negations
    ("!keep.me") a path is ignored exactly when some pattern matches it, so one
    alternation does the job in a single pass. With negations the order
    matters, and the spec itself decides."""
    parts = []
    for pat in spec.patterns:
        if pat.include is None:  # a comment or blank line
            continue
        if not pat.include or pat.regex is None:
            return None
        # Named groups would clash once joined; only their match matters here.
        parts.append("(?:" + re.sub(r"\(\?P<\w+>", "(?:", pat.regex.pattern) + ")")
    if not parts:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(parts))


def validate_pattern(pattern: str) -> str:
    """Raise ValueError for a pattern pathspec cannot compile."""
    import pathspec  # see IgnoreRules

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
