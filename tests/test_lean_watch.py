"""The watcher keeps watchdog's per-folder watches in a lean form (_LeanWatch).

It must behave as watchdog's own `Watch` with its callbacks dict, including
the rare case of one folder watched for two mappings (nested roots), where a
watch has two callbacks and loses one when a mapping stops watching.
"""
from __future__ import annotations

import os
import queue
import threading
import time

from watchdog.events import FileSystemEventHandler

from skynet.watcher import FaultReportingObserver, _LeanInotifyFD, _LeanWatch


def test_lean_watch_is_the_mapping_watchdog_uses():
    w = _LeanWatch(7, 0x100, b"/x")
    assert not w and not w.is_used and list(w.callbacks.values()) == []
    w.callbacks["a"] = "A"
    assert "a" in w and "b" not in w and w.values() == ["A"]
    w["a"] = "A2"  # same id: replaced, not added
    assert w.values() == ["A2"]
    w["b"] = "B"
    assert "b" in w and sorted(w.values()) == ["A2", "B"]
    assert w.pop("a") == "A2"  # the second one moves into the slots
    assert w.values() == ["B"] and "a" not in w and w
    assert w.pop("zzz") is None and w.pop("zzz", 5) == 5
    assert w.pop("b") == "B"
    assert not w and w.values() == []


class _Collect(FileSystemEventHandler):
    def __init__(self) -> None:
        self.q: queue.Queue[str] = queue.Queue()

    def on_any_event(self, event) -> None:
        if event.event_type == "created" and not event.is_directory:
            self.q.put(os.path.basename(os.fsdecode(event.src_path)))


def _wait_for(handler: _Collect, name: str, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if handler.q.get(timeout=end - time.monotonic()) == name:
                return True
        except queue.Empty:
            return False
    return False


def test_nested_roots_share_watches_and_unwatch_cleanly(tmp_path):
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    (inner / "deep").mkdir(parents=True)
    obs = FaultReportingObserver()
    assert isinstance(obs._inotify_fd, _LeanInotifyFD)
    a, b = _Collect(), _Collect()
    obs.start()
    try:
        wa = obs.schedule(a, str(outer), recursive=True)
        obs.schedule(b, str(inner), recursive=True)
        (inner / "deep" / "one").write_text("1")
        assert _wait_for(a, "one") and _wait_for(b, "one")  # one watch, two callbacks
        watches = obs._inotify_fd._watch_for_wd.values()
        assert all(isinstance(w, _LeanWatch) for w in watches)
        assert sum(len(w.values()) == 2 for w in watches) == 2  # inner and inner/deep
        obs.unschedule(wa)
        (inner / "deep" / "two").write_text("2")
        assert _wait_for(b, "two")  # the inner mapping still sees its tree
        assert all(len(w.values()) == 1 for w in obs._inotify_fd._watch_for_wd.values())
        (outer / "three").write_text("3")
        time.sleep(0.3)
        assert a.q.empty() or all(a.q.get_nowait() != "three" for _ in range(a.q.qsize()))
    finally:
        obs.stop()
        obs.join(timeout=10)
    assert not any(t.name.startswith("Inotify") and t.is_alive() for t in threading.enumerate())
