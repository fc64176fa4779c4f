"""The state database runs on an SQLite without the WAL-reset bug, and every module
uses that one library (skynet/state/sqlitelib.py says why both matter)."""
from __future__ import annotations

import ast
import time
from pathlib import Path

import skynet.state.db as state
from skynet.state.sqlitelib import WAL_RESET_FIXED, sqlite3

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_sqlite_has_the_wal_reset_fix():
    # requirements.txt pins pysqlite3; Python's own module links the system's 3.40.
    assert sqlite3.__name__ == "pysqlite3.dbapi2"
    assert sqlite3.sqlite_version_info >= (3, 51, 3)
    assert WAL_RESET_FIXED


def test_no_module_imports_the_standard_librarys_sqlite3():
    offenders = []
    for folder in ("skynet", "connections", "bench", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "sqlitelib.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                if any(n == "sqlite3" or n.startswith("sqlite3.") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_with_an_old_sqlite_the_checkpoint_waits_for_the_writers(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "WAL_RESET_FIXED", False)
    db = state.StateDB(str(tmp_path / "s.db"))
    try:
        db.set_meta("k", "v")  # the first commit starts the checkpointer
        cp = db._checkpointer
        assert cp is not None
        before = cp.rounds
        with db.write() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('a', 'b')")
            cp._due.set()
            time.sleep(0.3)
            assert cp.rounds == before  # blocked behind this transaction
        deadline = time.monotonic() + 5
        while cp.rounds == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cp.rounds == before + 1
    finally:
        db.close()
