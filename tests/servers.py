"""Real servers the tests talk to, started on 127.0.0.1 by the test session.

Each server is started lazily, the first time a test asks for it, and stopped
(by the PID we started) when the session ends. See ../shared/TEST-SERVERS.md.
"""
from __future__ import annotations

import contextlib
import signal
import socket
from typing import Any, Callable, Iterator, Protocol, TypeVar

T = TypeVar("T")

#: how many ports start_on_free_port() tries before it gives up
PORT_ATTEMPTS = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, never handed out before
    in this process, from this process's own pool (port_pool()).

    WHY not bind(0): the kernel takes that port from the ephemeral range, where every
    client's connect() takes its local port too, and where another pytest-xdist worker's
    bind(0) may be given the port of a server of ours that a test stopped for a while (an
    outage): the server could not come back on its port. A pool below the ephemeral range,
    one slice per worker, is touched by neither."""
    import random

    low, high = port_pool()
    while len(_HANDED_OUT) < high - low:
        port = random.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        _HANDED_OUT.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # something else of the machine's holds it
            return port
    raise RuntimeError(f"every port of {low}-{high} was handed out")


_HANDED_OUT: set[int] = set()


def port_pool() -> tuple[int, int]:
    """This process's ports [low, high): POOL_SPAN ports below the ephemeral range
    (net.ipv4.ip_local_port_range), sliced among the pytest-xdist workers (PYTEST_XDIST_WORKER
    gwN of PYTEST_XDIST_WORKER_COUNT); the whole span in a process that is not a worker."""
    import os

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            ephemeral = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    low = max(1024, ephemeral - POOL_SPAN)
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return low, ephemeral
    size = (ephemeral - low) // count
    index = int(worker[2:]) % count
    return low + index * size, low + (index + 1) * size


#: how many ports below the ephemeral range the test servers take theirs from
POOL_SPAN = 12000


def start_on_free_port(start: Callable[[int], T], what: str, attempts: int = PORT_ATTEMPTS) -> T:
    """`start(port)` on a free_port(), again on another port when it raises RuntimeError.

    WHY: a port free when free_port() checked it may be taken before the server binds it:
    by a server another pytest-xdist worker (or another session) starts at the same moment,
    or by a client's ephemeral port. `start` must clean up what it started before raising."""
    last: RuntimeError | None = None
    for _attempt in range(attempts):
        try:
            return start(free_port())
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(f"could not start {what} on any of {attempts} free ports: {last}")


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock, machine-wide, named `name` (a file under /tmp, flock).

    WHY: what the test servers set up once per machine (a Debian package, a system user)
    must not be set up by two pytest-xdist workers (or two sessions) at once: two
    apt-get's fight over the dpkg lock, and the second useradd of one name fails."""
    import fcntl
    import os

    # read-only is enough for flock, and works on a lock file another user made
    fd = os.open(f"/tmp/skynet-tests-{name}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class Servers:
    """Session-wide registry: `servers.get("s3")` starts the S3 server once."""

    starters: dict[str, Callable[[Any], contextlib.AbstractContextManager]] = {}

    def __init__(self, workdir) -> None:
        self.workdir = workdir
        self._stack = contextlib.ExitStack()
        self._running: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._running:
            starter = self.starters[name]
            self._running[name] = self._stack.enter_context(starter(self.workdir / name))
        return self._running[name]

    def close(self) -> None:
        self._stack.close()


def register(name: str):
    """Decorator: register a context-manager starter for server `name`."""

    def deco(fn):
        Servers.starters[name] = fn
        return fn

    return deco


class Restartable(Protocol):
    """A test server that can be taken away and brought back on the same port with
    the same data (tests/server_s3.py, tests/server_sshd.py)."""

    @property
    def running(self) -> bool: ...

    def stop(self, sig: int = signal.SIGTERM) -> None: ...

    def start(self) -> None: ...


def server_faults(srv: Restartable) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """Outages made by stopping the server process itself, as the torture test
    injects them (name -> (begin, end)): a clean stop (SIGTERM) and a crash
    (SIGKILL), each followed by a new process on the same port and data."""
    return {
        "server stop (TERM)": (lambda: srv.stop(signal.SIGTERM), srv.start),
        "server stop (KILL)": (lambda: srv.stop(signal.SIGKILL), srv.start),
    }


@contextlib.contextmanager
def left_running(srv: Restartable) -> Iterator[Restartable]:
    """Whatever a test did to the server, it is running again afterwards, so a
    test that stops a shared server cannot break the tests after it."""
    try:
        yield srv
    finally:
        if not srv.running:
            srv.start()


def wait_answering(proc: Any, port: int, what: str, hello: bytes, answer: bytes, timeout: float,
                   tail: Callable[[], str]) -> None:
    """Until the server `proc` started answers on 127.0.0.1:`port`: `hello` sent (b""
    for a server that speaks first) and a reply starting with `answer`. RuntimeError
    with `tail()` (its log's end) when it exits or stays silent for `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.settimeout(2)
                if hello:
                    s.sendall(hello)
                if s.recv(len(answer)).startswith(answer):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer on port {port} within {timeout}s:\n{tail()}")


def put_file(root: Any, path: str, data: bytes) -> None:
    """`data` at root/path, written atomically (a server reading it meanwhile sees the
    old bytes or the new, never half): the served folder of the HTTP and FTP servers."""
    import os

    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp-put")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def stop_process(proc: Any, sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """End a server this test setup started (by its Popen): `sig`, then SIGKILL after
    `grace` seconds; nothing when it is not running."""
    import subprocess

    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
