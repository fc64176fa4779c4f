"""First sync against a remote that already holds the files (issue 19, item 2).

A listing's mtime is only used to recognise a file as the same as a local one when it
is the file's mtime. S3 listings carry no metadata of ours: their time is LastModified,
when the server stored the object (RemoteEntry.mtime_is_stored), and a first sync must
then recognise identical files by their ETag, not send them all again because the
stored time differs from the local file's nanoseconds.
"""
from __future__ import annotations

import os

import pytest

from connections.contract.xcon import LocalFile, TransferContext
from skynet.watch.ignore import IgnoreRules
from skynet.engine.mapper import Mapper
from skynet.state.db import StateDB
from skynet.state.index import Index
from skynet.engine.syncsnap import SyncSnap
from skynet.state.uniqueq import UniqueQ
from tests.backends import BACKENDS

MTIME = 1_600_000_000_123_456_789  # nanoseconds that no server's stored time keeps


@pytest.mark.parametrize("name", ["s3", "local"])
def test_first_sync_recognises_files_the_remote_holds(name, tmp_path, servers):
    src = tmp_path / "src"
    with BACKENDS[name](tmp_path, servers) as backend:
        for i in range(5):
            path = src / f"d{i % 2}" / f"f{i}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(100 + i))
            os.utime(path, ns=(MTIME, MTIME))
            st = path.stat()
            rel = f"d{i % 2}/f{i}.txt"
            backend.con.send(LocalFile(str(path), rel, st.st_size, st.st_mtime_ns, 0o644, st.st_ino, root=str(src)),
                             TransferContext())
        (src / "new.txt").write_bytes(b"not on the remote")
        db = StateDB(str(tmp_path / "s.db"))
        queue = UniqueQ(db)
        snap = SyncSnap(Mapper(str(src), "remote"), Index(db), queue, IgnoreRules(), False, con=backend.con)
        stats = snap.run()
        queued = {os.fsdecode(s) for (s,) in db.conn().execute("SELECT src FROM queue").fetchall()}
        assert queued == {"new.txt"}
        assert stats.sends == 1
        db.close()
