"""`--failed` and `--retry-failed`: the failed-actions table, from the terminal.

They read the state databases of the config's mappings directly (SQLite in WAL
mode lets them do so while the daemon runs). `--retry-failed` puts the actions
back on the queue and, if a daemon holds the state, sends it SIGUSR1 so it
picks them up at once.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import click

from skynet.config.settings import Config
from skynet.state.db import FailedActions, StateDB
from skynet.state.folder import StateFolder
from skynet.state.uniqueq import UniqueQ


def _dbs(cfg: Config):
    folder = StateFolder(cfg.state_dir)
    for m in cfg.mappings:
        path = folder.db(m.name)
        if os.path.exists(path):
            yield m, StateDB(path)


def daemon_pid(cfg: Config, mapping: str) -> int | None:
    """PID of the live daemon holding the mapping's state (from its lock file)."""
    return StateFolder(cfg.state_dir).holder(mapping)


def list_failed(cfg: Config, as_json: bool) -> int:
    rows = []
    for m, db in _dbs(cfg):
        for f in FailedActions(db).list():
            # mapping: NAME@TARGET for a destination of a mapping with several
            rows.append({"mapping": m.name, "destination": m.destination or None, "action": f.kind, "path": f.src, "dest": f.dest or None,
                         "error": f.error, "attempts": f.attempts,
                         "first_failed": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(f.first_at)),
                         "last_failed": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(f.last_at))})
        db.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        click.echo("no failed actions")
        return 0
    for r in rows:
        path = repr(r["path"]) + (f" -> {r['dest']!r}" if r["dest"] else "")
        click.echo(f"{r['last_failed']}  {r['mapping']}  {r['action']} {path}  ({r['attempts']} attempt(s)): {r['error']}")
    click.echo(f"{len(rows)} failed action(s); retry with: python main.py --retry-failed [PATH...]")
    return 0


def retry_failed(cfg: Config, paths: tuple[str, ...]) -> int:
    total = 0
    for m, db in _dbs(cfg):
        items = FailedActions(db).take(list(paths) or None)
        if items:
            q = UniqueQ(db)
            q.put_many((f.kind, f.src, f.dest) for f in items)
            q.close()
            total += len(items)
            pid = daemon_pid(cfg, m.name)
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):  # gone, or not ours to signal
                    os.kill(pid, signal.SIGUSR1)
        db.close()
    click.echo(f"{total} action(s) queued again" if total else "nothing to retry")
    return 0
