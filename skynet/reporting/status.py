"""Status of the local daemon, for `--status` and the dashboard's local mode.

The daemon keeps the uploads in flight (with their progress) in memory and
writes them, with per-mapping counters, to `status.json` in its state folder:
every second while work is pending, once more when it finishes, never while
idle. `--status` reads that file plus the state databases (queue depth and
failed count come straight from SQLite, so they are right even when the
daemon is not running).
"""
from __future__ import annotations

import json
import os
import threading
import time

import click

from skynet.state.atomicfile import write_atomic
from skynet.config.settings import Config
from skynet.state.db import StateReader
from skynet.state.folder import StateFolder


class InFlight:
    """Uploads in progress: (mapping, path) -> bytes done / total."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], dict] = {}

    def update(self, mapping: str, path: str, done: int, total: int) -> None:
        with self._lock:
            item = self._items.get((mapping, path))
            if item is None:
                item = self._items[(mapping, path)] = {"mapping": mapping, "path": path, "started": time.time()}
            item["done"], item["total"] = done, total

    def finish(self, mapping: str, path: str) -> None:
        if not self._items:  # called for every action; only large uploads are tracked
            return
        with self._lock:
            self._items.pop((mapping, path), None)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return [dict(v) for v in self._items.values()]


def write_status(state_dir: str, doc: dict) -> None:
    # a snapshot, rewritten every tick: no fsync
    write_atomic(StateFolder(state_dir).status(), json.dumps(doc, ensure_ascii=False), sync=False)


def collect(cfg: Config) -> dict:
    """Everything --status shows, as a JSON-able dict."""
    folder = StateFolder(cfg.state_dir)
    try:
        with open(folder.status(), encoding="utf-8") as f:
            live = json.load(f)
    except (OSError, ValueError):
        live = {}
    live_maps = {m["name"]: m for m in live.get("mappings", [])}
    out = {"config": cfg.path, "service": cfg.service, "mappings": []}
    for m in cfg.mappings:
        db_path = folder.db(m.name)
        pid = folder.holder(m.name)
        # A destination of a mapping with several: its own row, named NAME@TARGET.
        row = {"name": m.name, "mapping": m.mapping, "destination": m.destination or None,
               "service": m.service or cfg.service, "source": m.source, "target": m.target,
               "running": pid is not None, "pid": pid,
               "queue_depth": None, "failed": None, "connected": None, "in_flight": []}
        if os.path.exists(db_path):
            with StateReader(db_path, timeout=60) as db:
                row["queue_depth"] = sum(db.queue_counts())
                row["failed"] = db.failed_count()
        if pid is not None and m.name in live_maps:
            row["connected"] = live_maps[m.name].get("connected")
            row["in_flight"] = [u for u in live.get("in_flight", []) if u["mapping"] == m.name]
        out["mappings"].append(row)
    out["updated"] = live.get("updated")
    return out


def print_status(cfg: Config, as_json: bool) -> int:
    doc = collect(cfg)
    if as_json:
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    from skynet.reporting.progress import human_bytes

    for m in doc["mappings"]:
        state = "not running" if not m["running"] else (
            "connected" if m["connected"] else "waiting for the remote" if m["connected"] is False else "running")
        where = f"{m['destination']} ({m['service']} {m['target']})" if m["destination"] else m["target"]
        click.echo(f"{m['name']}: {m['source']} -> {where}  [{state}]")
        click.echo(f"  queue depth {m['queue_depth'] if m['queue_depth'] is not None else '?'}, "
                   f"failed {m['failed'] if m['failed'] is not None else '?'}")
        for u in m["in_flight"]:
            pct = 100 * u["done"] / u["total"] if u.get("total") else 100
            click.echo(f"  uploading {u['path']!r}: {human_bytes(u['done'])} of {human_bytes(u['total'])} ({pct:.0f}%)")
    return 0
