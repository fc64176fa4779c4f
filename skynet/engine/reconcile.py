"""Reconciler: what an action does, decided by looking at the disk *now*.

Actions are hints (Syncthing's lesson): by the time one runs, the file may have
changed, vanished, come back or moved again. Each method below makes the remote
match the current disk for the paths the action names, so any order of hints
converges and replaying one after a crash is harmless (idempotent):

* send(p):   p is a file -> upload it unless the Index says the remote already
             has this version; p is a folder -> queue a send for each file under
             it that the remote lacks (on a target with folders: make the folder
             with its mode, and queue a send for each file in it the remote lacks
             and for each folder in it); p is gone -> nothing (its delete hint,
             if any, does the rest) but throw away a partial upload of it.
* delete(p): p is back on disk -> behave like send(p), and queue deletes for
             what the remote holds under p that is not on disk; else delete
             the remote file or folder and forget it in the Index.
* move(s,d): s is back on disk -> send(d), and queue deletes for what left s
             with the move; the remote has s -> rename it on the remote, then
             send whatever in d differs (with complete_sync, and queue deletes
             for what it brought to d that is not on disk); the remote lacks s
             (the "write x.part, rename to x" case) -> send(d).

On a target with folders (Folders), what is in the way of the source (a folder
where it has a file, a file where it has a folder) is removed through the one
delete path (remove_remote) with complete_sync, and the write tried again; without
complete_sync it stays, and the action fails with a message that says so.

This module decides *what* to do; skynet/engine/handler.py decides *when* (ordering,
parallelism, retries) and connections/* decide *how*.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import stat as statmod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from connections.contract.xcon import (
    BatchSend,
    Folders,
    InTheWay,
    LocalFile,
    PermanentError,
    RemoteNotFound,
    ServerSideMove,
    TransferContext,
    TransientError,
    XCon,
)
from connections.contract.source import SourceChanged, kind_of, local_file
from skynet.watch.ignore import IgnoreRules
from skynet.engine.mapper import Mapper
from skynet.state.db import ResumeTable
from skynet.state.index import Index, IndexEntry
from skynet.state.uniqueq import DELETE, LOOK_UP, MOVE, SEND, Action, LookUp, UniqueQ
from skynet.versions.keeper import Keeper

if TYPE_CHECKING:
    from skynet.engine.placement import Lane

log = logging.getLogger(__name__)
T = TypeVar("T")

# How many times one send re-uploads a file that keeps changing under it before
# leaving it to the next event (a file being written continuously).
MAX_CHASE = 3
PROGRESS_MIN_BYTES = 1 << 20
FOLDER_MODE_BITS = 0o777  # a folder's permission bits on the target: never setuid, setgid or sticky


class LocalFileError(PermanentError):
    """The local file cannot be read (permission denied, I/O error)."""


class NotRegular(LocalFileError):
    """The path is a FIFO, a socket or a device: there is nothing to send."""


class SourceUnavailable(TransientError):
    """The mapping's source folder itself is gone (an unmounted disk). Nothing
    may be deleted or moved on the remote until it is back."""


def same_version(a: os.stat_result, b: os.stat_result) -> bool:
    """True if nothing about the file's content changed between two stats."""
    return ((a.st_size, a.st_mtime_ns, a.st_ino, a.st_ctime_ns, a.st_dev)
            == (b.st_size, b.st_mtime_ns, b.st_ino, b.st_ctime_ns, b.st_dev))


def index_matches(entry: IndexEntry | None, st: os.stat_result, mtime_precision_ns: int = 1) -> bool:
    """True if the remote (per the Index) already holds this version of the file.

    Unknown mtime or mode (an entry seeded from a remote listing) does not
    match by itself: the start-up scan checks those with a content hash.
    An entry skynet wrote after a send holds the local file's own mtime (and
    inode): it is compared to the nanosecond, else a rewrite of the same size
    in the same second would never reach a whole-second remote (SFTP). Only an
    entry seeded from a remote listing (no inode) is compared at the remote's
    `mtime_precision_ns`.
    """
    if entry is None or entry.size != st.st_size or entry.mtime_ns is None:
        return False
    p = max(1, mtime_precision_ns) if entry.ino is None else 1
    if entry.mtime_ns // p != st.st_mtime_ns // p:
        return False
    return entry.mode is None or entry.mode == statmod.S_IMODE(st.st_mode)


def is_special(entry: os.DirEntry, follow_symlinks: bool) -> bool:
    """A listed entry that is neither a folder nor a regular file nor a link left
    alone (a FIFO, socket, device; with follow_symlinks, a link to one). The
    walks queue a send for it, which records why it is not sent: such a file is
    never opened, nor skipped in silence. Costs no system call where the listing
    gives the type (d_type), but for links when they are followed."""
    if entry.is_dir(follow_symlinks=follow_symlinks) or entry.is_file(follow_symlinks=follow_symlinks):
        return False
    if not entry.is_symlink():
        return True
    if not follow_symlinks:
        return False  # a link left alone: logged when an event names it
    try:
        entry.stat()  # a dangling link has nothing to send or to record
    except OSError:
        return False
    return True


@dataclass
class Outcome:
    """What an action did, for logs, notifications and tests."""

    uploaded: int = 0
    bytes_sent: int = 0
    deleted: int = 0
    moved: int = 0
    queued: int = 0
    folders_made: int = 0  # on a target with folders
    #: Index rows to write together with the action's completion, in the
    #: handler's one transaction per finished action
    index_rows: list[tuple] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        mapper: Mapper,
        con: XCon,
        index: Index,
        queue: UniqueQ,
        resume: ResumeTable,
        ignore: IgnoreRules,
        follow_symlinks: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
        throttle: Callable[[int], None] | None = None,
        complete_sync: bool = False,
        keeper: Keeper | None = None,
        placement: "Lane | None" = None,
    ) -> None:
        self.mapper = mapper
        # A lane of a mapping with placement = most-free: which files are this lane's
        # (skynet/engine/placement.py); None: every file is.
        self.placement = placement
        self.con = con
        # Every replace, delete and move of a remote file goes through it (versions).
        self.keeper = keeper or Keeper(con)
        self.index = index
        self.queue = queue
        self.resume = resume
        self.ignore = ignore
        self.follow_symlinks = follow_symlinks
        self.progress = progress
        self.throttle = throttle
        self.complete_sync = complete_sync  # deletes are propagated: a move may queue some
        # (st_dev, st_ino) of the source folder when it was last seen with files
        self.source_id: tuple[int, int] | None = None

    # -- entry point -------------------------------------------------------
    def run(self, action: Action, ctx_stop=None) -> Outcome:
        out = Outcome()
        if action.kind == SEND:
            self.sync_path(action.src, out, ctx_stop, action.entry)
        elif action.kind == DELETE:
            self.delete(action.src, out, ctx_stop)
        elif action.kind == MOVE:
            self.move(action.src, action.dest, out, ctx_stop)
        else:  # pragma: no cover - the queue only holds the three kinds
            raise PermanentError(f"unknown action kind {action.kind!r}")
        return out

    def batch_ok(self) -> bool:
        """Can the handler give this reconciler several sends at once (run_many)?
        Not under a bandwidth limit: a batch's bytes are not metered."""
        return isinstance(self.con, BatchSend) and self.throttle is None

    def run_many(self, actions: list[Action], stop) -> list[Outcome | Exception]:
        """run() for a batch: the plain case (a small regular file the remote
        lacks) goes to the connection's send_many in one call; everything else,
        and any file that failed or changed on the way, takes run()'s path.
        One result per action, in order: its Outcome or the exception run()
        would have raised."""
        results: list[Outcome | Exception | None] = [None] * len(actions)
        todo: list[tuple[int, LocalFile, os.stat_result]] = []
        keeps: dict[str, int | None] = {}  # rel -> the size of the remote version to keep before the batch
        for i, a in enumerate(actions):
            try:
                prepared = self._plain_send(a) if a.kind == SEND else None
            except Exception as exc:
                results[i] = exc
                continue
            if isinstance(prepared, Outcome):
                results[i] = prepared
            elif prepared is not None:
                f, st, keep = prepared
                todo.append((i, f, st))
                if keep is not None:
                    keeps[f.rel] = keep.size
        if keeps:
            # each version kept before the batch replaces it; a file whose keep failed is left to run()
            failed = self.keeper.replacing_many(list(keeps.items()))
            todo = [t for t in todo if t[1].rel not in failed]
        if todo:
            assert isinstance(self.con, BatchSend)  # (batch_ok)
            sent = self.con.send_many([f for _, f, _ in todo], stop)
            for (i, f, st), res in zip(todo, sent):
                if isinstance(res, Exception):
                    continue  # run() tries again and classifies what happens
                after = self._lstat(f.rel, f.path)
                if after is None or same_version(st, after):  # as in send_file
                    out = Outcome(uploaded=1, bytes_sent=res.bytes_sent)
                    out.index_rows.append((f.rel, res.size, f.mtime_ns, f.mode, f.ino, res.etag))
                    results[i] = out
        for i, a in enumerate(actions):
            if results[i] is None:
                try:
                    results[i] = self.run(dataclasses.replace(a, entry=LOOK_UP), stop)
                except Exception as exc:
                    results[i] = exc
        return results  # type: ignore[return-value]  (every slot is filled)

    def _plain_send(self, a: Action) -> Outcome | tuple[LocalFile, os.stat_result, IndexEntry | None] | None:
        """For a `send` in a batch: an Outcome if nothing is to be done (the
        remote has this version), the file to send if it is the plain case (and
        the Index entry of the remote version the keeper keeps first, if it must),
        None to leave it to run()."""
        rel = a.src
        path = self.mapper.local(rel)
        st = self._lstat(rel, path)
        if st is None or not statmod.S_ISREG(st.st_mode) or st.st_size >= PROGRESS_MIN_BYTES:
            return None
        if self.ignore.ignored(rel):
            return Outcome()
        entry = self._entry(rel, a.entry)
        if self.placement is not None and not self.placement.owns(rel, st.st_size, entry is not None):
            return None  # another lane's file: run() takes a copy of it off this one
        if index_matches(entry, st, self.con.abilities.mtime_precision_ns):
            return Outcome()
        if not self.con.abilities.byte_names and not Mapper.is_utf8(rel):
            return None
        return self._local_file(path, rel, st), st, entry if entry is not None and self.keeper.active else None

    def _entry(self, rel: str, known: IndexEntry | None | LookUp) -> IndexEntry | None:
        """`rel`'s Index entry: the one the action was claimed with, else a query."""
        return self.index.get(rel) if known is LOOK_UP else known

    # -- helpers -----------------------------------------------------------
    def _local_file(self, path: str, rel: str, st: os.stat_result) -> LocalFile:
        """The version of `rel` that `st` saw, as a connection is given it: the
        connection opens it beneath the source folder and checks it is still
        this file (connections/contract/source.py)."""
        return local_file(path, rel, st, self.mapper.source, self.follow_symlinks)

    def check_source(self) -> None:
        """Raise SourceUnavailable unless the source folder is there, and is the
        same folder as before. An unmounted disk leaves an empty mount point
        behind: same path, but another device/inode, and no files. That must
        never read as "the user deleted everything" (Syncthing guards the same
        way with its folder marker)."""
        try:
            st = os.stat(self.mapper.source)
        except OSError:
            raise SourceUnavailable(f"source folder {self.mapper.source!r} is not there (unmounted?)") from None
        if not statmod.S_ISDIR(st.st_mode):
            raise SourceUnavailable(f"source {self.mapper.source!r} is not a folder any more")
        if self.source_id is not None and (st.st_dev, st.st_ino) != self.source_id:
            try:
                empty = not os.listdir(self.mapper.source)
            except OSError:
                empty = True
            if empty:
                raise SourceUnavailable(
                    f"source folder {self.mapper.source!r} is empty and is not the folder skynet synced before "
                    "(an unmounted disk?)")

    def _lstat(self, rel: str, path: str | None = None) -> os.stat_result | None:
        """`rel`'s stat (lstat unless following links), None if it is gone;
        `path` is its local path when the caller has it already."""
        path = path or self.mapper.local(rel)
        try:
            if self.follow_symlinks:
                return os.stat(path)
            return os.lstat(path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as exc:
            raise LocalFileError(f"cannot stat {rel!r}: {exc.strerror}") from exc

    def discard_partial(self, rel: str, under: bool = False) -> None:
        """`rel` will not be sent (gone, deleted, moved away, not a file any more):
        have the connection remove what unfinished uploads of it (and, with
        `under`, of every path below it) left on the remote, then forget their
        resume states. Otherwise a partial upload whose file went while skynet was
        down stays for ever: start-up cleanup keeps what a resume state names.
        Usually this costs one indexed lookup and nothing on the remote."""
        states = self.resume.at_or_under(rel) if under else [(rel, s) for s in [self.resume.load(rel)] if s]
        if states:
            self.check_source()  # an unmounted source is no reason to lose resumable uploads
        for path, state in states:
            self.con.discard(path, state)
            self.resume.clear(path)
        if rel not in dict(states):
            self.con.discard(rel, None)  # a temp file a failed attempt could not remove

    def sync_path(self, rel: str, out: Outcome, ctx_stop=None, known: IndexEntry | None | LookUp = LOOK_UP) -> None:
        """Make the remote match whatever `rel` is on disk now (file or folder).
        `known`: `rel`'s Index entry if the caller has read it (Action.entry)."""
        path = self.mapper.local(rel)
        st = self._lstat(rel, path)
        if st is None:
            self.discard_partial(rel, under=True)
            return
        if not statmod.S_ISREG(st.st_mode):
            self.discard_partial(rel)  # it was a file with an upload under way, maybe
        self.drop_other_kind(rel, st, out)
        if statmod.S_ISDIR(st.st_mode):
            if self.ignore.ignored(rel, is_dir=True):
                return
            if isinstance(self.con, Folders):
                # One level per action: the folders in it are actions of their own, so
                # a scan that queues every new folder does not walk each subtree again.
                # Made first: what it holds cannot go where the folder cannot be.
                self.make_folder(rel, st, out)
                out.queued += self.queue.put_many(self.pending_sends(rel, deep=False))
            else:
                out.queued += self.queue.put_many(self.pending_sends(rel))
        elif statmod.S_ISREG(st.st_mode):
            if not self.ignore.ignored(rel) and self.placed_here(rel, st, out, known):
                self.send_file(rel, st, out, ctx_stop, path, known)
        elif statmod.S_ISLNK(st.st_mode):
            log.info("skipping symbolic link %r (set follow_symlinks = yes to copy its target)", rel)
        else:
            # A FIFO, socket or device: never opened (a FIFO would block a worker),
            # but recorded as failed with the reason, not skipped in silence.
            raise NotRegular(f"not sent: {rel!r} is a {kind_of(st.st_mode)}; only regular files are synced")

    def drop_other_kind(self, rel: str, st: os.stat_result, out: Outcome) -> None:
        """With complete_sync, on a remote without folders (S3): the remote's copy of
        `rel` as the other kind goes before `rel` is sent as what it is now -- the
        file `a` when `a` became a folder, every `a/...` when it became a file.
        There nothing is in the way (`a` and `a/x` are two keys), so make_way never
        runs and the old kind stayed for ever. Remotes with folders refuse the write
        (InTheWay) and make_way removes the blocker."""
        if not self.complete_sync or isinstance(self.con, Folders):
            return
        if statmod.S_ISDIR(st.st_mode):
            stale = self.index.get(rel) is not None
        else:
            stale = statmod.S_ISREG(st.st_mode) and self.index.has_under(rel)
        if stale:
            log.info("complete_sync: %r is a %s now; removing the remote's %s", rel,
                     *(("folder", "file") if statmod.S_ISDIR(st.st_mode) else ("file", "folder")))
            self.remove_remote(rel, out)

    def placed_here(self, rel: str, st: os.stat_result, out: Outcome,
                    known: IndexEntry | None | LookUp = LOOK_UP) -> bool:
        """Is file `rel` this lane's to hold (always, but with placement = most-free)?
        If not and the lane holds a copy (a move left it, or the file was placed
        elsewhere meanwhile), the copy goes: the file lives on another destination."""
        if self.placement is None:
            return True
        entry = self._entry(rel, known)
        if self.placement.owns(rel, st.st_size, entry is not None):
            return True
        if entry is not None:
            log.info("%r is placed on another destination; removing this one's copy", rel)
            self.remove_remote(rel, out)
        return False

    def pending_sends(self, top: str, deep: bool = True) -> Iterator[tuple[str, str, str]]:
        """`send` actions for every file under folder `top` that the remote lacks;
        not `deep`: for the files in `top` the remote lacks and for every folder
        in it (each folder's own send makes it and goes on below it).

        Streams: one folder listing in memory at a time.
        """
        stack = [top]
        while stack:
            rel_dir = stack.pop()
            try:
                it = os.scandir(self.mapper.local(rel_dir))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                if rel_dir == top:  # the folder the action names: its failure, with the reason
                    raise LocalFileError(f"cannot list folder {rel_dir!r}: {exc.strerror}") from exc
                log.error("cannot list folder %r: %s", rel_dir, exc.strerror)
                continue
            with it:
                for entry in it:
                    rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                    try:
                        if entry.is_dir(follow_symlinks=self.follow_symlinks):
                            if self.ignore.ignored(rel, is_dir=True):
                                continue
                            if deep:
                                stack.append(rel)
                            else:
                                yield (SEND, rel, "")
                            continue
                        if not entry.is_file(follow_symlinks=self.follow_symlinks):
                            if is_special(entry, self.follow_symlinks) and not self.ignore.ignored(rel):
                                yield (SEND, rel, "")  # recorded as not sent, with the reason
                            continue
                        if self.ignore.ignored(rel):
                            continue
                        st = entry.stat(follow_symlinks=self.follow_symlinks)
                    except OSError:
                        continue
                    if not index_matches(self.index.get(rel), st, self.con.abilities.mtime_precision_ns):
                        yield (SEND, rel, "")

    def gone_under(self, top: str, and_top: bool = False) -> Iterator[tuple[str, str, str]]:
        """`delete` hints for the files and recorded folders the remote holds below
        folder `top` (and, with `and_top`, at `top` itself) that are no longer on
        disk (each hint looks at the disk again when it runs)."""
        held = self.index.get(top) is not None or self.index.folder(top) is not None
        if and_top and held and self._lstat(top) is None:
            yield (DELETE, top, "")
        for rel in self.index.paths_under(top):
            if self._lstat(rel) is None:
                yield (DELETE, rel, "")
        for folder in self.index.iter_folders_under(top):
            if self._lstat(folder.rel) is None:
                yield (DELETE, folder.rel, "")

    def _put_hints(self, specs: Iterator[tuple[str, str, str]], out: Outcome) -> None:
        """Queue hints a thousand at a time (memory stays flat for huge folders)."""
        while batch := list(itertools.islice(specs, 1000)):
            out.queued += self.queue.put_many(batch)

    # -- folders and what is in their way ------------------------------------
    def make_folder(self, rel: str, st: os.stat_result, out: Outcome) -> None:
        """Make the folder `rel` on a target with folders, with the permission bits
        `st` has (never the special ones), and record it: empty folders are part
        of the mirror there, and the start-up scan tells the folders the mirror
        holds from those it never made."""
        con = self.con
        assert isinstance(con, Folders)  # (sync_path asks)
        if not con.abilities.byte_names and not Mapper.is_utf8(rel):
            raise PermanentError(f"name {rel!r} is not valid UTF-8 and {con.service} cannot store it")
        mode = statmod.S_IMODE(st.st_mode) & FOLDER_MODE_BITS
        self.through(rel, lambda: con.make_folder(rel, mode), out)
        self.index.put_folder(rel, mode)
        out.folders_made += 1

    def through(self, rel: str, op: Callable[[], T], out: Outcome) -> T:
        """op(), a write at `rel` on the remote; whatever it finds in its way (InTheWay)
        removed by make_way and op() tried again, once per level of `rel` at most."""
        for _ in range(rel.count("/") + 1):
            try:
                return op()
            except InTheWay as exc:
                self.make_way(rel, exc, out)
        return op()

    def make_way(self, rel: str, exc: InTheWay, out: Outcome) -> None:
        """Something of the other kind is on the remote where the source has `rel`
        (a folder where it has a file, a file at `rel` or above it where it has a
        folder). With complete_sync it goes, through the one delete path, as any
        remote thing the source lacks would; without, it stays and `exc` says so."""
        blocker = exc.blocker
        if not self.complete_sync:
            raise InTheWay(f"{exc}; complete_sync is off, so skynet leaves {blocker!r} there (tried again when "
                           f"{rel!r} changes here, at the next start, and with --retry-failed)", blocker) from exc
        if blocker != rel and not rel.startswith(blocker + "/"):
            raise exc  # not on the way to `rel`: nothing skynet may remove for it
        self.check_source()
        log.info("%s; complete_sync: removing %r from the remote to make way for %r", exc, blocker, rel)
        self.remove_remote(blocker, out)

    # -- send --------------------------------------------------------------
    def send_file(self, rel: str, st: os.stat_result, out: Outcome, ctx_stop=None, path: str | None = None,
                  known: IndexEntry | None | LookUp = LOOK_UP) -> None:
        abilities = self.con.abilities
        entry = self._entry(rel, known)
        if index_matches(entry, st, abilities.mtime_precision_ns):
            return
        if not abilities.byte_names and not Mapper.is_utf8(rel):
            raise PermanentError(f"name {rel!r} is not valid UTF-8 and {self.con.service} cannot store it")
        path = path or self.mapper.local(rel)
        if entry is not None:
            self.keeper.replacing(rel, entry.size)  # the remote's version, before the send replaces it
        for _ in range(MAX_CHASE):
            f = self._local_file(path, rel, st)
            kw = {"stop": ctx_stop} if ctx_stop is not None else {}  # (no Event built per file)
            # Progress is worth reporting for large files only (a small one is
            # done before anybody could look at it).
            report = self.progress is not None and st.st_size >= PROGRESS_MIN_BYTES
            ctx = TransferContext(
                progress=(lambda d, t, r=rel: self.progress(r, d, t)) if report else None,
                resume=self.resume.store(rel),
                throttle=self.throttle,
                **kw,
            )
            ctx.begin(f.size)  # the bandwidth limit: the first piece's budget is taken before it goes
            try:
                res = self.through(rel, lambda: self.con.send(f, ctx), out)
            except FileNotFoundError:
                log.info("%r vanished before it could be sent", rel)
                self.discard_partial(rel)
                return
            except SourceChanged as exc:  # replaced since the lstat: look again
                log.info("%s", exc)
                after = self._lstat(rel, path)
                if after is None or not statmod.S_ISREG(after.st_mode):
                    self.sync_path(rel, out, ctx_stop)
                    return
                st = after
                continue
            except PermissionError as exc:
                raise LocalFileError(f"cannot read {rel!r}: {exc.strerror}") from exc
            except IsADirectoryError:
                self.sync_path(rel, out, ctx_stop)  # became a folder meanwhile
                return
            except OSError as exc:  # local read error (EIO...): not the remote's fault
                raise LocalFileError(f"cannot read {rel!r}: {exc.strerror or exc}") from exc
            out.uploaded += 1
            out.bytes_sent += res.bytes_sent
            after = self._lstat(rel, path)
            if after is None:
                # Sent, then deleted: the remote has the last version; the
                # delete hint (with complete_sync) removes it.
                out.index_rows.append((rel, res.size, f.mtime_ns, f.mode, f.ino, res.etag))
                return
            if same_version(st, after):
                out.index_rows.append((rel, res.size, f.mtime_ns, f.mode, f.ino, res.etag))
                return
            if not statmod.S_ISREG(after.st_mode):
                self.sync_path(rel, out, ctx_stop)
                return
            log.debug("%r changed while it was sent; sending again", rel)
            st = after
        # Still being written: the writer's own events will bring it back.
        self.queue.put(SEND, rel)

    # -- delete ------------------------------------------------------------
    def delete(self, rel: str, out: Outcome, ctx_stop=None) -> None:
        self.check_source()  # a vanished mount looks like everything deleted
        if self._lstat(rel) is not None:
            # It is back: converge on what is there. A folder made again (or one
            # moved out of the root, whose only event is this hint, and another
            # moved in) may lack files the remote still holds under it.
            self.sync_path(rel, out, ctx_stop)
            self._put_hints(self.gone_under(rel), out)
            return
        if self.ignore.ignored_path(rel) and self.index.get(rel) is None and not self.index.has_under(rel):
            return
        if self.placement is not None and not self.holds(rel):
            return  # with placement = most-free a file is on one destination: the others hold nothing
        if not self.holds(rel) and self._beneath_a_file(rel):
            # Its folder is a file now, whose send removed what the remote held under it
            # (drop_other_kind): a store backed by a file system (rclone serve s3) takes a
            # delete of `a/x` then for one of the folder `a`, and removes the new file `a`.
            return
        self.remove_remote(rel, out)

    def _beneath_a_file(self, rel: str) -> bool:
        """A folder on the way to `rel` is something else (a file) on disk now."""
        try:
            os.lstat(self.mapper.local(rel))
        except NotADirectoryError:
            return True
        except OSError:
            return False
        return False

    def holds(self, rel: str) -> bool:
        """The remote holds `rel`, or something under it, as the Index says."""
        return self.index.get(rel) is not None or self.index.has_under(rel) or self.index.folder(rel) is not None

    def remove_remote(self, rel: str, out: Outcome) -> None:
        """The one way a remote file or folder (with what is under it) is removed:
        a delete, and what is in the way of the source with complete_sync. Through
        the keeper, so with versions on what goes is kept."""
        self.keeper.delete(rel)
        self.index.remove(rel)
        self.discard_partial(rel, under=True)
        out.deleted += 1

    # -- move --------------------------------------------------------------
    def move(self, src: str, dest: str, out: Outcome, ctx_stop=None) -> None:
        self.check_source()
        if self._lstat(src) is not None:
            # The source is there again: the move is a copy now. src keeps its
            # remote copy; its own events handle any change to it. But what
            # left src with the move (a folder moved away, then made again)
            # has no event of its own to take it off the remote.
            self.sync_path(dest, out, ctx_stop)
            self._put_hints(self.gone_under(src), out)
            return
        if self.placement is not None:
            self.placement.moved(src, dest)  # where each file is follows it (the first lane to run the move)
        # Before the move: a folder rename on the remote would carry temp files along.
        self.discard_partial(src, under=True)
        on_remote = self.holds(src)
        if on_remote and isinstance(self.con, ServerSideMove):
            try:
                self.through(dest, lambda: self.keeper.move(src, dest), out)
                self.index.rename(src, dest)
                out.moved += 1
                if self.complete_sync:
                    # A move replayed after a restart may bring to dest what was
                    # deleted there while skynet was down: the start-up scan
                    # could only delete it under its old name.
                    self._put_hints(self.gone_under(dest, and_top=True), out)
            except RemoteNotFound:
                log.info("move source %r was not on the remote; sending %r instead", src, dest)
                self.index.remove(src)
        elif on_remote:
            # No server-side move: upload the destination, then drop the source.
            self.sync_path(dest, out, ctx_stop)
            self.keeper.delete(src)
            self.index.remove(src)
            return
        self.sync_path(dest, out, ctx_stop)
