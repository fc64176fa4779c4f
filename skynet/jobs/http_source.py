"""HTTP and HTTPS sources of a migration job: a GET (or HEAD) per item on kept-alive
connections, the body streamed.

Why not urllib3's requests: on the 2-core test machine an item of 64 KiB cost about
0.3 ms of CPU in urllib3 and http.client (the pool manager's key normalizing,
http.client's header writing and its `email`-package header parsing) out of 0.75
for the whole item (bench/RESULTS.md, "Issue 21: the job of URLs, faster"). The wire
is now connections/s3/rest.py's HTTP/1.1 connection (HttpConn: the client every S3
request already goes through, with TLS and keep-alive), its replies read as they
arrive (ReplyBody: Content-Length, chunked or up to the close; a body cut short is an
error, never a short object). urllib3 still parses and normalizes each URL
(parse_url: invalid characters percent-encoded, IDNA host names), as before.

What this module adds on top: one pool of idle connections per host shared by every
worker (64 hosts kept, `workers` connections each), redirects followed (10 at most;
a redirect to another host drops the credentials), separate connect and read
timeouts, Basic authentication from the URL's user:password, a connection the
server dropped while idle re-opened once, and every failure as the item's error
class: a connection that could not be made is `refused`, a timeout `timeout`.

A Stream is opened at an offset with `Range: bytes=N-` and `If-Range` naming
the version an earlier attempt saw (its strong ETag, else its Last-Modified):
a server that ignores Range, or whose object changed, answers 200 with the
whole object, and the target starts over (skynet/transfer/streams.reopen).
"""
from __future__ import annotations

import email.utils
import functools
import re
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import urllib3

from connections.contract.xcon import Stream
from connections.s3.rest import Disconnected, HttpConn, Layout, ProtocolError, ReplyBody
from skynet.jobs.ftp_source import public_url
from skynet.jobs.item import FORBIDDEN, NOT_FOUND, OTHER, REFUSED, TIMEOUT, ItemFailed

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
USER_AGENT = "skynet-job/1"
REDIRECTS = (301, 302, 303, 307, 308)
MAX_HOSTS = 64  # hosts whose idle connections are kept (the least recently used go first)
DRAIN_MAX = 64 << 10  # a redirect's body up to this is read to keep its connection
# scheme, host[:port], path?query with only characters a request line carries as they are (no %, no
# dot segment, no fragment): what _split may take without urllib3's normalizing
_PLAIN = re.compile(r"(https?)://([a-z0-9\-]+(?:\.[a-z0-9\-]+)*(?::[0-9]+)?)((?:/(?!\.\.?(?:[/?]|\Z))[A-Za-z0-9\-._~!$&'()*+,;=:@]*)*"
                    r"(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*)?)\Z")


@dataclass
class _Reply:
    """A reply whose body is still to be read, on the connection it came on."""

    url: str
    status: int
    headers: dict[str, str]
    body: ReplyBody
    conn: HttpConn
    key: str


class HttpSource:
    """Every HTTP(S) item of a job, through one pool of kept-alive connections."""

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 30.0, workers: int = 16,
                 max_redirects: int = 10, ca_certs: str | None = None) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_redirects = max_redirects
        self.max_idle = max(1, workers)
        self.ca_certs = ca_certs
        self._ssl: ssl.SSLContext | None = None
        self._idle: OrderedDict[str, list[HttpConn]] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            pools, self._idle = list(self._idle.values()), OrderedDict()
        for conns in pools:
            for c in conns:
                c.close()

    def head(self, url: str) -> tuple[int | None, int | None]:
        """(size, mtime_ns) of `url` by a HEAD, (None, None) when the server will not
        say (an item already at the target is then compared by what it can)."""
        r = self._request("HEAD", url, {})
        self._release(r)
        if r.status != 200:
            raise_for_status(r.status, url)
        return _int(r.headers.get("content-length")), _http_time(r.headers.get("last-modified"))

    def open_at(self, url: str, offset: int, if_range: str | None) -> Stream:
        """The object at `url` from `offset` on (a 206), or whole (a 200: the server
        ignored the range, or the object is not the version `if_range` names)."""
        headers = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if if_range:
                headers["If-Range"] = if_range
        r = self._request("GET", url, headers)
        status = r.status
        if status == 416 and offset > 0:  # asked past the end: it changed; start over
            self._release(r, drain=True)
            return self.open_at(url, 0, None)
        if status not in (200, 206):
            self._release(r, drain=True)
            raise_for_status(status, url)
        start, size = 0, _int(r.headers.get("content-length"))
        if status == 206:
            m = _CONTENT_RANGE.fullmatch(r.headers.get("content-range", "").strip())
            if not m:
                self._release(r)
                raise ItemFailed(OTHER, f"{public_url(url)}: 206 without a usable Content-Range", permanent=False,
                                 status=206)
            start, size = int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))
        return self._stream(r, url, start, size)

    # -- requests --------------------------------------------------------------------
    def _request(self, method: str, url: str, headers: dict[str, str]) -> _Reply:
        """One request, its redirects followed; the final reply, its body unread."""
        current = url
        headers = {**headers, **_auth(url)}
        for _ in range(self.max_redirects + 1):
            r = self._once(method, current, headers)
            location = r.headers.get("location")
            if r.status not in REDIRECTS or not location:
                return r
            self._release(r, drain=True)
            nxt = urljoin(current, location)
            if urlsplit(nxt).scheme.lower() not in ("http", "https"):
                raise ItemFailed(OTHER, f"{public_url(url)}: redirected to {public_url(nxt)}, not an HTTP URL",
                                 permanent=True, status=r.status)
            if r.status == 303 and method != "HEAD":
                method = "GET"
            if _split(nxt)[:2] != _split(current)[:2]:  # another scheme, host or port: not our credentials
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"} | _auth(nxt)
            current = nxt
        raise ItemFailed(OTHER, f"{public_url(url)}: too many redirects", permanent=True)

    def _once(self, method: str, url: str, headers: dict[str, str]) -> _Reply:
        """One request on a pooled connection (a connection the server closed while it
        was idle is replaced once: every request here is idempotent)."""
        scheme, netloc, target = _split(url)
        key = f"{scheme}://{netloc}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {netloc}", f"User-Agent: {USER_AGENT}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        for attempt in (0, 1):
            conn = self._take(key, scheme, netloc, pooled=attempt == 0)
            reused = conn.used
            try:
                conn.open()
            except ssl.SSLError as exc:
                raise ItemFailed(OTHER, f"{public_url(url)}: TLS: {exc}", permanent=False) from exc
            except TimeoutError as exc:
                raise ItemFailed(TIMEOUT, f"{public_url(url)}: connect timed out", permanent=False) from exc
            except OSError as exc:  # refused, unreachable, no such host: the host, not the item
                raise ItemFailed(REFUSED, f"{public_url(url)}: cannot connect: {exc}", permanent=False) from exc
            try:
                status, reply_headers, body = conn.start(head, method == "HEAD")
            except (Disconnected, BrokenPipeError, ConnectionResetError) as exc:
                if reused and attempt == 0:
                    continue
                raise classify_error(exc, url) from exc
            except (OSError, ProtocolError) as exc:
                raise classify_error(exc, url) from exc
            return _Reply(url, status, reply_headers, body, conn, key)
        raise AssertionError("unreachable")

    def _take(self, key: str, scheme: str, netloc: str, pooled: bool = True) -> HttpConn:
        """An idle connection to the host (`pooled`), else a new one (not connected yet)."""
        with self._lock:
            idle = self._idle.get(key) if pooled else None
            if idle:
                self._idle.move_to_end(key)
                return idle.pop()
        ctx = self._context() if scheme == "https" else None
        return HttpConn(Layout(scheme, netloc, "", ""), ctx, self.connect_timeout, self.read_timeout)

    def _context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ssl is None:
                self._ssl = ssl.create_default_context(cafile=self.ca_certs)
            return self._ssl

    def _release(self, r: _Reply, drain: bool = False) -> None:
        """Done with a reply: its connection back to the pool when its body was read to
        the end (read here when `drain` and small), else closed."""
        body = r.body
        if drain and not body.done and (body.left is not None and body.left <= DRAIN_MAX):
            try:
                while body.read(DRAIN_MAX):
                    pass
            except (OSError, ProtocolError):
                pass
        if not body.done:
            body.close()
        if r.conn.sock is None:
            return
        evicted: list[HttpConn] = []
        with self._lock:
            idle = self._idle.setdefault(r.key, [])
            self._idle.move_to_end(r.key)
            if len(idle) < self.max_idle:
                idle.append(r.conn)
            else:
                evicted.append(r.conn)
            while len(self._idle) > MAX_HOSTS:
                evicted.extend(self._idle.popitem(last=False)[1])
        for c in evicted:
            c.close()

    def _stream(self, r: _Reply, url: str, start: int, size: int | None) -> Stream:
        """A Stream over a reply's body; closing it returns a fully read connection
        to the pool (keep-alive) and drops one abandoned mid-body."""
        etag = r.headers.get("etag")
        modified = r.headers.get("last-modified")
        version = etag if etag and not etag.startswith("W/") else (modified or "")
        meta = {"source-url": public_url(url)}
        if etag:
            meta["source-etag"] = etag
        if modified:
            meta["source-last-modified"] = modified
        body = r.body

        def read(n: int) -> bytes:
            try:
                return body.read(n)
            except (OSError, ProtocolError) as exc:
                raise classify_error(exc, url) from exc

        return Stream(offset=start, size=size, version=version, read=read, close=lambda: self._release(r),
                      meta=meta, mtime_ns=_http_time(modified))


def _split(url: str) -> tuple[str, str, str]:
    """(scheme, host[:port], request target) of a URL. A plain one (a lower-case host,
    nothing to encode or resolve in its path) is split as it is; any other goes through
    urllib3's parse_url, which percent-encodes what a request line cannot carry, removes
    dot segments and encodes an international host name (IDNA)."""
    m = _PLAIN.match(url)
    if m:
        return m.group(1), m.group(2), m.group(3) or "/"
    try:
        u = urllib3.util.parse_url(url)
    except urllib3.exceptions.LocationParseError as exc:
        raise ItemFailed(OTHER, f"{public_url(url)}: not a usable URL: {exc}", permanent=True) from None
    return (u.scheme or "http").lower(), u.netloc or "", u.request_uri


def _auth(url: str) -> dict[str, str]:
    """Basic authentication from the URL's user:password (an HTTP client does not send it by itself)."""
    if "@" not in url:  # no user info (nearly every URL): no urlsplit per request
        return {}
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


def classify_error(exc: BaseException, url: str) -> ItemFailed:
    """A failure of a request on an open connection as the item's error class: a
    timeout, else `other` (a reset, a reply cut short or not HTTP); all transient."""
    if isinstance(exc, TimeoutError):
        return ItemFailed(TIMEOUT, f"{public_url(url)}: read timed out", permanent=False)
    return ItemFailed(OTHER, f"{public_url(url)}: {type(exc).__name__}: {exc}", permanent=False)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@functools.lru_cache(maxsize=256)  # files written in the same second share one: parsing costs ~15 us
def _http_time(value: str | None) -> int | None:
    """An HTTP date as nanoseconds since the epoch, None when absent or unreadable."""
    if not value:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp()) * 1_000_000_000
    except (TypeError, ValueError):
        return None
