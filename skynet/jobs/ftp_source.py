"""FTP sources of a migration job, read with the standard library's ftplib.

Why ftplib: FTP is a small, finished protocol and ftplib (in the standard
library, maintained with Python) speaks what a migration needs: passive mode,
binary transfers, REST to continue mid-file, SIZE and MDTM for the object's
size and mtime. No dependency is worth adding for it.

Sessions are kept per server and login and reused item after item (a login
costs several round trips); a session is checked out by one worker at a time.
An object's version is its SIZE and MDTM: a resumed attempt continues with
REST only when both are unchanged (skynet/transfer/streams.reopen).
"""
from __future__ import annotations

import calendar
import contextlib
import ftplib
import socket
import threading
import re
import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from connections.contract.xcon import Stream, StreamOpener
from skynet.jobs.item import FORBIDDEN, NOT_FOUND, OTHER, REFUSED, TIMEOUT, ItemFailed

Key = tuple[str, int, str, str]  # host, port, user, password
_PLAIN_URL = re.compile(r"[a-z]+://[a-z0-9.\-]+(:[1-9][0-9]*)?(/[^?#]*)?(\?[^#]+)?\Z")
IDLE_MAX = 8  # sessions kept per server and login


def public_url(url: str) -> str:
    """`url` without its password (for messages and object metadata)."""
    if _PLAIN_URL.match(url):  # no user, a lower-case host: as it is (once per item: urlsplit costs ~10 us)
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username and parts.username != "anonymous" else host
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


class FtpSource:
    """Every ftp:// item of a job, through kept-alive logged-in sessions."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._idle: dict[Key, list[ftplib.FTP]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            sessions = [s for pool in self._idle.values() for s in pool]
            self._idle.clear()
        for s in sessions:
            _drop(s)

    # -- sessions ---------------------------------------------------------------------
    def _key(self, url: str) -> tuple[Key, str]:
        parts = urlsplit(url)
        path = unquote(parts.path).lstrip("/")
        if not parts.hostname or not path:
            raise ItemFailed(OTHER, f"{public_url(url)}: no host or no file in the URL", permanent=True)
        user = unquote(parts.username) if parts.username else "anonymous"
        password = unquote(parts.password) if parts.password else ("anonymous@" if user == "anonymous" else "")
        return (parts.hostname, parts.port or 21, user, password), path

    def _checkout(self, key: Key) -> ftplib.FTP:
        with self._lock:
            pool = self._idle.get(key)
            if pool:
                return pool.pop()
        ftp = ftplib.FTP(timeout=self.timeout)
        ftp.connect(key[0], key[1])
        ftp.login(key[2], key[3])
        ftp.set_pasv(True)
        ftp.voidcmd("TYPE I")
        return ftp

    def _checkin(self, key: Key, ftp: ftplib.FTP) -> None:
        with self._lock:
            pool = self._idle.setdefault(key, [])
            if len(pool) < IDLE_MAX:
                pool.append(ftp)
                return
        _drop(ftp)

    def _session(self, url: str, fn: Callable[[ftplib.FTP, str], object]) -> object:
        """fn(session, path) on a session of `url`'s server; errors classified. A
        session that failed is dropped, one that worked goes back to the pool."""
        key, path = self._key(url)
        ftp = None
        try:
            ftp = self._checkout(key)
            out = fn(ftp, path)
        except ItemFailed:
            if ftp is not None:
                self._checkin(key, ftp)
            raise
        except Exception as exc:
            if ftp is not None:
                _drop(ftp)
            raise classify_ftp(exc, public_url(url)) from exc
        self._checkin(key, ftp)
        return out

    # -- what the job asks --------------------------------------------------------------
    def stat(self, url: str) -> tuple[int | None, int | None]:
        """(size, mtime_ns) by SIZE and MDTM."""
        return self._session(url, lambda ftp, path: (_size(ftp, path, url), _mdtm(ftp, path)))  # type: ignore[return-value]

    def opener(self, url: str) -> StreamOpener:
        return lambda offset: self.open_at(url, offset)

    def open_at(self, url: str, offset: int) -> Stream:
        """RETR from `offset` (REST), or from 0 when the server will not restart there."""
        key, path = self._key(url)
        shown = public_url(url)
        try:
            ftp = self._checkout(key)
        except Exception as exc:
            raise classify_ftp(exc, shown) from exc
        try:
            size, mtime = _size(ftp, path, url), _mdtm(ftp, path)
            start = offset if size is not None and 0 < offset <= size else 0
            try:
                conn = ftp.transfercmd(f"RETR {path}", rest=start or None)
            except ftplib.error_reply:  # REST refused: the whole file
                start = 0
                conn = ftp.transfercmd(f"RETR {path}")
        except Exception as exc:
            _drop(ftp)
            raise classify_ftp(exc, shown) from exc
        return self._stream(key, ftp, conn, shown, start, size, mtime)

    def _stream(self, key: Key, ftp: ftplib.FTP, conn: socket.socket, shown: str, start: int,
                size: int | None, mtime: int | None) -> Stream:
        state = {"pos": start, "eof": False}

        def read(n: int) -> bytes:
            try:
                data = conn.recv(min(n, 1 << 20))
            except Exception as exc:
                raise classify_ftp(exc, shown) from exc
            state["pos"] += len(data)
            if not data:
                state["eof"] = True
            return data

        def close() -> None:
            conn.close()
            if state["eof"]:
                try:
                    ftp.voidresp()  # 226: the session is in step and can serve the next item
                except Exception:
                    _drop(ftp)
                    return
                self._checkin(key, ftp)
            else:
                _drop(ftp)  # abandoned mid-file: a fresh session is cheaper than ABOR's dance

        version = f"{size}:{mtime}" if size is not None and mtime is not None else ""
        return Stream(offset=start, size=size, version=version, read=read, close=close,
                      meta={"source-url": shown}, mtime_ns=mtime)


def _size(ftp: ftplib.FTP, path: str, url: str) -> int | None:
    try:
        return ftp.size(path)
    except ftplib.error_perm as exc:
        if str(exc).startswith("550"):
            raise ItemFailed(NOT_FOUND, f"{public_url(url)}: {exc}", permanent=True, status=550) from None
        return None  # SIZE not supported (500/502): size unknown


def _mdtm(ftp: ftplib.FTP, path: str) -> int | None:
    """MDTM's YYYYMMDDHHMMSS[.fff] (UTC) as nanoseconds; None where the server has no MDTM."""
    try:
        reply = ftp.sendcmd(f"MDTM {path}")
    except ftplib.all_errors:
        return None
    stamp = reply[4:].strip()
    try:
        t = time.strptime(stamp[:14], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return calendar.timegm(t) * 1_000_000_000


def _drop(ftp: ftplib.FTP) -> None:
    with contextlib.suppress(Exception):
        ftp.close()


def classify_ftp(exc: BaseException, shown: str) -> ItemFailed:
    """An ftplib or socket error as the item's error class."""
    if isinstance(exc, ItemFailed):
        return exc
    text = f"{shown}: {exc}"
    code = str(exc)[:3]
    status = int(code) if code.isdigit() else None
    if isinstance(exc, ftplib.error_perm):
        if code == "550":
            return ItemFailed(NOT_FOUND, text, permanent=True, status=status)
        if code in ("530", "532"):
            return ItemFailed(FORBIDDEN, text, permanent=True, status=status)
        return ItemFailed(OTHER, text, permanent=True, status=status)
    if isinstance(exc, ftplib.error_temp):
        cls = REFUSED if code == "421" else OTHER
        return ItemFailed(cls, text, permanent=False, status=status)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ItemFailed(TIMEOUT, text, permanent=False)
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
        return ItemFailed(REFUSED, text, permanent=False)
    return ItemFailed(OTHER, text, permanent=False, status=status)
