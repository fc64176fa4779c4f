"""The keeper: the one place the engine's remote mutations go through.

skynet/engine/reconcile.py replaces, deletes and moves remote files only
through a Keeper (the start-up scan's deletions are delete actions run there
too). With versions off, or on an S3 bucket whose versioning keeps every
version by itself, the keeper passes each call straight to the connection.
Otherwise (AreaKeeper) it keeps the remote's current version in the versions
area first (names: skynet/versions/names.py; reading: skynet/versions/area.py):

  * a send over a path the Index has: the current file gets a second name in
    the area first, `<path>@S.v` (a hard link on local and SFTP, a server-side
    copy on S3); the send then renames the new file over the old name, so the
    link keeps the old bytes. A kill -9 between the two leaves the current file
    where it was, and a link to it.
  * a delete: each file at or under the path is moved (renamed, on the remote)
    into the area as `<path>@S.d`, then what is left (empty folders) deleted.
    A kill -9 half-way leaves every file either in place or in the area; the
    delete, replayed, moves the rest.
  * a move src -> dest: what dest holds is kept (a file: `.v` by link or copy;
    a folder's files: moved in as `.d`), the rename is done on the remote as
    ONE move (no copies), then the markers `<src>@S.moved` and `<dest>@S.arrived`
    record it. A kill -9 between the rename and the markers (or markers that
    cannot be written) leaves the move unrecorded: the history then shows the
    moved files under the new name only, from their mtime (no bytes lost, and
    never a move that did not happen).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

from connections.contract.source import local_file
from connections.contract.xcon import (
    HardLink,
    PermanentError,
    RemoteNotFound,
    ServerSideCopy,
    ServerSideMove,
    TransferContext,
    Unsupported,
    Versions,
    XCon,
)
from skynet.versions.names import AREA, ARRIVED, DELETED, KEPT, MOVED, Clock, area_name, is_area

log = logging.getLogger(__name__)

MOVE_THREADS = 8  # renames into the area in flight at once (a folder's files)
MOVE_PAGE = 1000  # listed paths held at once


class Keeper:
    """Mutations passed straight to the connection: versions off, or kept by the
    remote itself (S3 versioning)."""

    #: whether sends over a known path must go through replacing() one by one
    active = False

    def __init__(self, con: XCon) -> None:
        self.con = con

    def replacing(self, rel: str, size: int | None = None) -> None:
        """A send is about to replace the remote file `rel` (of `size` bytes, as the Index knows it)."""

    def replacing_many(self, files: list[tuple[str, int | None]]) -> set[str]:
        """replacing() for each (rel, size) of a batch of sends about to go at once;
        the paths whose keep failed (their sends must not go in the batch)."""
        return set()

    def delete(self, rel: str) -> None:
        """XCon.delete, keeping what it removes."""
        self.con.delete(rel)

    def move(self, src: str, dest: str) -> None:
        """XCon.move, keeping what it replaces and recording the move."""
        self.con.move(src, dest)


class AreaKeeper(Keeper):
    """Keeps versions in the versions area under the remote root (see the module)."""

    active = True

    def __init__(self, con: XCon, clock: Clock | None = None) -> None:
        super().__init__(con)
        if not isinstance(con, ServerSideMove):
            raise PermanentError(f"{con.describe()}: versions need a remote that moves files itself")
        self.clock = clock or Clock()
        self._link = isinstance(con, HardLink)

    def replacing(self, rel: str, size: int | None = None) -> None:
        self._guard(rel)
        try:
            self._keep_copy(rel, area_name(rel, self.clock(), KEPT), size)
        except RemoteNotFound:
            pass  # nothing there to keep (the Index knew a file the remote lost)

    def replacing_many(self, files: list[tuple[str, int | None]]) -> set[str]:
        """The keeps of a batch, MOVE_THREADS at a time (one request each: on a far
        server one after the other would cost a round trip per file before the batch)."""
        def one(item: tuple[str, int | None]) -> str | None:
            try:
                self.replacing(*item)
            except Exception as exc:  # the file's send is left to run(), which keeps it again and says why
                log.debug("keeping %r before a batch: %s", item[0], exc)
                return item[0]
            return None

        if len(files) == 1:
            failed = [one(files[0])]
        else:
            with ThreadPoolExecutor(min(MOVE_THREADS, len(files))) as pool:
                failed = list(pool.map(one, files))
        return {rel for rel in failed if rel is not None}

    def delete(self, rel: str) -> None:
        self._guard(rel)
        when = self.clock()
        self._move_files_in(rel, when)
        self.con.delete(rel)  # what is left: empty folders, a temporary file

    def move(self, src: str, dest: str) -> None:
        self._guard(src)
        self._guard(dest)
        when = self.clock()
        if self.con.stat(dest) is not None:
            self._keep_copy(dest, area_name(dest, when, KEPT))
        else:
            self._move_files_in(dest, when)  # a folder the moved one replaces
        self.con.move(src, dest)
        # Recorded once done: a marker of a move that never happened would put the
        # files under the wrong name; a move without its markers only names them by
        # dest a little early.
        try:
            self._write_marker(area_name(src, when, MOVED), dest)
            self._write_marker(area_name(dest, when, ARRIVED), src)
        except Exception as exc:  # the move is done: that is what the mirror needs
            log.warning("move %r -> %r done, but not recorded in %s (%s): the versions of its files show under "
                        "the new name only", src, dest, AREA, exc)

    # -- helpers -----------------------------------------------------------
    @staticmethod
    def _guard(rel: str) -> None:
        """The engine never touches the area (its source side is ignored, its
        listing skipped): a path in it here is a bug, refused."""
        if is_area(rel):
            raise PermanentError(f"{rel!r} is the versions area: not touched by the mirror")

    def _keep_copy(self, rel: str, kept: str, size: int | None = None) -> None:
        """A second name for the current file `rel` in the area, as cheap as the
        remote allows: a hard link, else a server-side copy, else (an SFTP
        server without hard links) a move, leaving `rel` missing until the send
        that follows puts the new version there."""
        if self._link:
            assert isinstance(self.con, HardLink)
            try:
                self.con.link(rel, kept)
                return
            except Unsupported as exc:
                log.warning("%s; versions are kept by %s from now on", exc,
                            "server-side copies" if isinstance(self.con, ServerSideCopy) else "moves")
                self._link = False
        if isinstance(self.con, ServerSideCopy):
            self.con.copy(rel, kept, size=size)
        else:
            self.con.move(rel, kept)

    def _move_files_in(self, rel: str, when: int) -> None:
        """Move the file `rel`, or every file under the folder `rel`, into the area as
        deleted at `when`: each one a rename (S3: copy and delete) on the remote,
        MOVE_THREADS at a time (a folder of many files over a far SFTP server or S3
        would otherwise wait a round trip per file), a page of the listing at a time."""
        def one(f: str) -> None:
            with contextlib.suppress(RemoteNotFound):  # gone meanwhile: nothing to keep
                self.con.move(f, area_name(f, when, DELETED))

        if self.con.stat(rel) is not None:
            one(rel)
            return
        listed = (e.rel for e in self.con.list(rel))
        with ThreadPoolExecutor(MOVE_THREADS) as pool:
            while page := list(itertools.islice(listed, MOVE_PAGE)):
                for _ in pool.map(one, page):  # the first failure raises, after its page is through
                    pass

    def _write_marker(self, name: str, text: str) -> None:
        """A small file in the area (the other end of the move, for people reading it)."""
        with tempfile.TemporaryDirectory(prefix="skynet-marker-") as tmp:
            path = os.path.join(tmp, "m")
            with open(path, "wb") as fh:
                fh.write(os.fsencode(text) + b"\n")
            os.chmod(path, 0o644)
            f = local_file(path, name, os.stat(path))
            self.con.send(f, TransferContext())


class LazyKeeper(Keeper):
    """The keeper of a mapping with versions on, decided at the first mutation:
    the connection may be unreachable when the daemon starts, and whether an
    S3 bucket keeps versions itself is a question to the server."""

    def __init__(self, con: XCon) -> None:
        super().__init__(con)
        self._chosen: Keeper | None = None
        self._lock = threading.Lock()
        self.active = True  # a send over a known path may need a keep: not batched

    def chosen(self) -> Keeper:
        with self._lock:
            if self._chosen is None:
                if remote_keeps_versions(self.con):
                    log.info("%s: versions are the bucket's own (S3 versioning is on)", self.con.describe())
                    self._chosen = Keeper(self.con)
                else:
                    log.info("%s: versions are kept in %s under the target", self.con.describe(), AREA)
                    self._chosen = AreaKeeper(self.con)
            return self._chosen

    def replacing(self, rel: str, size: int | None = None) -> None:
        self.chosen().replacing(rel, size)

    def replacing_many(self, files: list[tuple[str, int | None]]) -> set[str]:
        try:
            keeper = self.chosen()
        except Exception as exc:  # not decided yet (the remote unreachable): each send goes through run()
            log.debug("keeping before a batch: %s", exc)
            return {rel for rel, _size in files}
        return keeper.replacing_many(files)

    def delete(self, rel: str) -> None:
        self.chosen().delete(rel)

    def move(self, src: str, dest: str) -> None:
        self.chosen().move(src, dest)


def remote_keeps_versions(con: XCon) -> bool:
    """The remote keeps every version by itself (an S3 bucket with versioning on):
    then nothing is kept in a versions area, and the store reads the bucket's.
    A remote that will not say (GetBucketVersioning denied) is taken as keeping
    none: the area then keeps them, at worst twice. Unreachable: TransientError."""
    if not isinstance(con, Versions):
        return False
    try:
        return con.versioning_on()
    except PermanentError as exc:
        log.warning("%s: cannot tell whether the bucket keeps versions (%s): keeping them in %s", con.describe(),
                    exc, AREA)
        return False


def keeper_for(con: XCon, versions: bool) -> Keeper:
    """The keeper for a mapping's connection: passing through with versions off."""
    return LazyKeeper(con) if versions else Keeper(con)
