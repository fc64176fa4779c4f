"""Issue 19, item 7: the state folder has one owner.

Only the state modules open SQLite files, run SQL on the state's tables, or
know the names of the files in a state folder; everybody else (daemon,
--status, --failed, the dashboard, the notifier, the scan) goes through them.
An AST scan of skynet/, connections/ and main.py keeps it so.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWNERS = {"skynet/state/db.py", "skynet/state/folder.py", "skynet/state/index.py", "skynet/state/queue_store.py",
          "skynet/jobs/table.py",
          "skynet/state/spool.py", "skynet/state/sortspool.py", "skynet/state/sqlitelib.py"}
# A statement on one of the state's tables (PostgreSQL's are schema-qualified: skynet.events...).
STATE_SQL = re.compile(r"\b(FROM|INTO|UPDATE|JOIN|TABLE(\s+IF\s+NOT\s+EXISTS)?)\s+(queue|entries|failed|resume|meta|spool)\b",
                       re.IGNORECASE)
STATE_FILES = {"status.json", "notifier-spool.sqlite", "notifier.seq"}
STATE_SUFFIXES = {".db", ".lock", ".seen"}
STATE_DIR_NAMES = {"state_dir", "spool_dir", "state_dirs"}


def _sources() -> list[Path]:
    files = sorted((ROOT / "skynet").rglob("*.py")) + sorted((ROOT / "connections").rglob("*.py"))
    return files + [ROOT / "main.py"]


def _text(node: ast.AST) -> str:
    """The literal text of a string or f-string (placeholders left out)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return ""


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def offences(path: Path) -> list[str]:
    """What in this file only the state modules may do."""
    out = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            if attr == "connect" and isinstance(node.func.value, ast.Name) and node.func.value.id == "sqlite3":
                out.append(f"{where}: opens an SQLite file")
            if attr in ("execute", "executemany", "executescript") and node.args and STATE_SQL.search(_text(node.args[0])):
                out.append(f"{where}: runs SQL on a state table")
            if ast.unparse(node.func) == "os.path.join" and any(_names(a) & STATE_DIR_NAMES for a in node.args):
                out.append(f"{where}: builds a path in the state folder")
        if isinstance(node, ast.JoinedStr):
            tail = node.values[-1] if node.values else None
            if isinstance(tail, ast.Constant) and tail.value in STATE_SUFFIXES:
                out.append(f"{where}: names a state file ({tail.value!r})")
        if isinstance(node, ast.Constant) and id(node) not in in_fstrings and (node.value in STATE_FILES or node.value in STATE_SUFFIXES):
            out.append(f"{where}: names a state file ({node.value!r})")
    return out


def test_only_the_state_modules_know_the_state_folder() -> None:
    found = [o for f in _sources() if str(f.relative_to(ROOT)) not in OWNERS for o in offences(f)]
    assert found == []


def test_the_scan_catches_each_kind_of_offence(tmp_path: Path) -> None:
    """The guard itself: each pattern it looks for is found in a made-up module."""
    global ROOT
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom skynet.state.sqlitelib import sqlite3\n"
        "c = sqlite3.connect('x')\n"
        "c.execute('SELECT count(*) FROM queue')\n"
        "c.execute(f'DELETE FROM entries WHERE path = {1}')\n"
        "p = os.path.join(cfg.state_dir, 'x')\n"
        "q = f'{name}.lock'\n"
        "s = 'status.json'\n"
        "ok = 'Thumbs.db'\n"
        "pg = cur.execute('SELECT id FROM skynet.daemons')\n", encoding="utf-8")
    saved, ROOT = ROOT, tmp_path
    try:
        kinds = [o.split(": ", 1)[1].split(" (")[0] for o in offences(bad)]
    finally:
        ROOT = saved
    assert kinds == ["opens an SQLite file", "runs SQL on a state table", "runs SQL on a state table",
                     "builds a path in the state folder", "names a state file", "names a state file"]


def test_the_index_is_written_by_one_route() -> None:
    """Index.apply is the only code that writes the `entries` table."""
    writes = re.compile(r"\b(INSERT|REPLACE|UPDATE|DELETE)\b[^\"']*\bentries\b", re.IGNORECASE)
    hits = []
    for f in _sources():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and writes.search(node.value):
                hits.append(str(f.relative_to(ROOT)))
    assert set(hits) == {"skynet/state/index.py"}
    # In skynet/state/index.py the writing statements are UPSERT, _forget and _rename:
    # of the Index's methods, only apply uses them.
    tree = ast.parse((ROOT / "skynet" / "state" / "index.py").read_text(encoding="utf-8"))
    index_cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Index")
    writers = {f.name for f in index_cls.body if isinstance(f, ast.FunctionDef)
               and _names(f) & {"UPSERT", "_forget", "_rename"}}
    assert writers == {"apply"}
