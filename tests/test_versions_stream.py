"""The versions area's listing is streamed (skynet/versions/area.py): `skynet versions
PATH` and restore hold one path's entries at a time, not the whole listing. Counted, not
timed: a fake remote lists entries and tracks how many of them are still alive (held
by the reader) each time it hands out the next one."""
from __future__ import annotations

import weakref

from connections.contract.xcon import Abilities, RemoteEntry
from skynet.versions.area import SPOOL_BATCH, AreaStore
from skynet.versions.names import ARRIVED, KEPT, MOVED, area_name

S = 1_000_000_000
FILES = 3_000


class ListingRemote:
    """Just enough of an XCon for AreaStore to read: a listing, counted as it goes."""

    abilities = Abilities()

    def __init__(self, entries: list[tuple]) -> None:
        self.entries = entries  # (rel, size, mtime_ns): built on demand, so only the reader holds them
        self.alive = 0
        self.most = 0

    def _gone(self) -> None:
        self.alive -= 1

    def list(self, rel: str = ""):
        assert rel == ""
        for r, size, mtime in self.entries:
            e = RemoteEntry(r, size, mtime, 0o644, None)
            self.alive += 1
            weakref.finalize(e, self._gone)
            self.most = max(self.most, self.alive)
            yield e
            del e


def test_the_area_listing_is_never_held_whole():
    # Old code: the whole listing was kept (most == 6,004, every entry of the listing).
    entries = []
    for i in range(FILES):
        rel = f"docs/f{i:05d}.txt"
        entries.append((rel, 20, 45 * S))  # the current file (its mtime 45 s: it came at the keep, 50 s)
        entries.append((area_name(rel, 50 * S, KEPT), 10, 10 * S))  # the version it replaced at 50 s
    # a folder moved at 60 s: its files' versions before the move are named by the old path
    entries += [("new/m.txt", 5, 40 * S), (area_name("old", 60 * S, MOVED), 0, 60 * S),
                (area_name("new", 60 * S, ARRIVED), 0, 60 * S), (area_name("new/m.txt", 70 * S, KEPT), 3, 30 * S)]
    remote = ListingRemote(entries)
    store = AreaStore(remote)  # type: ignore[arg-type]
    seen = list(store.history("docs"))
    assert len(seen) == 2 * FILES and {v.rel for v in seen[:2]} == {"docs/f00000.txt"}
    assert [v.since_ns for v in seen[:2]] == [50 * S, 10 * S] and seen[0].size == 20 and seen[1].size == 10
    assert remote.most <= SPOOL_BATCH + 1, remote.most
    at55 = {v.rel: v.size for v in store.at(55 * S, "")}
    assert len(at55) == FILES + 1 and at55["docs/f00007.txt"] == 20 and at55["old/m.txt"] == 3, \
        {k: at55[k] for k in at55 if not k.startswith("docs/")}
    assert {v.rel: v.size for v in store.at(65 * S, "new")} == {"new/m.txt": 3}
    assert remote.most <= SPOOL_BATCH + 1, remote.most
