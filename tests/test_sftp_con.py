"""SFTPCon against the real OpenSSH sshd: host keys, resume, odd names,
errors, dead connections, secrets. The shared behaviour is in
test_xcon_contract.py; this file covers what only SFTP has."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from connections.contract.xcon import (
    BatchSend,
    LocalFile,
    NullResumeStore,
    PermanentError,
    TransferContext,
    TransientError,
)
from connections.local.con import temp_name
from connections.sftp.con import (
    HostKeyChanged,
    SFTPCon,
    UnknownHostKey,
    build,
    fetch_host_key,
    fingerprint,
    trust_host_key,
)
from tests.faultproxy import FaultProxy

MiB = 1 << 20


@pytest.fixture
def srv(servers):
    return servers.get("sftp")


@pytest.fixture
def remote(srv):
    """A fresh remote folder (also a local path: the server runs here)."""
    return srv.fresh_folder()


def con_for(srv, remote, **extra) -> SFTPCon:
    return build(srv.service(**extra), remote)


def local_file(path: Path, rel: str, mode: int = 0o644, mtime_ns: int = 1_700_000_000_000_000_000) -> LocalFile:
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    st = os.stat(path)
    return LocalFile(str(path), rel, st.st_size, st.st_mtime_ns, mode, st.st_ino, st.st_uid, st.st_gid)


def write_file(tmp_path: Path, rel: str, data: bytes, **kw) -> LocalFile:
    p = tmp_path / "src" / rel.replace("/", "_")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return local_file(p, rel, **kw)


def big_file(tmp_path: Path, size: int) -> LocalFile:
    p = tmp_path / "big.bin"
    block = os.urandom(MiB)
    with open(p, "wb") as fh:
        for i in range(size // MiB):
            fh.write(hashlib.sha256(block + i.to_bytes(4, "big")).digest() * (MiB // 32))
    return local_file(p, "dir/big.bin")


def sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(MiB), b""):
            h.update(b)
    return h.hexdigest()


def ssh_keygen_fingerprint(pub: str) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", pub], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


# -- host keys ------------------------------------------------------------------
def test_unknown_host_key_refused_with_fingerprint(srv, remote, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    con = con_for(srv, remote, known_hosts=str(empty))
    with pytest.raises(UnknownHostKey) as ei:
        con.connect()
    msg = str(ei.value)
    assert isinstance(ei.value, PermanentError)
    fp = ssh_keygen_fingerprint(srv.host_key_file + ".pub")
    assert fp in msg and "ssh-ed25519" in msg
    assert f"[{srv.host}]:{srv.port} ssh-ed25519 " in msg  # the exact line to add
    assert f"ssh-keyscan -p {srv.port} {srv.host}" in msg
    con.close()


def test_wizard_helpers_fetch_and_trust(srv, remote, tmp_path):
    key = fetch_host_key(srv.host, srv.port, timeout=5)
    assert fingerprint(key) == ssh_keygen_fingerprint(srv.host_key_file + ".pub")
    kh = tmp_path / "ssh" / "known_hosts"
    kh.parent.mkdir()
    kh.write_text("otherhost ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDOkr5hFlWcGAxOpGfZbPxjzTy9FqXYFWJaoodqTYWvB\n")
    line = trust_host_key(str(kh), srv.host, srv.port, key)
    assert line.startswith(f"[{srv.host}]:{srv.port} ssh-ed25519 ")
    assert (os.stat(kh).st_mode & 0o777) == 0o600
    assert kh.read_text().count("\n") == 2  # the other host's line is kept
    with con_for(srv, remote, known_hosts=str(kh)) as con:
        con.check()
    # Trusting again replaces, never duplicates.
    trust_host_key(str(kh), srv.host, srv.port, key)
    assert kh.read_text().count(f"[{srv.host}]:{srv.port}") == 1
    # Port 22 is written without brackets.
    assert trust_host_key(str(tmp_path / "kh22"), "example.org", 22, key).startswith("example.org ssh-ed25519 ")


def test_changed_host_key_refused_loudly(srv, remote, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    typ, b64 = other.with_suffix(".pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{srv.host}]:{srv.port} {typ} {b64}\n")
    con = con_for(srv, remote, known_hosts=str(kh))
    with pytest.raises(HostKeyChanged) as ei:
        con.connect()
    msg = str(ei.value)
    assert "HOST KEY CHANGED" in msg and "man-in-the-middle" in msg
    assert ssh_keygen_fingerprint(srv.host_key_file + ".pub") in msg
    assert ssh_keygen_fingerprint(str(other) + ".pub") in msg
    con.close()


# -- resume ---------------------------------------------------------------------
def _stop_after(ctx: TransferContext, limit: int):
    def progress(done, total):
        if done >= limit:
            ctx.stop.set()

    return progress


def test_resume_after_stop_sends_only_the_rest(srv, remote, tmp_path):
    """One connection: one stream, resumed from the temp file's size."""
    f = big_file(tmp_path, 200 * MiB)
    store = NullResumeStore()  # stands for the engine's state DB: outlives the connection
    tmp_remote = Path(remote) / "dir" / temp_name("big.bin")
    with con_for(srv, remote, connections="1") as con:
        ctx = TransferContext(resume=store)
        ctx.progress = _stop_after(ctx, 70 * MiB)
        with pytest.raises(TransientError, match="resumable"):
            con.send(f, ctx)
        assert store.load() and store.load()["size"] == f.size
    have = os.path.getsize(tmp_remote)
    assert 70 * MiB <= have < f.size

    seen = []
    with con_for(srv, remote, connections="1") as con2:  # a new instance, as after a restart
        res = con2.send(f, TransferContext(resume=store, progress=lambda d, t: seen.append(d)))
        assert res.bytes_sent == f.size - have
        assert res.size == f.size
        assert seen[0] == have and seen[-1] == f.size
        assert sha(Path(remote) / "dir" / "big.bin") == sha(f.path)
        assert con2.leftovers() == []
    assert store.load() is None


def test_resume_after_killed_connection(srv, remote, tmp_path):
    f = big_file(tmp_path, 200 * MiB)
    store = NullResumeStore()
    before = set(srv.sessions())
    con = con_for(srv, remote, connections="1")
    con.connect()
    ours = set(srv.sessions()) - before
    assert ours

    def kill_at(done, total):
        if done >= 60 * MiB and ours:
            for pid in ours:
                with contextlib.suppress(ProcessLookupError):  # gone with its partner process
                    os.kill(pid, signal.SIGKILL)
            ours.clear()

    t0 = time.monotonic()
    with pytest.raises(TransientError):
        con.send(f, TransferContext(resume=store, progress=kill_at))
    assert time.monotonic() - t0 < 30
    con.close()
    have = os.path.getsize(Path(remote) / "dir" / temp_name("big.bin"))
    assert 0 < have < f.size
    with con_for(srv, remote, connections="1") as con2:
        res = con2.send(f, TransferContext(resume=store))
        assert res.bytes_sent == f.size - have
        assert sha(Path(remote) / "dir" / "big.bin") == sha(f.path)
        assert con2.leftovers() == []


def _parts_sent(state: dict, size: int) -> int:
    part = state["part"]
    return sum(min((i + 1) * part, size) - i * part for i in state["done"])


def test_parts_only_for_a_far_server_unless_streams_is_set(srv, remote, tmp_path, monkeypatch):
    """Parallel parts beat one SSH channel's window on a far server; on a near one a single
    stream is faster, so by default the measured round trip decides (PARALLEL_RTT)."""
    import connections.sftp.con as sftp_mod

    with con_for(srv, remote, connections="4") as con:
        assert con.rtt is not None and con.rtt > 0  # measured by connect()
        con.rtt = 0.0002  # as loopback or a LAN (not asserted of the measure: a loaded machine is slower)
        assert con._parts_in_flight() == 1
        con.rtt = 0.05  # as a server 50 ms away
        assert con._parts_in_flight() == sftp_mod.PARALLEL_STREAMS
        con.streams = 3
        assert con._parts_in_flight() == 3
        con.rtt, con.connections = 0.0001, 2
        assert con._parts_in_flight() == 2  # explicit, and never more than the connections
        # an upload already begun keeps its way, whatever the round trip measures after a restart
        begun = TransferContext()
        begun.resume.save({"kind": "sftp-parts"})
        con.streams, con.rtt = None, 0.0002
        assert con._in_parts(begun)
        begun.resume.save({"kind": "sftp-temp"})
        con.rtt = 0.05
        assert not con._in_parts(begun)
        assert con._in_parts(TransferContext())  # nothing begun: far, so parts
        con.streams, con.parallel_min, con.connections, con.rtt = None, 8 * MiB, 4, 0.0002
        f = big_file(tmp_path, 20 * MiB)
        monkeypatch.setattr(con, "_send_parallel", lambda *a: pytest.fail("near server: one stream"))
        assert con.send(f, TransferContext()).size == f.size
        assert sha(Path(remote) / "dir" / "big.bin") == sha(f.path)


def test_parallel_upload_uses_several_connections_and_resumes(srv, remote, tmp_path):
    f = big_file(tmp_path, 200 * MiB)
    store = NullResumeStore()
    before = set(srv.sessions())
    with con_for(srv, remote, connections="4") as con:
        con.streams = 4
        ctx = TransferContext(resume=store)
        ctx.progress = _stop_after(ctx, 90 * MiB)
        with pytest.raises(TransientError, match="resumable"):
            con.send(f, ctx)
        assert len(set(srv.sessions()) - before) >= 2 * 2  # >= 2 connections (2 processes each)
        state = store.load()
        assert state["kind"] == "sftp-parts" and state["done"]
    kept = _parts_sent(state, f.size)
    assert 0 < kept < f.size
    seen = []
    savers = set()

    class Store(NullResumeStore):  # like an SQLite-backed store: one thread only
        def save(self, state):
            savers.add(threading.current_thread())
            super().save(state)

    store2 = Store()
    store2.save(state)

    def progress(done, total):
        seen.append(done)

    with con_for(srv, remote, connections="4") as con2:
        con2.streams = 4
        res = con2.send(f, TransferContext(resume=store2, progress=progress))
        assert savers == {threading.current_thread()}
        assert seen == sorted(seen)  # several threads report; never backwards
        assert res.bytes_sent == f.size - kept
        assert seen[0] == kept and seen[-1] == f.size
        assert sha(Path(remote) / "dir" / "big.bin") == sha(f.path)
        st = os.stat(Path(remote) / "dir" / "big.bin")
        assert st.st_mode & 0o777 == 0o644 and st.st_mtime_ns // 10**9 == f.mtime_ns // 10**9
        assert con2.leftovers() == []
    assert store2.load() is None


def test_parallel_upload_survives_a_killed_helper(srv, remote, tmp_path, monkeypatch):
    """The connections writing a parallel upload's parts are killed while a
    part is being written: the send fails as TransientError, the finished
    parts are kept, and the same instance reconnects and sends only the rest.

    Every part goes through a connection of the pool (the chunk scheduler's
    pool threads), so each is a "helper". The kill comes from inside part 5's
    first progress report (its WRITEs in flight: it certainly loses its
    connection), not from the whole file's progress at 50 MiB: with the
    scheduler, a helper killed in the moment between two parts is replaced,
    not failed (the send then succeeded: 1 run in 20).

    The flake of ~1 run in 30 (before and after the scheduler): os.kill of a
    session process that had already exited (killing one of the two sshd
    processes of a connection ends the other) raised ProcessLookupError in
    the progress callback, which failed the upload before `killed` was set."""
    import connections.sftp.con as sftp_mod

    f = big_file(tmp_path, 160 * MiB)
    store = NullResumeStore()
    before = set(srv.sessions())
    con = con_for(srv, remote, connections="3")
    con.streams = 3
    con.connect()
    killed: list = []
    write_chunk = sftp_mod._Parts.write_chunk

    def part(self, n, offset, data, sent):
        def metered(k):
            if n == 4 and not killed:
                killed.append(True)
                for pid in set(srv.sessions()) - before:
                    with contextlib.suppress(ProcessLookupError):  # gone with its partner process
                        os.kill(pid, signal.SIGKILL)
            sent(k)

        return write_chunk(self, n, offset, data, metered)

    monkeypatch.setattr(sftp_mod._Parts, "write_chunk", part)
    with pytest.raises(TransientError) as failed:
        con.send(f, TransferContext(resume=store))
    assert killed, f"the send failed before a helper was killed: {failed.value!r}"
    state = store.load()
    kept = _parts_sent(state, f.size)
    assert kept >= 2 * sftp_mod.PART_SIZE  # part 5 starts only after two of the first three ended
    res = con.send(f, TransferContext(resume=store))  # the same instance reconnects what broke
    assert res.bytes_sent == f.size - kept
    assert sha(Path(remote) / "dir" / "big.bin") == sha(f.path)
    assert con.leftovers() == []
    con.close()


class _ServerBytes:
    """Samples, every few milliseconds, how many bytes of the temp file the
    server has written (its allocated blocks: parts land at their offsets,
    leaving holes) beside the progress last reported."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reported = 0
        self.samples: list[tuple[float, int, int]] = []  # (seconds, on server, reported)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def progress(self, done: int, total: int) -> None:
        self.reported = max(self.reported, done)

    def _run(self) -> None:
        while not self._halt.wait(0.01):
            reported = self.reported  # read before the server: never ahead of it
            try:
                held = os.stat(self.path).st_blocks * 512
            except FileNotFoundError:
                continue
            self.samples.append((time.monotonic() - self.t0, held, reported))

    def __enter__(self) -> "_ServerBytes":
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self._thread.join()


def test_parallel_upload_reports_every_part_promptly_and_is_throttled(srv, remote, tmp_path, monkeypatch):
    """Issue 4: every part thread's acknowledged bytes reach ctx.report, so
    progress follows what the server holds during a parallel upload, and the
    bandwidth limit (fed by the same report) holds for the helper connections
    too. Before, only the calling thread reported (and slept) for all of them:
    the helpers ran unthrottled and progress lagged by tens of MiB."""
    from skynet.transfer.throttle import Schedule, Throttle

    import connections.sftp.con as sftp_mod

    monkeypatch.setattr(sftp_mod, "PART_SIZE", 4 * MiB)
    size, rate = 48 * MiB, 12 * MiB
    f = big_file(tmp_path, size)
    tmp_remote = Path(remote) / "dir" / temp_name("big.bin")
    with con_for(srv, remote, connections="2") as con:
        con.streams, con.parallel_min = 2, 32 * MiB
        con.check()  # both sessions' set-up is not part of the measure
        with _ServerBytes(tmp_remote) as watch:
            throttle = Throttle(Schedule(str(rate)))
            res = con.send(f, TransferContext(progress=watch.progress, throttle=throttle.consume))
            elapsed = time.monotonic() - watch.t0
    assert res.size == size and sha(Path(remote) / "dir" / "big.bin") == sha(f.path)
    assert watch.samples, "the temp file was never seen"
    # Slack, by construction: the throttle's burst (0.25 s of rate), and per
    # stream the writes in flight (MAX_INFLIGHT x 128 KiB) and one unreported batch.
    in_flight = 2 * (sftp_mod.MAX_INFLIGHT * con.write_size + sftp_mod.REPORT_BYTES)
    ahead = [(t, held) for t, held, _ in watch.samples if held > rate * t + rate // 4 + in_flight + MiB]
    assert not ahead, f"the server got bytes faster than {rate >> 20} MiB/s: {ahead[:3]}"
    lag = [(t, held, rep) for t, held, rep in watch.samples if held - rep > in_flight + MiB]
    assert not lag, f"progress lagged behind the server's bytes (s, server, reported): {lag[:3]}"
    reported = [rep for _, _, rep in watch.samples]
    assert len(set(reported)) >= 8  # it advanced all along, not in a few jumps
    assert elapsed >= 0.8 * size / rate


# -- the bulk data path -------------------------------------------------------------
@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "aes128-ctr", "chacha20-poly1305@openssh.com"])
def test_bulk_path_sends_intact_files(srv, remote, tmp_path, cipher):
    """Every cipher delivers the same bytes, in every way a file travels:
    parallel parts over two connections, one resumable stream, one small
    stream. (Before: _Wire with AES-GCM, _Wire through paramiko's Packetizer,
    paramiko's Channel.send; now asyncssh's public API for all of them.)"""
    con = con_for(srv, remote, connections="2")
    con.parallel_min = 24 * MiB
    con.ciphers = (cipher,)
    with con:
        con.check()
        assert set(con.extra_info("send_cipher")) == {cipher}
        assert con.write_size > 128 << 10 and con.write_size == 256 << 10
        files = [big_file(tmp_path, 40 * MiB)]  # parallel parts
        (tmp_path / "mid").mkdir()
        files.append(big_file(tmp_path / "mid", 10 * MiB))  # one resumable stream
        files[-1] = local_file(Path(files[-1].path), "dir/mid.bin")
        files.append(write_file(tmp_path, "dir/odd.bin", os.urandom(300_001)))  # not resumable
        for f in files:
            res = con.send(f, TransferContext())
            assert res.size == f.size
            assert sha(Path(remote) / f.rel) == sha(f.path), f.rel
        assert con.leftovers() == []


def test_packets_of_one_loop_pass_leave_in_one_send(srv, remote, tmp_path, monkeypatch):
    """asyncssh writes each SSH packet on its own (and an IGNORE packet before
    each): the packets written in one pass of the loop are joined into one
    write to the socket (BatchedTransport), in order, and every file arrives."""
    from connections.sftp import session as sftp

    batches: list[int] = []
    flush = sftp.BatchedTransport.flush

    def counted(self) -> None:
        if self.pending:
            batches.append(len(self.pending))
        flush(self)

    monkeypatch.setattr(sftp.BatchedTransport, "flush", counted)
    con = con_for(srv, remote, connections="1")
    files = [write_file(tmp_path, f"d/f{i}", os.urandom(100 + i)) for i in range(200)]
    with con:
        results = con.send_many(files, threading.Event())
    assert [r.size for r in results] == [f.size for f in files]
    for f in files:
        assert (Path(remote) / f.rel).read_bytes() == Path(f.path).read_bytes()
    packets = sum(batches)
    assert packets >= 200 * 5  # OPEN, WRITE, FSETSTAT, CLOSE, RENAME per file at least
    assert len(batches) * 4 < packets, (len(batches), packets)


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "aes128-ctr"])
@pytest.mark.parametrize("parts", [False, True], ids=["one stream", "parallel parts"])
def test_bulk_path_short_window_makes_short_packets(srv, remote, tmp_path, monkeypatch, cipher, parts):
    """An SSH channel window and packet size of an odd, small size (the
    server's or a middlebox's) split every WRITE into short packets and make
    the writers wait for window: the bytes still arrive whole, with one
    stream and with parallel parts, and WRITEs of an odd size (not a
    multiple of the part size) land at the right offsets."""
    f = big_file(tmp_path, 9 * MiB)
    con = con_for(srv, remote, connections="2")
    con.ciphers = (cipher,)
    con.ssh_options = {"window": 10_007 * 4, "max_pktsize": 10_007}
    con.write_size = 100_003
    con.parallel_min = 8 * MiB if parts else 64 * MiB
    monkeypatch.setattr("connections.sftp.con.PART_SIZE", 2 * MiB)
    with con:
        res = con.send(f, TransferContext())
        assert res.size == f.size and sha(Path(remote) / "dir" / "big.bin") == sha(f.path)


def test_bulk_path_survives_key_re_exchange(srv, remote, tmp_path, caplog):
    """Re-keying mid-stream (asyncssh's rekey_bytes): with a 4 MiB limit a
    48 MiB upload re-keys many times while WRITEs are in flight, and every
    byte arrives."""
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    f = big_file(tmp_path, 48 * MiB)
    with con_for(srv, remote, connections="1") as con:
        con.ssh_options = {"rekey_bytes": 4 * MiB}
        con.close()  # the next call connects with the option
        res = con.send(f, TransferContext())
        assert res.size == f.size and sha(Path(remote) / "dir" / "big.bin") == sha(f.path)
        kex = [r for r in caplog.records if "Completed key exchange" in r.getMessage()]
        assert len(kex) >= 1 + 4  # the first, then new keys several times
        assert con.extra_info("send_cipher")  # still connected


def test_bulk_path_uses_only_public_asyncssh_api():
    """Replaces "falls back when paramiko changed": nothing private of the
    SSH library is load-bearing any more. Every asyncssh name used is in its
    __all__, and no underscore attribute is read from anything but our own
    objects (self, cls) and our own module."""
    import ast

    import asyncssh

    import connections.sftp.con as sftp_mod

    package = sorted(Path(sftp_mod.__file__).parent.glob("*.py"))  # con, hostkeys, session
    trees = [ast.parse(p.read_text()) for p in package]
    ours = {n.name for tree in trees for n in ast.walk(tree)
            if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "asyncssh":
            public = node.attr in asyncssh.__all__ or (node.attr.isupper() and hasattr(asyncssh.constants, node.attr))
            assert public, f"asyncssh.{node.attr} is not public"  # constants: documented, star-exported
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            assert isinstance(base, ast.Name) and base.id in {"self", "cls", "sftp_mod"} | ours, \
                f"private attribute {node.attr} read at line {node.lineno}"
    assert not any("paramiko" in p.read_text() for p in package)


def test_changed_file_starts_over(srv, remote, tmp_path):
    f = big_file(tmp_path, 24 * MiB)
    store = NullResumeStore()
    with con_for(srv, remote) as con:
        ctx = TransferContext(resume=store)
        ctx.progress = _stop_after(ctx, 8 * MiB)
        with pytest.raises(TransientError):
            con.send(f, ctx)
        assert os.path.getsize(Path(remote) / "dir" / temp_name("big.bin")) > 0
        # Same size, new content and mtime: the saved identity no longer matches.
        with open(f.path, "r+b") as fh:
            fh.write(b"changed!")
        f2 = local_file(Path(f.path), f.rel, mtime_ns=f.mtime_ns + 5_000_000_000)
        res = con.send(f2, TransferContext(resume=store))
        assert res.bytes_sent == f.size
        assert sha(Path(remote) / "dir" / "big.bin") == sha(f.path)
        assert con.leftovers() == []


@pytest.mark.parametrize("where", ["middle", "tail"])
def test_resume_reads_back_and_catches_damage(srv, remote, tmp_path, where):
    """A resume reads back every byte the temp file already holds (OpenSSH
    has no check-file: before, only the last 64 KiB were compared, so damage
    in the middle went to the target). Any difference: "start over", no
    resume state, no temp file, no target; the next send sends it whole."""
    f = big_file(tmp_path, 16 * MiB)
    store = NullResumeStore()
    with con_for(srv, remote) as con:
        ctx = TransferContext(resume=store)
        ctx.progress = _stop_after(ctx, 4 * MiB)
        with pytest.raises(TransientError, match="resumable"):
            con.send(f, ctx)
        tmp_remote = Path(remote) / "dir" / temp_name("big.bin")
        size = os.path.getsize(tmp_remote)
        assert 2 * MiB < size < f.size
        with open(tmp_remote, "r+b") as fh:  # someone scribbled on the server
            fh.seek(MiB if where == "middle" else size - 10)
            fh.write(b"X" * 10)
        _damage_refused_then_sent_whole(con, f, store, remote)
        assert store.load() is None and con.leftovers() == []


def _damage_refused_then_sent_whole(con, f, store, remote) -> None:
    """After the temp file was damaged: the resuming send refuses it ("start
    over", nothing left behind), and the next send sends the whole file intact."""
    with pytest.raises(TransientError, match="start over"):
        con.send(f, TransferContext(resume=store))
    assert store.load() is None and con.leftovers() == [] and con.stat("dir/big.bin") is None
    res = con.send(f, TransferContext(resume=store))
    assert res.bytes_sent == f.size
    assert sha(Path(remote) / "dir" / "big.bin") == sha(f.path)


def test_parallel_resume_reads_back_the_finished_parts(srv, remote, tmp_path, monkeypatch):
    """The same for a parallel upload: the finished parts are read back, so
    damage inside a part before the last one is caught."""
    monkeypatch.setattr("connections.sftp.con.PART_SIZE", MiB)
    f = big_file(tmp_path, 16 * MiB)
    store = NullResumeStore()
    with con_for(srv, remote, connections="2") as con:
        con.streams, con.parallel_min = 2, 8 * MiB
        ctx = TransferContext(resume=store)
        ctx.progress = _stop_after(ctx, 6 * MiB)
        with pytest.raises(TransientError, match="resumable"):
            con.send(f, ctx)
        state = store.load()
        assert state["kind"] == "sftp-parts" and len(state["done"]) >= 2
        with open(Path(remote) / "dir" / temp_name("big.bin"), "r+b") as fh:
            fh.seek(min(state["done"]) * MiB + MiB // 2)  # the middle of the first finished part
            fh.write(b"X" * 10)
        _damage_refused_then_sent_whole(con, f, store, remote)


def test_small_file_stop_leaves_no_temp(srv, remote, tmp_path):
    f = write_file(tmp_path, "s/small", os.urandom(3 * MiB))
    with con_for(srv, remote) as con:
        ctx = TransferContext()
        ctx.progress = _stop_after(ctx, 1)
        ctx.stop.set()
        with pytest.raises(TransientError):
            con.send(f, ctx)
        assert con.leftovers() == []
        assert con.stat("s/small") is None


# -- names, metadata, errors ------------------------------------------------------
def test_odd_names_arrive_intact(srv, remote, tmp_path):
    names = [
        "it's \"quoted\" $(touch pwned) `touch pwned2` ; rm -rf x & | > y",
        "  leading and trailing spaces  ",
        "new\nline",
        "tab\there*?[a]",
        "-dash-first",
        "bytes-\udcff\udcfe",  # not UTF-8 on the wire: byte-exact
    ]
    with con_for(srv, remote) as con:
        for n in names:
            con.send(write_file(tmp_path, f"odd/{n}", os.fsencode(n)), TransferContext())
        got = {e.rel for e in con.list("odd")}
        assert got == {f"odd/{n}" for n in names}
        for n in names:
            p = os.path.join(os.fsencode(remote), b"odd", os.fsencode(n))
            assert open(p, "rb").read() == os.fsencode(n)
            assert con.stat(f"odd/{n}").size == len(os.fsencode(n))
        con.move(f"odd/{names[0]}", f"odd2/{names[2]}")
        con.delete(f"odd/{names[1]}")
        assert {e.rel for e in con.list("odd2")} == {f"odd2/{names[2]}"}
    for home in (remote, "/", srv.dir, os.getcwd()):
        assert not os.path.exists(os.path.join(home, "pwned"))
        assert not os.path.exists(os.path.join(home, "pwned2"))


def test_mtime_and_mode_on_the_server(srv, remote, tmp_path):
    f = write_file(tmp_path, "m/x.sh", b"#!/bin/sh\n", mode=0o751, mtime_ns=1_234_567_890_987_654_321)
    with con_for(srv, remote) as con:
        res = con.send(f, TransferContext())
        assert res.bytes_sent == f.size
    st = os.stat(Path(remote) / "m" / "x.sh")
    assert st.st_mtime_ns // 10**9 == 1_234_567_890
    assert st.st_mode & 0o7777 == 0o751


def test_permission_denied_is_permanent(srv, remote, tmp_path):
    if srv.uid == os.geteuid() == 0:
        pytest.skip("the server runs as root: permission bits are not enforced")
    with con_for(srv, remote) as con:
        con.send(write_file(tmp_path, "ro/seed", b"1"), TransferContext())
        os.chmod(Path(remote) / "ro", 0o500)
        try:
            with pytest.raises(PermanentError, match="permission denied"):
                con.send(write_file(tmp_path, "ro/new", b"2"), TransferContext())
            with pytest.raises(PermanentError, match="permission denied"):
                con.delete("ro/seed")
            with pytest.raises(PermanentError, match="permission denied"):
                con.move("ro/seed", "elsewhere")
            con.check()  # the connection is still fine
            assert con.stat("ro/seed").size == 1
        finally:
            os.chmod(Path(remote) / "ro", 0o755)
        assert con.leftovers() == []


def test_folder_in_the_way_is_permanent(srv, remote, tmp_path):
    with con_for(srv, remote) as con:
        con.send(write_file(tmp_path, "d/inner", b"1"), TransferContext())
        with pytest.raises(PermanentError, match="folder is in the way"):
            con.send(write_file(tmp_path, "d", b"file where a folder is"), TransferContext())
        con.send(write_file(tmp_path, "f", b"file"), TransferContext())
        with pytest.raises(PermanentError, match="file is in the way"):
            con.send(write_file(tmp_path, "f/under", b"x"), TransferContext())
        assert con.leftovers() == []


def test_name_too_long_is_permanent(srv, remote, tmp_path):
    with con_for(srv, remote) as con:
        f = write_file(tmp_path, "short", b"x")
        f = LocalFile(f.path, "n" * 300, f.size, f.mtime_ns, f.mode, f.ino)
        with pytest.raises(PermanentError):
            con.send(f, TransferContext())
        con.check()


def test_disk_full_is_permanent_and_explained(srv, remote, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    small = Path(remote) / "small"
    small.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=2m,uid={srv.uid},gid={srv.gid},mode=0755", "tmpfs", str(small)],
        capture_output=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr!r}")
    try:
        with con_for(srv, remote) as con:
            f = write_file(tmp_path, "small/big", os.urandom(3 * MiB))
            with pytest.raises(PermanentError, match="no space left"):
                con.send(f, TransferContext())
            assert con.leftovers() == []
            big = big_file(tmp_path, 9 * MiB)  # resumable: its temp goes too
            big = LocalFile(big.path, "small/big2", big.size, big.mtime_ns, big.mode, big.ino)
            store = NullResumeStore()
            with pytest.raises(PermanentError, match="no space left"):
                con.send(big, TransferContext(resume=store))
            assert store.load() is None
            assert con.leftovers() == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


# -- delete / move / cleanup ---------------------------------------------------------
def test_delete_removes_the_temp_sibling_and_cleanup_strays(srv, remote, tmp_path):
    f = big_file(tmp_path, 12 * MiB)
    store = NullResumeStore()
    with con_for(srv, remote) as con:
        ctx = TransferContext(resume=store)
        ctx.progress = _stop_after(ctx, 2 * MiB)
        with pytest.raises(TransientError):
            con.send(f, ctx)
        assert con.leftovers() == [f"dir/{temp_name('big.bin')}"]
        con.delete("dir/big.bin")  # never arrived: only its temp file is there
        assert con.leftovers() == []

        # cleanup keeps what a saved resume state still needs, removes the rest.
        ctx = TransferContext(resume=store)
        ctx.progress = _stop_after(ctx, 2 * MiB)
        with pytest.raises(TransientError):
            con.send(f, ctx)
        stray = Path(remote) / "a" / "b" / temp_name("gone")
        stray.parent.mkdir(parents=True)
        stray.write_bytes(b"half")
        for path in (stray.parent.parent, stray.parent, stray):  # as if the server wrote it
            os.chown(path, srv.uid, srv.gid)
        con.cleanup([store.load()])
        assert con.leftovers() == [f"dir/{temp_name('big.bin')}"]
        con.cleanup([])
        assert con.leftovers() == []


def test_move_folder_is_one_rename_and_creates_parents(srv, remote, tmp_path):
    with con_for(srv, remote) as con:
        for i in range(3):
            con.send(write_file(tmp_path, f"src/sub/f{i}", b"x" * i), TransferContext())
        ino = os.stat(Path(remote) / "src").st_ino
        con.move("src", "deep/er/dst")
        assert os.stat(Path(remote) / "deep" / "er" / "dst").st_ino == ino  # renamed, not copied
        assert {e.rel for e in con.list()} == {f"deep/er/dst/sub/f{i}" for i in range(3)}


# -- liveness -------------------------------------------------------------------------
@pytest.fixture
def proxy(srv, tmp_path):
    p = FaultProxy(srv.port).start()
    kh = tmp_path / "kh_proxy"
    kh.write_text(srv.known_hosts_line(p.port))
    p.known_hosts = str(kh)
    yield p
    p.close()


def test_dead_connection_detected_within_timeout(srv, remote, tmp_path, proxy):
    con = build(srv.service(port=str(proxy.port), known_hosts=proxy.known_hosts, timeout="2", keepalive="1"), remote)
    con.connect()
    try:
        con.send(write_file(tmp_path, "a", b"before"), TransferContext())
        proxy.stall()
        for op in (
            lambda: con.send(write_file(tmp_path, "b", os.urandom(4 * MiB)), TransferContext()),
            con.check,
            lambda: con.stat("a"),
        ):
            t0 = time.monotonic()
            with pytest.raises(TransientError):
                op()
            assert time.monotonic() - t0 < 2 * 2 + 3
        proxy.restore()
        con.check()  # broken connections were dropped; a new one works
        assert con.stat("a").size == 6
    finally:
        proxy.restore()
        con.close()


def test_temp_file_of_a_send_cut_off_mid_way_goes_with_discard(srv, remote, tmp_path, proxy):
    """A small (not resumable) send whose connection dies mid-way cannot remove its
    temp file, and no resume state names it: discard() of that path removes it
    (the engine calls it once the file will not be sent: deleted, moved away)."""
    con = build(srv.service(port=str(proxy.port), known_hosts=proxy.known_hosts, timeout="2", keepalive="1"), remote)
    con.connect()
    try:
        ctx = TransferContext(throttle=lambda n: proxy.stall())  # the network dies once bytes flow
        with pytest.raises(TransientError):
            con.send(write_file(tmp_path, "cut", os.urandom(4 * MiB)), ctx)
        proxy.restore()
        assert [n for n in os.listdir(remote) if n == temp_name("cut")]  # left behind, named by nothing
        con.discard("other", None)  # another path: nothing to do
        assert con.leftovers() == [temp_name("cut")]
        con.discard("cut", None)
        assert con.leftovers() == []
        con.discard("cut", None)  # nothing left: no error
    finally:
        proxy.restore()
        con.close()


@pytest.mark.serial  # wall-clock timing: not beside the parallel workers (see tests/conftest.py)
def test_one_dead_session_flushes_the_idle_ones(srv, remote, tmp_path, proxy):
    con = build(srv.service(port=str(proxy.port), known_hosts=proxy.known_hosts, timeout="2",
                            connections="3"), remote)
    con.connect()
    try:
        warm = [write_file(tmp_path, f"w{i}", b"x") for i in range(6)]
        threads = [threading.Thread(target=con.send, args=(f, TransferContext())) for f in warm]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert con.extra_info("socket") and len(con.extra_info("socket")) == 3  # three open, all idle
        proxy.stall()
        with pytest.raises(TransientError):
            con.check()
        proxy.restore()
        # No second timeout on another stale session: a fresh one answers at once.
        t0 = time.monotonic()
        con.check()
        assert time.monotonic() - t0 < 1.5
    finally:
        proxy.restore()
        con.close()


def test_connect_to_a_silent_server_times_out(srv, remote, proxy):
    proxy.stall()
    con = build(srv.service(port=str(proxy.port), known_hosts=proxy.known_hosts, timeout="2"), remote)
    t0 = time.monotonic()
    with pytest.raises(TransientError):
        con.connect()
    assert time.monotonic() - t0 < 10
    con.close()


def test_unreachable_port_is_transient(srv, remote):
    con = build(srv.service(port="1", timeout="2"), remote)
    with pytest.raises(TransientError):
        con.connect()


def test_killed_session_is_replaced(srv, remote, tmp_path):
    before = set(srv.sessions())
    with con_for(srv, remote, connections="1") as con:
        for pid in set(srv.sessions()) - before:
            with contextlib.suppress(ProcessLookupError):  # gone with its partner process
                os.kill(pid, signal.SIGKILL)
        errors = 0
        for _ in range(3):
            try:
                con.send(write_file(tmp_path, "after", b"ok"), TransferContext())
                break
            except TransientError:
                errors += 1
        assert errors <= 1 and con.stat("after").size == 2


def test_close_leaves_no_threads(srv, remote, tmp_path):
    before = {t.ident for t in threading.enumerate()}
    con = con_for(srv, remote, connections="3")
    con.connect()
    files = [write_file(tmp_path, f"t/{i}", b"x") for i in range(9)]
    threads = [threading.Thread(target=con.send, args=(f, TransferContext())) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    con.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        if not extra:
            break
        time.sleep(0.05)
    assert extra == []


# -- secrets and config -----------------------------------------------------------------
def test_secrets_never_in_messages_or_logs(srv, remote, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    password = "Pw-Secret-4711"
    con = build(srv.service(key_file="", password=password), remote)
    assert password not in con.describe() and password not in repr(con)
    with pytest.raises(PermanentError) as ei:
        con.connect()
    assert password not in str(ei.value) and password not in repr(ei.value)
    con.close()

    # An encrypted key: wrong passphrase refused, right one works; neither shows.
    key = tmp_path / "enc_key"
    right, wrong = "Right-Pass-0815", "Wrong-Pass-0816"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", right, "-f", str(key)], check=True)
    with open(Path(srv.dir) / "authorized_keys", "a") as fh:
        fh.write(key.with_suffix(".pub").read_text())
    bad = build(srv.service(key_file=str(key), key_passphrase=wrong), remote)
    with pytest.raises(PermanentError) as ei:
        bad.connect()
    assert wrong not in str(ei.value) and "key_passphrase" in str(ei.value)
    good = build(srv.service(key_file=str(key), key_passphrase=right), remote)
    with good:
        good.check()
        assert right not in good.describe() and right not in repr(good)
    for secret in (password, right, wrong):
        assert secret not in caplog.text


def test_login_with_ssh_agent(srv, remote, tmp_path, monkeypatch):
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        subprocess.run(["ssh-add", "-q", srv.key_file], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh keys to fall back on
        with con_for(srv, remote, key_file="", use_agent="yes") as con:
            con.check()
        with pytest.raises(PermanentError, match="no key or password"):
            con_for(srv, remote, key_file="", use_agent="no").connect()
    finally:
        agent.terminate()
        agent.wait()


def test_build_validates():
    ok = {"host": "h", "known_hosts": "/nonexistent/kh"}
    con = build(ok, "/data")
    assert con.port == 22 and con.connections == 4 and con.use_agent is True
    assert build({**ok, "use_agent": "no"}, "/d").use_agent is False
    for bad, key in [
        ({}, "host"),
        ({**ok, "port": "x"}, "port"),
        ({**ok, "port": "70000"}, "port"),
        ({**ok, "connections": "0"}, "connections"),
        ({**ok, "use_agent": "maybe"}, "use_agent"),
        ({**ok, "timeout": "-1"}, "timeout"),
        ({**ok, "key_file": "/nonexistent/key"}, "key_file"),
        ({**ok, "passwrod": "x"}, "passwrod"),
    ]:
        with pytest.raises(ValueError, match=f"^{key}: "):
            build(bad, "/d")
    with pytest.raises(ValueError, match="^target: "):
        build(ok, "")
    with pytest.raises(ValueError, match="^target: "):
        build(ok, "/a/../../etc")


def test_parallel_many_small_files(srv, remote, tmp_path):
    files = [write_file(tmp_path, f"p/{i % 7}/{i}", os.urandom(100 + i)) for i in range(200)]
    with con_for(srv, remote, connections="4") as con:
        errors: list[BaseException] = []

        def run(chunk):
            try:
                for f in chunk:
                    con.send(f, TransferContext())
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(files[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        got = {e.rel: e.size for e in con.list("p")}
        assert got == {f.rel: f.size for f in files}
        assert con.leftovers() == []


def test_ssh_sockets_send_small_requests_at_once(srv, remote, tmp_path):
    """TCP_NODELAY on every SSH connection: with Nagle's algorithm on, a request
    written right behind another waited for the server's delayed ACK (up to
    40 ms), which held small files at ~220/s where they now go at ~550/s."""
    con = con_for(srv, remote)
    con.connect()
    try:
        con.send(write_file(tmp_path, "a", b"x"), TransferContext())
        socks = con.extra_info("socket")
        assert socks and all(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0 for sock in socks)
    finally:
        con.close()


def test_send_many_runs_a_batch_at_once_and_each_file_fails_alone(srv, remote, tmp_path, proxy):
    """send_many (batch_send: the handler's path for small files) runs a whole
    batch on the loop: every file arrives with its mode and mtime; a folder
    swapped for a link refuses only the files below it (UnsafePath); a dead
    link fails every file of the batch as transient, within the timeout, and
    the next batch connects again."""
    con = build(srv.service(port=str(proxy.port), known_hosts=proxy.known_hosts, timeout="2", keepalive="1"), remote)
    con.connect()
    try:
        assert isinstance(con, BatchSend)
        files = [write_file(tmp_path, f"b/{i % 5}/{i}", os.urandom(10 + i), mode=0o600 + i % 8) for i in range(300)]
        results = con.send_many(files, threading.Event())
        bad = [(f.rel, r) for f, r in zip(files, results) if isinstance(r, Exception) or r.size != f.size]
        assert not bad, bad[:3]
        os.symlink(tmp_path, Path(remote) / "b" / "linked")
        linked = write_file(tmp_path, "b/linked/x", b"never through the link")
        results = con.send_many(files[:3] + [linked], threading.Event())
        assert all(not isinstance(r, Exception) for r in results[:3])
        assert isinstance(results[-1], PermanentError) and "symbolic link" in str(results[-1])
        assert not (tmp_path / "x").exists()
        for f in files[:20]:
            st = os.stat(Path(remote) / f.rel)
            assert st.st_mode & 0o777 == f.mode and st.st_mtime_ns // 10**9 == f.mtime_ns // 10**9
        assert {e.rel for e in con.list("b")} == {f.rel for f in files}
        proxy.stall()
        again = [write_file(tmp_path, f"c/{i}", b"x" * i) for i in range(20)]
        t0 = time.monotonic()
        results = con.send_many(again, threading.Event())
        assert time.monotonic() - t0 < 2 * 2 + 3
        assert all(isinstance(r, TransientError) for r in results), results
        proxy.restore()
        assert all(not isinstance(r, Exception) for r in con.send_many(again, threading.Event()))
        assert con.leftovers() == []
    finally:
        proxy.restore()
        con.close()
