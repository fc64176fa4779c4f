"""No private internals of watchdog, waitress, botocore, boto3 or asyncssh are load-bearing (issue 19, item 8).

A static check over skynet/, connections/ and tests/ (ast, no imports): a library change
that renames a private member must not silently change what skynet does, and the
only place to pin such reliance is pyproject's upper bounds. It flags

- imports from the libraries' private modules (a `_segment`, or one listed below),
- `expr._name` (or `getattr(expr, "_name")`) where `_name` is not a member our own classes define (so
  `client._endpoint`, `server._map`, `super()._add_callback` are caught, while our
  objects' private members, used between our modules, are not),
- a class derived from one of the libraries' classes that defines or reads an
  underscored member (overriding or reaching into their internals).

connections/sftp/con.py stands on asyncssh's public API only since issue 19's SFTP rewrite
(paramiko and the code built on its internals are gone): it is checked like the rest.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUARDED = ("watchdog", "waitress", "botocore", "boto3", "asyncssh", "paramiko")
# Modules without a leading underscore that their projects still treat as internal.
PRIVATE_MODULES = {"watchdog.observers.inotify_c", "watchdog.observers.inotify_buffer", "watchdog.observers.inotify"}
# Files left out of the check (none since issue 19's SFTP rewrite).
ALLOWED_FILES: set[str] = set()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _guarded(module: str) -> bool:
    return module.split(".")[0] in GUARDED


def _sources(root: Path) -> list[Path]:
    return [p for d in ("skynet", "connections", "tests") for p in sorted(root.glob(f"{d}/**/*.py"))]


def _library_names(tree: ast.Module) -> set[str]:
    """Names a module binds to things imported from the guarded libraries."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if _guarded(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.module and _guarded(node.module) and node.level == 0:
            names |= {a.asname or a.name for a in node.names}
    return names


def _root_name(expr: ast.expr) -> str | None:
    while isinstance(expr, (ast.Attribute, ast.Call, ast.Subscript)):
        expr = expr.func if isinstance(expr, ast.Call) else expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def _derives_from_library(cls: ast.ClassDef, lib_names: set[str]) -> bool:
    return any(_root_name(b) in lib_names for b in cls.bases)


def _own_members(trees: dict[str, ast.Module]) -> set[str]:
    """Underscored members our own classes define (methods, class attributes, `self._x = ...`),
    in classes that do not derive from a guarded library."""
    own: set[str] = set()
    for tree in trees.values():
        for node in tree.body:  # a module's own private functions, classes and globals
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                own |= {t.id for t in targets if isinstance(t, ast.Name)}
        lib = _library_names(tree)
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            if _derives_from_library(cls, lib):
                continue
            for node in ast.walk(cls):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    own.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    own.add(node.attr)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    own.add(node.id)
            if any(isinstance(n, ast.Assign) for n in cls.body):  # __slots__ and class attributes
                for n in cls.body:
                    if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                         for t in n.targets):
                        own |= {e.value for e in ast.walk(n.value) if isinstance(e, ast.Constant)}
    return {m for m in own if _private(m)}


def _findings(rel: str, tree: ast.Module, own: set[str]) -> list[str]:
    lib = _library_names(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in modules:
                if _guarded(m) and (m in PRIVATE_MODULES or any(_private(s) for s in m.split("."))):
                    found.append(f"{rel}:{node.lineno}: import from private module {m}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue  # judged per class below
            if node.attr not in own:
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)} (not a member of ours)")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value) and node.args[1].value not in own):
            found.append(f"{rel}:{node.lineno}: {ast.unparse(node)} (not a member of ours)")
        elif isinstance(node, ast.ClassDef) and _derives_from_library(node, lib):
            for sub in ast.walk(node):
                name = sub.name if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) else (
                    sub.attr if isinstance(sub, ast.Attribute) else None)
                if name and _private(name):
                    found.append(f"{rel}:{sub.lineno}: {node.name} (a library subclass) uses {name}")
    return found


def scan(root: Path = ROOT) -> list[str]:
    trees = {p.relative_to(root).as_posix(): ast.parse(p.read_text(), filename=str(p)) for p in _sources(root)}
    own = _own_members(trees)  # the allowed files' members are ours too
    return [f for rel, t in trees.items() if rel not in ALLOWED_FILES for f in _findings(rel, t, own)]


def test_no_private_internals_of_watchdog_waitress_botocore_boto3():
    assert scan() == []


def test_the_check_catches_each_kind(tmp_path):
    """The scan is only as good as what it notices: one of each kind it must report."""
    pkg = tmp_path / "skynet"
    pkg.mkdir()
    (tmp_path / "connections").mkdir()
    (pkg / "bad.py").write_text(
        "from watchdog.observers.inotify_c import inotify_add_watch\n"
        "from watchdog.observers.inotify import InotifyWatchGroup\n"
        "import botocore._internal\n"
        "class G(InotifyWatchGroup):\n"
        "    def _add_callback(self, path):\n"
        "        return super()._add_callback(path)\n"
        "class Ours:\n"
        "    def __init__(self, server):\n"
        "        self._server = server\n"
        "        self._mine = 1\n"
        "    def loop(self, client):\n"
        "        return self._server._map, client._endpoint.http_session._verify, self._mine\n"
        "    def peek(self, session):\n"
        "        return getattr(session, '_verify', True)\n")
    found = "\n".join(scan(tmp_path))
    for needle in ("private module watchdog.observers.inotify_c", "private module watchdog.observers.inotify\n",
                   "private module botocore._internal", "G (a library subclass) uses _add_callback",
                   "self._server._map", "client._endpoint (not", "._verify (not",
                   "getattr(session, '_verify', True) (not"):
        assert needle in found + "\n", needle
    assert "_mine" not in found and "self._server (" not in found
