"""SyncSnap.run(roots): the polling fallback for folders inotify cannot watch
rescans only those folders (and everything below them), not the whole tree.
"""
from __future__ import annotations

import os

from skynet.watch.ignore import IgnoreRules
from skynet.engine.mapper import Mapper
from skynet.state.db import StateDB
from skynet.state.index import Index
from skynet.engine.syncsnap import SyncSnap
from skynet.state.uniqueq import DELETE, SEND, UniqueQ


def _setup(tmp_path, complete_sync: bool = True):
    src = tmp_path / "src"
    for rel in ("a/new.txt", "a/sub/new.txt", "a b/new.txt", "b/new.txt", "ab/new.txt", "top.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    db = StateDB(str(tmp_path / "s.db"))
    index, queue = Index(db), UniqueQ(db)
    # What the remote holds: files gone from the disk in several folders.
    index.put_many([(rel, 1, 1, 0o644, 1, None) for rel in ("a/gone.txt", "a/sub/gone.txt", "a b/gone.txt",
                                                             "b/gone.txt", "ab/gone.txt", "gone.txt")])
    snap = SyncSnap(Mapper(str(src), str(tmp_path / "dst")), index, queue, IgnoreRules(), complete_sync)
    return snap, db


def _queued(db) -> set[tuple[str, str]]:
    rows = db.conn().execute("SELECT kind, src FROM queue").fetchall()
    return {(k, os.fsdecode(s)) for k, s in rows}


def test_only_the_given_folders_are_compared(tmp_path):
    snap, db = _setup(tmp_path)
    st = snap.run(roots=["a b", "a"])  # any order; 'ab' and 'b' are not asked for
    assert _queued(db) == {(SEND, "a/new.txt"), (SEND, "a/sub/new.txt"), (SEND, "a b/new.txt"),
                           (DELETE, "a/gone.txt"), (DELETE, "a/sub/gone.txt"), (DELETE, "a b/gone.txt")}
    assert (st.sends, st.deletes) == (3, 3)


def test_an_empty_folder_is_not_an_empty_source(tmp_path):
    """The mass-delete guard refuses deletes when the *source* is empty; an empty
    unwatched folder is not that."""
    snap, db = _setup(tmp_path)
    for name in os.listdir(tmp_path / "src" / "b"):
        os.unlink(tmp_path / "src" / "b" / name)
    st = snap.run(roots=["b"])
    assert _queued(db) == {(DELETE, "b/gone.txt")}
    assert st.refused_deletes == 0


def test_the_whole_tree_without_roots(tmp_path):
    snap, db = _setup(tmp_path, complete_sync=False)
    snap.run()
    assert {s for k, s in _queued(db)} == {"a/new.txt", "a/sub/new.txt", "a b/new.txt", "b/new.txt", "ab/new.txt",
                                           "top.txt"}


class _Vanished:
    """A directory entry whose file is deleted between the listing and its stat."""

    def stat(self, follow_symlinks: bool = True):
        raise FileNotFoundError(2, "No such file or directory")


def test_only_files_the_index_knows_are_stated_and_one_gone_meanwhile_counts_as_deleted(tmp_path, monkeypatch):
    snap, db = _setup(tmp_path)
    listed = list(snap.walk(""))
    # New files are queued from the listing alone: nothing is asked of their stat.
    assert all(isinstance(e, os.DirEntry) for _, _, e, _ in listed)
    # 'a/gone.txt' is listed (it was there a moment ago) but gone when the scan
    # stats it to compare with its Index entry: the remote copy must be deleted.
    listed.append((b"a/gone.txt", "a/gone.txt", _Vanished(), False))
    listed.sort(key=lambda t: t[0])  # the walk's byte order
    monkeypatch.setattr(snap, "walk", lambda rel="": iter(listed))
    st = snap.run()
    assert (DELETE, "a/gone.txt") in _queued(db)
    assert (st.files, st.sends, st.deletes) == (6, 6, 6)
