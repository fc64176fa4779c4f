"""SFTP upload benchmark: SFTPCon beside rclone, OpenSSH sftp -b and scp -r.

Every contender runs as a child process, measured the same way: wall seconds,
files/s and MB/s, the child's peak RSS (MiB) and CPU seconds (wait4 rusage).
When the server is the one this script starts (tests/server_sshd.py), the
server's CPU for the run is reported too (sshd reaps its sessions, so their
CPU shows in the listener's cutime/cstime).

    .venv/bin/python -m bench.sftp_peers                  # start a test sshd, run all
    .venv/bin/python -m bench.sftp_peers --small 2000 --big-mib 256 --knobs
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RCLONE = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone") or "rclone"
MB = 1_000_000
#: another checkout whose SFTPCon runs beside this one's (--old), or None
OLD_ROOT: Path | None = None

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRss  # noqa: E402  (peak RSS of a child: see there)


@dataclass
class Server:
    """Where to upload: an SSH server and a writable remote folder."""

    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str
    remote_root: str
    #: remote path -> local path, when the server is on this machine (cleanup)
    local_of: Callable[[str], str] | None = None
    #: PID of the sshd listener we started (server CPU accounting)
    sshd_pid: int | None = None


@dataclass
class Result:
    name: str
    seconds: float
    files: int
    bytes: int
    files_per_s: float
    mb_per_s: float
    peak_rss_mib: float
    cpu_s: float
    server_cpu_s: float | None = None
    ok: bool = True
    note: str = ""
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        srv = f"{self.server_cpu_s:6.2f}" if self.server_cpu_s is not None else "     -"
        flag = "" if self.ok else "  FAILED"
        return (
            f"{self.name:<44} {self.seconds:7.2f}s {self.files_per_s:8.0f} files/s {self.mb_per_s:7.1f} MB/s "
            f"rss {self.peak_rss_mib:6.1f} MiB  cpu {self.cpu_s:6.2f}s  sshd {srv}s{flag} {self.note}"
        )


class SessionCPU:
    """CPU seconds used by sshd's session processes during a run.

    sshd does not leave its sessions' CPU in its own cutime (they are reaped
    without accounting), so a thread samples every descendant of the listener
    while the run lasts and keeps each one's latest utime+stime (+ the CPU of
    children it reaped, e.g. rclone's md5sum commands).
    """

    def __init__(self, pid: int | None, every: float = 0.05) -> None:
        self.pid, self.every = pid, every
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _descendants(self) -> list[int]:
        found, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            try:
                with open(f"/proc/{p}/task/{p}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except OSError:
                kids = []
            found += kids
            todo += kids
        return found

    def sample(self) -> None:
        for p in self._descendants():
            try:
                f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.seen[p] = sum(int(x) for x in f[11:15]) / self._tick

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> "SessionCPU":
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.pid:
            self._thread.join()

    @property
    def total(self) -> float | None:
        return sum(self.seen.values()) if self.pid else None


def _wait_sessions_gone(pid: int | None, timeout: float = 10.0) -> None:
    """Let the previous run's sessions end before the next run starts."""
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                if not fh.read().split():
                    return
        except OSError:
            return
        time.sleep(0.02)


def _tree_size(src: Path) -> tuple[int, int]:
    files = total = 0
    for folder, _dirs, names in os.walk(src):
        for n in names:
            files += 1
            total += os.path.getsize(os.path.join(folder, n))
    return files, total


def measure(name: str, cmd: list[str], src: Path, server: Server, env: dict | None = None,
            stdin: bytes | None = None) -> Result:
    """Run `cmd` as a child; time it and read its rusage with wait4."""
    files, total = _tree_size(src)
    _wait_sessions_gone(server.sshd_pid)
    sessions = SessionCPU(server.sshd_pid).__enter__()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rss = PeakRss(proc.pid)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [threading.Thread(target=lambda s=s, c=c: c.append(s.read())) for s, c in
               ((proc.stdout, out_chunks), (proc.stderr, err_chunks))]
    for r in readers:
        r.start()
    if stdin:
        proc.stdin.write(stdin)
        proc.stdin.close()
    _pid, status, ru = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    sessions.sample()
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    sessions.__exit__()
    out = b"".join(out_chunks).decode(errors="replace")
    err = b"".join(err_chunks).decode(errors="replace")
    extra = {}
    if out.strip().startswith("{"):
        extra = json.loads(out.strip().splitlines()[-1])
    return Result(
        name=name,
        seconds=seconds,
        files=files,
        bytes=total,
        files_per_s=files / seconds,
        mb_per_s=total / seconds / MB,
        peak_rss_mib=rss.peak(ru.ru_maxrss / 1024),
        cpu_s=ru.ru_utime + ru.ru_stime,
        server_cpu_s=sessions.total,
        ok=proc.returncode == 0,
        note="" if proc.returncode == 0 else err.strip()[-300:],
        extra=extra,
    )


# -- contenders ---------------------------------------------------------------------
def _ssh_opts(server: Server) -> list[str]:
    return [
        "-i", server.key_file,
        "-o", f"UserKnownHostsFile={server.known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
    ]


def rclone_copy(server: Server, src: Path, dest: str, hashcheck: bool = True, transfers: int = 16) -> Result:
    """`rclone copy` to an sftp remote configured by environment variables only."""
    env = dict(
        os.environ,
        RCLONE_CONFIG_X_TYPE="sftp",
        RCLONE_CONFIG_X_HOST=server.host,
        RCLONE_CONFIG_X_PORT=str(server.port),
        RCLONE_CONFIG_X_USER=server.user,
        RCLONE_CONFIG_X_KEY_FILE=server.key_file,
        RCLONE_CONFIG_X_KNOWN_HOSTS_FILE=server.known_hosts,
        RCLONE_CONFIG=os.devnull,
    )
    cmd = [RCLONE, "copy", "--transfers", str(transfers), str(src), f"X:{dest}"]
    if not hashcheck:
        cmd.insert(2, "--sftp-disable-hashcheck")
    name = f"rclone --transfers {transfers}" + ("" if hashcheck else " --sftp-disable-hashcheck")
    return measure(name, cmd, src, server, env=env)


def openssh_sftp_batch(server: Server, src: Path, dest: str) -> Result:
    """OpenSSH `sftp -b -` with `put -r` (one connection, its own pipelining)."""
    batch = f'mkdir "{dest}"\nput -r "{src}" "{dest}"\n'.encode()
    cmd = ["sftp", "-q", "-b", "-", "-P", str(server.port), *_ssh_opts(server), f"{server.user}@{server.host}"]
    return measure("openssh sftp -b (put -r)", cmd, src, server, stdin=batch)


def openssh_scp(server: Server, src: Path, dest: str) -> Result:
    """OpenSSH `scp -r` (SFTP protocol underneath since OpenSSH 9.0)."""
    cmd = ["scp", "-q", "-r", "-P", str(server.port), *_ssh_opts(server), str(src),
           f"{server.user}@{server.host}:{dest}"]
    return measure("openssh scp -r", cmd, src, server)


def skynet_sftpcon(server: Server, src: Path, dest: str, connections: int = 4, threads: int = 0,
                   write_size: int = 0, cipher: str = "aes128-gcm@openssh.com", root: Path = ROOT,
                   streams: int = 0) -> Result:
    """SFTPCon.send from many threads over its pool, in a child process
    (write_size 0, streams 0: SFTPCon's own choice). `root`: another checkout
    whose SFTPCon to measure (--old), through that checkout's own bench child."""
    threads = threads or 2 * connections
    runner = ["-m", "bench.sftp_peers"] if root == ROOT else [str(root / "bench" / "sftp_peers.py")]
    cmd = [sys.executable, *runner, "_skynet",
           "--host", server.host, "--port", str(server.port), "--user", server.user,
           "--key-file", server.key_file, "--known-hosts", server.known_hosts,
           "--src", str(src), "--dest", dest, "--connections", str(connections),
           "--threads", str(threads), "--write-size", str(write_size), "--cipher", cipher]
    if streams:  # only then: an older checkout's child may not know the option
        cmd += ["--streams", str(streams)]
    size = f" w={write_size >> 10}K" if write_size else ""
    size += f" streams={streams}" if streams else ""
    who = "skynet SFTPCon" if root == ROOT else f"skynet-old({root.name}) SFTPCon"
    name = f"{who} conns={connections} thr={threads}{size} {cipher.split('@')[0]}"
    env = dict(os.environ, PYTHONPATH=str(root))
    return measure(name, cmd, src, server, env=env)


def _skynet_child(args: argparse.Namespace) -> None:
    """The measured child: upload every file under --src with SFTPCon."""
    from concurrent.futures import ThreadPoolExecutor

    from connections.contract.xcon import BatchSend, LocalFile, TransferContext
    from connections.sftp.con import SFTPCon

    kw = {"write_size": args.write_size} if args.write_size else {}
    con = SFTPCon(args.host, args.dest, port=args.port, user=args.user, key_file=args.key_file,
                  known_hosts=args.known_hosts, use_agent=False, connections=args.connections,
                  ciphers=(args.cipher,), **kw)
    if args.streams:
        con.streams = args.streams
    con.connect()
    src = Path(args.src)
    files = []
    for folder, _dirs, names in os.walk(src):
        for n in names:
            p = os.path.join(folder, n)
            st = os.stat(p)
            rel = os.path.relpath(p, src)
            files.append(LocalFile(p, rel, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_ino))
    t0 = time.perf_counter()
    sent = 0
    with ThreadPoolExecutor(args.threads) as pool:
        if isinstance(con, BatchSend):
            # as the handler does for small files: batches (of at most 256) to send_many
            import threading

            per = max(1, min(256, -(-len(files) // args.threads)))
            batches = [files[i:i + per] for i in range(0, len(files), per)]
            for results in pool.map(lambda b: con.send_many(b, threading.Event()), batches):
                for res in results:
                    if isinstance(res, Exception):
                        raise res
                    sent += res.bytes_sent
        else:
            for res in pool.map(lambda f: con.send(f, TransferContext()), files):
                sent += res.bytes_sent
    seconds = time.perf_counter() - t0
    cipher = ",".join(sorted(set(con.extra_info("send_cipher"))))
    write_size = con.write_size
    con.close()
    print(json.dumps({"files": len(files), "bytes_sent": sent, "send_seconds": seconds,
                      "cipher": cipher, "write_size": write_size}))


# -- data and driver ------------------------------------------------------------------
def make_small(folder: Path, count: int, size: int = 4096) -> Path:
    if folder.exists() and len(os.listdir(folder)) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"f{i:06d}.bin").write_bytes(os.urandom(size))
    return folder


def make_big(folder: Path, mib: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "big.bin"
    if not p.exists() or p.stat().st_size != mib << 20:
        with open(p, "wb") as fh:
            block = os.urandom(1 << 20)
            for i in range(mib):
                fh.write(block[i % 251:] + block[: i % 251])
    return folder


Contender = tuple[str, Callable[[Path, str], Result]]


def contenders(server: Server, what: str, knobs: bool) -> list[Contender]:
    """Who runs on data set `what` ("small" or "big")."""
    out: list[Contender] = [
        ("rclone", lambda s, d: rclone_copy(server, s, d, hashcheck=True)),
        ("rclone-nohash", lambda s, d: rclone_copy(server, s, d, hashcheck=False)),
        ("sftp-b", lambda s, d: openssh_sftp_batch(server, s, d)),
        ("scp", lambda s, d: openssh_scp(server, s, d)),
        ("skynet", lambda s, d: skynet_sftpcon(server, s, d)),
    ]
    if OLD_ROOT is not None:
        out.append(("skynet-old", lambda s, d: skynet_sftpcon(server, s, d, root=OLD_ROOT)))
    if knobs:
        combos = (
            [dict(connections=c) for c in (1, 2, 8)] + [dict(cipher="aes128-ctr")]
            if what == "small"
            else [dict(connections=c) for c in (1, 2)]  # 1: a single stream
            + [dict(write_size=w) for w in (32 << 10, 128 << 10)]
            + [dict(cipher="aes128-ctr")]
        )
        for kw in combos:
            out.append((f"skynet {kw}", lambda s, d, kw=kw: skynet_sftpcon(server, s, d, **kw)))
    return out


def run_all(server: Server, work: Path, small: int, big_mib: int, knobs: bool, repeat: int = 1,
            only: str | None = None) -> list[Result]:
    """Each round runs every contender once, so a burst of load on a shared
    machine hits them all alike; the summary gives each one's best and median."""
    sets = (only,) if only else ("small", "big")
    data = {}
    if "small" in sets:
        data["small"] = make_small(work / f"small-{small}", small)
    if "big" in sets:
        data["big"] = make_big(work / f"big-{big_mib}", big_mib)
    results: list[Result] = []
    n = 0
    for what in sets:
        label = f"{small}x4KiB" if what == "small" else f"1x{big_mib}MiB"
        for _round in range(repeat):
            for _key, fn in contenders(server, what, knobs):
                n += 1
                d = f"{server.remote_root}/run-{os.getpid()}-{n}"
                r = fn(data[what], d)
                r.name = f"[{label}] {r.name}"
                results.append(r)
                print(r.line(), flush=True)
                if server.local_of:
                    shutil.rmtree(server.local_of(d), ignore_errors=True)
    return results


def summary(results: list[Result]) -> str:
    """Best and median of each contender: files/s, MB/s, CPU and sshd CPU."""
    by: dict[str, list[Result]] = {}
    for r in results:
        by.setdefault(r.name, []).append(r)
    lines = [f"{'contender':<60} {'runs':>4} {'best files/s':>12} {'median':>8} {'best MB/s':>9} {'median':>7}"
             f" {'cpu s':>6} {'sshd s':>6} {'rss MiB':>7}"]
    for name, rs in by.items():
        fps = sorted(r.files_per_s for r in rs)
        mbs = sorted(r.mb_per_s for r in rs)
        cpu = sorted(r.cpu_s for r in rs)[len(rs) // 2]
        srv = sorted((r.server_cpu_s or 0) for r in rs)[len(rs) // 2]
        rss = max(r.peak_rss_mib for r in rs)
        lines.append(f"{name:<60} {len(rs):>4} {fps[-1]:>12.0f} {fps[len(fps) // 2]:>8.0f} {mbs[-1]:>9.1f}"
                     f" {mbs[len(mbs) // 2]:>7.1f} {cpu:>6.2f} {srv:>6.2f} {rss:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    child = sub.add_parser("_skynet")
    for a in ("host", "user", "key-file", "known-hosts", "src", "dest", "cipher"):
        child.add_argument(f"--{a}", required=True)
    for a in ("port", "connections", "threads", "write-size"):
        child.add_argument(f"--{a}", type=int, required=True)
    child.add_argument("--streams", type=int, default=0)
    ap.add_argument("--small", type=int, default=2000, help="number of 4 KiB files")
    ap.add_argument("--big-mib", type=int, default=256, help="size of the large file")
    ap.add_argument("--knobs", action="store_true", help="also try SFTPCon's knobs")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--only", choices=("small", "big"), help="run one data set only")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "skynet-bench-sftp"))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--old", help="also measure the SFTPCon of this other checkout (e.g. a worktree of main)")
    args = ap.parse_args(argv)
    if args.cmd == "_skynet":
        _skynet_child(args)
        return 0
    global OLD_ROOT
    OLD_ROOT = Path(args.old).resolve() if args.old else None

    sys.path.insert(0, str(ROOT))
    from tests.server_sshd import run_sshd

    work = Path(args.work)
    with run_sshd(work / "sshd") as srv:
        server = Server(srv.host, srv.port, srv.user, srv.key_file, srv.known_hosts, srv.fresh_folder("bench"),
                        local_of=lambda p: p, sshd_pid=srv.pid)
        results = run_all(server, work, args.small, args.big_mib, args.knobs, args.repeat, args.only)
    print()
    print(summary(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
