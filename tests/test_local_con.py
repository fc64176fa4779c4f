"""LocalCon beyond the shared contract: a target share unmounted in the middle
of a send, and the temp file such a send leaves behind."""
from __future__ import annotations

import os

import pytest

from connections.base import LocalFile, TransferContext, TransientError
from connections.local import LocalCon, temp_name


def test_send_cut_by_an_unmounted_target_is_transient_and_its_temp_file_goes(tmp_path):
    """The share goes away while a file is written: the send is transient (it
    used to be "not found", recorded as a failed action), the temp file stays
    on the share, and discard() removes it once the share is back."""
    root, away = tmp_path / "target", tmp_path / "target.unmounted"
    (root / "d").mkdir(parents=True)
    con = LocalCon(str(root))
    src = tmp_path / "q"
    src.write_bytes(os.urandom(3 << 20))
    st = os.stat(src)
    f = LocalFile(str(src), "d/q", st.st_size, st.st_mtime_ns, 0o644, st.st_ino)
    unmount = TransferContext(throttle=lambda n: root.exists() and os.rename(root, away))
    with pytest.raises(TransientError):
        con.send(f, unmount)
    os.rename(away, root)
    assert os.listdir(root / "d") == [temp_name("q")]
    con.discard("d/q", None)
    assert os.listdir(root / "d") == []
    con.discard("d/q", None)  # nothing left: no error
    os.rename(root, away)
    with pytest.raises(TransientError):  # the share is away: ask again later
        con.discard("d/q", None)


def test_a_link_inside_the_target_never_leads_writes_out_and_the_safe_folder_memory_is_bounded(tmp_path, monkeypatch):
    import connections.local as local
    from connections.base import UnsafePath

    monkeypatch.setattr(local, "SAFE_PARENTS_KEPT", 4)
    root, outside = tmp_path / "target", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "evil").symlink_to(outside)
    con = LocalCon(str(root))
    src = tmp_path / "q"
    src.write_bytes(b"data")
    st = os.stat(src)

    def send(rel: str) -> None:
        con.send(LocalFile(str(src), rel, st.st_size, st.st_mtime_ns, 0o644, st.st_ino), TransferContext())

    for i in range(10):  # more folders than it remembers: the oldest are forgotten
        send(f"d{i}/sub/q")
        assert len(con._safe_parents) <= 4
    with pytest.raises(UnsafePath):
        send("evil/q")
    with pytest.raises(UnsafePath):
        send("evil/deeper/q")
    assert os.listdir(outside) == []
    send("d0/sub/q")  # forgotten, checked again, still fine
    assert (root / "d0" / "sub" / "q").read_bytes() == b"data"
