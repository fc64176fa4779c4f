"""What the gateway promises across `kill -9` and power cuts now that its fsyncs run beside the
uploads (skynet/gateway/staging.py, acklog.py): an acknowledged PATCH's offset is what HEAD reports
after a restart (its bytes intact); after a reboot only what was fsynced counts, at most SYNC_LAG
behind; a whole file sent with its creation that landed everywhere leaves nothing on the gateway's
disk; one that a destination still waits for is made durable before the answer says so."""
from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

from skynet.gateway import acklog, staging
from skynet.gateway.staging import Staging
from tests.gateway_helpers import MiB, Gateway, md5_header, records, staged, wait_for, write_config


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_kill9_after_acknowledged_patches_keeps_their_offset_and_bytes(tmp_path):
    """Two chunks acknowledged (204), the server killed with -9 at once: after the restart HEAD
    says exactly the acknowledged offset, and the rest completes into the right file (its MD5
    checked by the gateway against the one the client gave, the chunks read back from disk)."""
    root = tmp_path / "a"
    root.mkdir()
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"a": {"service": "local", "root": str(root)}})
    data = _rand(3 * MiB + 5, 1)
    md5 = hashlib.md5(data).hexdigest()
    gw = Gateway(cfg, token).start()
    try:
        url = gw.location(gw.create("k.bin", len(data), md5=md5))
        for off in (0, MiB):
            r = gw.patch(url, off, data[off:off + MiB], checksum=md5_header(data[off:off + MiB]))
            assert r.status_code == 204 and r.headers["Upload-Offset"] == str(off + MiB)
        gw.kill9()  # right after the second answer
        gw.start()
        head = gw.head(url)
        assert head.status_code == 200 and head.headers["Upload-Offset"] == str(2 * MiB)
        r = gw.patch(url, 2 * MiB, data[2 * MiB:], checksum=md5_header(data[2 * MiB:]))
        assert r.status_code == 204 and r.headers["ETag"] == f'"{md5}"' and r.headers["Skynet-Landed"] == "a"
        assert (root / "k.bin").read_bytes() == data
    finally:
        gw.stop()


def test_whole_upload_that_landed_leaves_nothing_on_disk(tmp_path):
    """A file sent whole with its creation and landed everywhere needed no fsync and no record:
    once answered, the staging folder is empty (the old code kept a record file until
    expire_after); HEAD on its Location still says every byte is in while the server runs."""
    root = tmp_path / "a"
    root.mkdir()
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"a": {"service": "local", "root": str(root)}})
    data = _rand(MiB + 7, 2)
    with Gateway(cfg, token) as gw:
        r = gw.create("w.bin", len(data), body=data)
        assert r.status_code == 201 and r.headers["Skynet-Landed"] == "a" and "ETag" not in r.headers
        assert staged(tmp_path / "state") == [] and records(tmp_path / "state") == []
        head = gw.head(gw.location(r))
        assert head.status_code == 200 and head.headers["Upload-Offset"] == str(len(data))
        assert (root / "w.bin").read_bytes() == data
        r = gw.create("m.bin", len(data), body=data, md5=hashlib.md5(data).hexdigest())
        assert r.status_code == 201 and r.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'


def test_whole_upload_a_destination_waits_for_survives_kill9(tmp_path):
    """Destination b is down (its folder is not there): a whole upload lands in a, the answer
    says `Skynet-Pending: b`, and so it was made durable first: killed with -9 right after
    the answer and restarted, the gateway lands it in b once b is back."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"a": {"service": "local", "root": str(a)}, "b": {"service": "local", "root": str(b)}})
    data = _rand(MiB + 3, 3)
    gw = Gateway(cfg, token).start()
    try:
        r = gw.create("p.bin", len(data), body=data)
        assert r.status_code == 201
        assert r.headers["Skynet-Landed"] == "a" and r.headers["Skynet-Pending"] == "b"
        assert records(tmp_path / "state") and staged(tmp_path / "state")
        gw.kill9()
        gw.start()
        b.mkdir()
        wait_for(lambda: (b / "p.bin").exists(), "the upload to land in b after the restart")
        assert (b / "p.bin").read_bytes() == data and (a / "p.bin").read_bytes() == data
        wait_for(lambda: staged(tmp_path / "state") == [], "its bytes to go once b has them")
    finally:
        gw.stop()


def _chunk(st, up, data: bytes, start: int, n: int) -> int:
    return st.write(up, start, io.BytesIO(data[start:start + n]), n, None)


def test_after_a_reboot_only_fsynced_offsets_count(tmp_path, monkeypatch):
    """In-process, the syncer's work done by hand: read back in the same boot (what kill -9
    leaves), the upload goes on from its last acknowledged chunk; read back after a reboot
    (another boot id: the page cache is gone), from the offset the syncer made durable, never
    further, and the next chunk written there cuts off what lay past it."""
    data = _rand(3 * MiB, 4)
    st = Staging(str(tmp_path), syncer=False)
    up = st.create(len(data), "r.bin", "", None, 10)
    assert _chunk(st, up, data, 0, MiB) == MiB
    assert st.sync(up)  # the first MiB fdatasynced, then recorded
    assert _chunk(st, up, data, MiB, MiB) == 2 * MiB  # acknowledged, not synced
    assert json.loads(Path(st.record(up.id)).read_text())["offset"] == MiB
    assert Staging(str(tmp_path), syncer=False).get(up.id).offset == 2 * MiB  # same boot
    monkeypatch.setattr(acklog, "boot_id", lambda: "another-boot")
    after = Staging(str(tmp_path), syncer=False)
    again = after.get(up.id)
    assert again.offset == MiB
    other = _rand(MiB, 5)
    assert after.write(again, MiB, io.BytesIO(other), MiB, None) == 2 * MiB
    assert Path(after.part(up.id)).read_bytes() == data[:MiB] + other


def test_a_patch_waits_for_the_disk_beyond_sync_lag(tmp_path, monkeypatch):
    """With the syncer running, an answered chunk never leaves the durable record more than
    SYNC_LAG behind (here 1 MiB: each 1 MiB chunk waits for the one before it to be fsynced)."""
    monkeypatch.setattr(staging, "SYNC_LAG", MiB)
    data = _rand(5 * MiB, 6)
    st = Staging(str(tmp_path))
    up = st.create(len(data), "l.bin", "", None, 10)
    for start in range(0, 4 * MiB, MiB):
        end = _chunk(st, up, data, start, MiB)
        assert end - json.loads(Path(st.record(up.id)).read_text())["offset"] <= MiB
    wait_for(lambda: json.loads(Path(st.record(up.id)).read_text())["offset"] == 4 * MiB, "the syncer to catch up")


def test_delivered_uploads_leave_the_working_set(tmp_path):
    """Landed everywhere, an upload is still answered (HEAD: every byte in) until expire_after,
    but no longer among what the delivery workers, the syncer and the in-flight limit scan on
    every request (a day of small uploads used to be scanned by each of them)."""
    st = Staging(str(tmp_path), syncer=False)
    ups = []
    for i in range(3):
        up = st.create(3, f"f{i}", "", None, 3, whole=True)
        st.write(up, 0, io.BytesIO(b"abc"), 3, None)
        st.finish(up, ["a"])
        ups.append(up)
    assert [u.id for u in st.undelivered()] == [u.id for u in ups]
    for up in ups:
        assert st.landed(up, "a")
    assert st.undelivered() == [] and st.partial() == []
    assert st.get(ups[0].id).offset == 3
    assert st.create(1, "next", "", None, 1) is not None  # the limit counts uploads in flight only


def test_a_landing_done_again_after_a_kill_makes_no_extra_version(tmp_path, monkeypatch):
    """A staged upload lands on its retry, and the gateway dies between the send and the
    landed record (here: the worker stops there for good). Started again from its disk, the
    gateway lands it once more: still one version of the file, not the upload's own file
    kept as a version of itself (the old code's extra version)."""
    import threading
    from types import SimpleNamespace

    from skynet.config.settings import TargetConfig
    from skynet.gateway.deliver import Deliveries
    from skynet.versions.stores import store_for

    root = tmp_path / "a"  # not there yet: the first attempt fails, the upload is made durable
    target = TargetConfig(name="a", service="local", root=str(root))
    st = Staging(str(tmp_path / "gw"), syncer=False)
    dl = Deliveries(st, [target], retry_interval=0.2)
    never = threading.Event()
    try:
        dl.start()
        up = st.create(3, "f.bin", "", None, 5, whole=True)
        st.write(up, 0, io.BytesIO(b"abc"), 3, None)
        st.finish(up, ["a"])
        assert dl.submit(up)["a"].result(timeout=60) is False
        st.persist(up)
        sent = threading.Event()

        def killed(up, target):  # the send is done, the landed record never written
            sent.set()
            never.wait()
            return False

        monkeypatch.setattr(st, "landed", killed)
        root.mkdir()
        dl.kick()
        assert sent.wait(60) and (root / "f.bin").read_bytes() == b"abc"
        st2 = Staging(str(tmp_path / "gw"), syncer=False)  # the restart, from what is on disk
        assert [u.id for u in st2.undelivered()] == [up.id]
        dl2 = Deliveries(st2, [target], retry_interval=0.2)
        dl2.start()
        try:
            wait_for(lambda: st2.undelivered() == [], "the upload to land again after the restart")
        finally:
            dl2.stop()
        con = target.build()
        history = [v for v in store_for(con, SimpleNamespace(versions=True, name="a")).history("f.bin")
                   if not v.deleted]
        assert len(history) == 1 and (root / "f.bin").read_bytes() == b"abc"
    finally:
        never.set()
        dl.stop()
