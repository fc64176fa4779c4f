"""HTTP and HTTPS sources of a migration job, read with urllib3.

Why urllib3 (2.x, already here as botocore's dependency): one PoolManager
shared by every worker keeps connections alive per host (10,000 small URLs
from one server cost 10,000 requests, not 10,000 TCP handshakes), follows
redirects, has separate connect and read timeouts, enforces Content-Length
(a body cut short is an error, never a short object), and streams the body
(preload_content=False) so a large object never sits in memory.

A Stream is opened at an offset with `Range: bytes=N-` and `If-Range` naming
the version an earlier attempt saw (its strong ETag, else its Last-Modified):
a server that ignores Range, or whose object changed, answers 200 with the
whole object, and the target starts over (skynet/transfer/streams.reopen).
"""
from __future__ import annotations

import email.utils
import re
import threading
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError

from urllib.parse import unquote, urlsplit

from connections.contract.xcon import Stream
from skynet.jobs.ftp_source import public_url
from skynet.jobs.item import FORBIDDEN, NOT_FOUND, OTHER, REFUSED, TIMEOUT, ItemFailed

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
USER_AGENT = "skynet-job/1"


class HttpSource:
    """Every HTTP(S) item of a job, through one pool of kept-alive connections."""

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 30.0, workers: int = 16,
                 max_redirects: int = 10, ca_certs: str | None = None) -> None:
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        # No retries here: the job runner retries an item on its own schedule.
        self.retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=max_redirects,
                                     raise_on_redirect=True, raise_on_status=False)
        kw: dict[str, Any] = {"ca_certs": ca_certs} if ca_certs else {}
        self.pool = urllib3.PoolManager(num_pools=64, maxsize=max(1, workers), block=False,
                                        headers={"User-Agent": USER_AGENT}, **kw)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.pool.clear()

    def head(self, url: str) -> tuple[int | None, int | None]:
        """(size, mtime_ns) of `url` by a HEAD, (None, None) when the server will not
        say (an item already at the target is then compared by what it can)."""
        resp = self._request("HEAD", url, _auth(url))
        try:
            if resp.status != 200:
                raise_for_status(resp.status, url)
            return _int(resp.headers.get("Content-Length")), _http_time(resp.headers.get("Last-Modified"))
        finally:
            resp.release_conn()

    def open_at(self, url: str, offset: int, if_range: str | None) -> Stream:
        """The object at `url` from `offset` on (a 206), or whole (a 200: the server
        ignored the range, or the object is not the version `if_range` names)."""
        headers = {"Accept-Encoding": "identity", **_auth(url)}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if if_range:
                headers["If-Range"] = if_range
        resp = self._request("GET", url, headers)
        status = resp.status
        if status == 416 and offset > 0:  # asked past the end: it changed; start over
            resp.release_conn()
            return self.open_at(url, 0, None)
        if status not in (200, 206):
            resp.drain_conn()
            resp.release_conn()
            raise_for_status(status, url)
        start, size = 0, _int(resp.headers.get("Content-Length"))
        if status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if not m:
                resp.close()
                raise ItemFailed(OTHER, f"{public_url(url)}: 206 without a usable Content-Range", permanent=False, status=206)
            start, size = int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))
        return _stream(resp, url, start, size)

    def _request(self, method: str, url: str, headers: dict[str, str]) -> Any:
        try:
            return self.pool.request(method, url, headers=headers, preload_content=False, decode_content=False,
                                     redirect=True, retries=self.retries, timeout=self.timeout)
        except HTTPError as exc:
            raise classify_urllib3(exc, url) from exc


def _stream(resp: Any, url: str, start: int, size: int | None) -> Stream:
    """A Stream over a response body; closing it returns a fully read connection
    to the pool (keep-alive) and drops one abandoned mid-body."""
    etag = resp.headers.get("ETag")
    modified = resp.headers.get("Last-Modified")
    version = etag if etag and not etag.startswith("W/") else (modified or "")
    meta = {"source-url": public_url(url)}
    if etag:
        meta["source-etag"] = etag
    if modified:
        meta["source-last-modified"] = modified
    left = [None if size is None else size - start]

    def read(n: int) -> bytes:
        try:
            data = resp.read(n)
        except HTTPError as exc:
            raise classify_urllib3(exc, url) from exc
        if left[0] is not None:
            left[0] -= len(data)
        return data

    def close() -> None:
        if left[0] != 0:
            resp.close()  # abandoned mid-body: the connection cannot be reused
        resp.release_conn()

    return Stream(offset=start, size=size, version=version, read=read, close=close, meta=meta,
                  mtime_ns=_http_time(modified))


def _auth(url: str) -> dict[str, str]:
    """Basic authentication from the URL's user:password, which urllib3 does not send by itself."""
    parts = urlsplit(url)
    if parts.username is None:
        return {}
    return urllib3.util.make_headers(basic_auth=f"{unquote(parts.username)}:{unquote(parts.password or '')}")


def raise_for_status(status: int, url: str) -> None:
    """An HTTP status that is not the object, as the item's error class."""
    if status in (404, 410):
        raise ItemFailed(NOT_FOUND, f"{public_url(url)}: HTTP {status}", permanent=True, status=status)
    if status in (401, 403):
        raise ItemFailed(FORBIDDEN, f"{public_url(url)}: HTTP {status}", permanent=True, status=status)
    if status in (408, 504):
        raise ItemFailed(TIMEOUT, f"{public_url(url)}: HTTP {status}", permanent=False, status=status)
    if status in (429, 503):
        raise ItemFailed(REFUSED, f"{public_url(url)}: HTTP {status}", permanent=False, status=status)
    permanent = 300 <= status < 500  # a redirect loop, 400, 405...: asking again gets the same answer
    raise ItemFailed(OTHER, f"{public_url(url)}: HTTP {status}", permanent=permanent, status=status)


def classify_urllib3(exc: Exception, url: str) -> ItemFailed:
    """A urllib3 error as the item's error class (all transient but too many redirects)."""
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    reason = reason or exc
    text = f"{public_url(url)}: {reason}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(reason, urllib3.exceptions.ResponseError):
        return ItemFailed(OTHER, f"{public_url(url)}: too many redirects", permanent=True)
    # (NewConnectionError first: urllib3 2.x makes it a ConnectTimeoutError for compatibility)
    if isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.NameResolutionError,
                           ConnectionRefusedError)):
        return ItemFailed(REFUSED, text, permanent=False)
    if isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return ItemFailed(TIMEOUT, text, permanent=False)
    return ItemFailed(OTHER, text, permanent=False)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _http_time(value: str | None) -> int | None:
    """An HTTP date as nanoseconds since the epoch, None when absent or unreadable."""
    if not value:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp()) * 1_000_000_000
    except (TypeError, ValueError):
        return None
