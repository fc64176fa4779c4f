"""The engine checks a connection's optional abilities by type, never by probing (issue 19, item 2).

Abilities are typed mixins of connections/contract/xcon.py (BatchSend, ServerSideMove, ServerSideCopy,
FreeSpace, PoolSized, EtagCheck, Versions) that a backend declares by inheriting, and skynet/
asks `isinstance(con, ServerSideMove)`. A `getattr(self.con, "local_etags", None)` or
`hasattr(self.con, "workers")` probe is what this replaced: a misspelt or renamed member
silently answers "no", and nothing says which backends promised what. This static check
(ast, no imports) keeps such probes from coming back.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: names a connection object goes by in skynet/ (self.con, con, remote, connection, xcon, target_con...)
CON_NAMES = {"con", "xcon", "remote", "connection"}


def _is_connection(expr: ast.expr) -> bool:
    """`expr` names a connection: its last name is one of CON_NAMES or ends in "_con"."""
    if isinstance(expr, ast.Attribute):
        name = expr.attr
    elif isinstance(expr, ast.Name):
        name = expr.id
    else:
        return False
    return name.lower() in CON_NAMES or name.lower().endswith("_con")


def probes(source: str, filename: str = "<source>") -> list[str]:
    """getattr()/hasattr() calls on a connection object in `source`, as "file:line: call"."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr") and node.args and _is_connection(node.args[0])):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def scan(root: Path = ROOT) -> list[str]:
    return [f for p in sorted((root / "skynet").glob("**/*.py"))
            for f in probes(p.read_text(), p.relative_to(root).as_posix())]


def test_no_getattr_or_hasattr_probe_on_a_connection_in_the_engine():
    assert scan() == []


def test_the_scan_catches_the_probes_it_replaced():
    """The probes skynet/ had before the typed abilities (daemon.py, syncsnap.py) are caught;
    a probe on something else (a reconciler, a database connection) is not."""
    old = ('if hasattr(self.con, "workers"):\n    pass\n'
           'local_etags = getattr(self.con, "local_etags", None)\n'
           'x = getattr(con, "copy", None)\n')
    assert len(probes(old)) == 3
    assert probes('getattr(reconciler, "batch_ok", None)\ngetattr(self._conn, "closed", 1)\n') == []
