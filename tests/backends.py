"""Factories that build a connected XCon on a fresh, empty remote root.

The contract suite (test_xcon_contract.py) and the end-to-end tests are
parametrised over BACKENDS, so adding a connection here subjects it to every
shared test. Each factory is a context manager taking the test's tmp_path and
the session's servers (see tests/servers.py) and yielding a `Backend`.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator

import pytest

from connections.contract.xcon import XCon
from connections.local.con import LocalCon
from tests.harness import folders, retrying_read, tree


@dataclass
class Backend:
    """A connection under test plus what the tests need to know about it."""

    con: XCon
    #: the [mapping] / service config lines an end-to-end test writes for it
    config: dict[str, dict[str, str]] = field(default_factory=dict)
    #: names of temporary/partial uploads left on the remote (must be empty)
    leftovers: Callable[[], list[str]] = lambda: []
    #: the remote's files as {relative path bytes: content}, for convergence checks
    fetch: Callable[[], dict[bytes, bytes]] = lambda: {}
    service: str = "local"
    #: outages the torture test can inject: name -> (begin, end) callables
    faults: dict[str, tuple[Callable[[], None], Callable[[], None]]] = field(default_factory=dict)
    #: the test server's state and log tail, for the report of a read that failed
    diagnose: Callable[[], str] | None = None
    #: the transient errors the harness's reads of the remote retried (a report)
    read_retries: list[str] = field(default_factory=list)
    #: put {relative path: content} straight into the remote store, around the connection
    #: under test (plain files where the server keeps them so, else the server's own API):
    #: seeds the 10,000-key listings cheaply
    seed: Callable[[dict[str, bytes]], None] = lambda files: None
    #: turn the remote's versioning on (None: the test server has none)
    enable_versioning: Callable[[], None] | None = None
    #: the remote's folders as {relative path bytes: permission bits}, on a target with
    #: folders (connections.contract.xcon.Folders; None: folders are not part of the mirror)
    fetch_folders: Callable[[], dict[bytes, int]] | None = None

    def __post_init__(self) -> None:
        """The harness's own reads of the remote (fetch, leftovers) retry transient
        errors, for every backend alike: a test server that was just restarted, or
        dropped a connection, is not a failure of the daemon under test (see
        tests.harness.retrying_read). The connection under test (`con`) is left as it
        is: its errors are what the tests are about."""
        self.fetch = retrying_read(self.fetch, f"{self.service} fetch", self.diagnose, on_retry=self._retried)
        self.leftovers = retrying_read(self.leftovers, f"{self.service} leftovers", self.diagnose,
                                       on_retry=self._retried)
        if self.fetch_folders is not None:
            self.fetch_folders = retrying_read(self.fetch_folders, f"{self.service} folders", self.diagnose,
                                               on_retry=self._retried)

    def _retried(self, exc: BaseException) -> None:
        self.read_retries.append(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def local_backend(tmp_path, servers) -> Iterator[Backend]:
    root = tmp_path / "remote"
    root.mkdir()
    con = LocalCon(str(root))
    con.connect()
    away = tmp_path / "remote.unmounted"
    # An unmounted share: the target folder is simply not there for a while.
    unmount = (lambda: os.rename(root, away), lambda: os.rename(away, root))
    try:
        yield Backend(
            con=con,
            config={"mapping": {"target": str(root)}},
            leftovers=con.leftovers,
            fetch=lambda: tree(root),
            fetch_folders=lambda: folders(root),
            service="local",
            faults={"target unmounted": unmount},
            seed=lambda files: write_tree(root, files),
            diagnose=lambda: f"local target {root}: {'present' if root.exists() else 'ABSENT (unmounted)'}",
        )
    finally:
        con.close()


def write_tree(root, files: dict[str, bytes]) -> None:
    """Write {relative path: content} as plain files under the folder `root`, owned
    by root's owner (the sshd test server logs in as another user than the tests')."""
    st = os.stat(root)
    made: set[str] = set()
    for rel, data in files.items():
        path = os.path.join(root, rel)
        folder = os.path.dirname(path)
        while folder not in made and os.path.normpath(folder) != os.path.normpath(root):
            os.makedirs(folder, exist_ok=True)
            os.chown(folder, st.st_uid, st.st_gid)
            made.add(folder)
            folder = os.path.dirname(folder)
        with open(path, "wb") as fh:
            fh.write(data)
        os.chown(path, st.st_uid, st.st_gid)


BackendFactory = Callable[..., ContextManager[Backend]]

from tests.backend_s3 import s3_backend, seaweedfs_backend  # noqa: E402  (they import this module lazily)
from tests.backend_sftp import sftp_backend  # noqa: E402

BACKENDS: dict[str, BackendFactory] = {
    "local": local_backend, "s3": s3_backend, "sftp": sftp_backend, "seaweedfs": seaweedfs_backend,
}


def register(name: str, factory: BackendFactory) -> None:
    BACKENDS[name] = factory


def enabled_backends() -> list[str]:
    """Backends to run: all, or those listed in SKYNET_TEST_BACKENDS."""
    wanted = os.environ.get("SKYNET_TEST_BACKENDS")
    names = list(BACKENDS)
    if wanted:
        names = [n for n in names if n in wanted.split(",")]
    return names


#: Backends that run a connection another backend already runs, on a second server
#: (S3Con on SeaweedFS beside rclone serve s3). They catch what one server lets pass
#: (SeaweedFS checks x-amz-checksum-* too, keeps multipart uploads across a restart,
#: really copies parts), but repeat the same code paths: so the default suite gives them
#: the contract suite and the lighter end-to-end scenarios, and leaves their runs of
#: heavy tests to `-m slow` (the default suite must stay under 15 minutes on 2 cores).
SECOND_SERVERS = frozenset({"seaweedfs"})


def backend_marks(name: str, heavy: bool) -> list[pytest.MarkDecorator]:
    """The marks of backend `name`'s run of a test: `slow` for a heavy test on a second server."""
    return [pytest.mark.slow] if heavy and name in SECOND_SERVERS else []


def backend_params(heavy: bool = False) -> list:
    """enabled_backends() as pytest params (id: the name), `heavy` ones marked by backend_marks()."""
    return [pytest.param(n, id=n, marks=backend_marks(n, heavy)) for n in enabled_backends()]
