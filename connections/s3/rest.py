"""The S3 client S3Con makes every request with: SigV4 signing and a small HTTP/1.1 client.

Why our own (measured on the 2-core test machine, 4 KiB objects, 16 threads, rclone serve
s3; bench/s3_clients.py, bench/RESULTS.md "Issue 19, item 5"): a boto3 `put_object` costs
~1.5-2 ms of client CPU per object, this client ~0.2 ms including the MD5 for Content-MD5;
obstore (Rust object_store) costs about as little but cannot send Content-MD5 and has no
ListParts. `http.client` was tried too: its request side validates every header with
regular expressions and its response side parses headers with the `email` package (~60 us
per reply alone), while a reply from S3 is a status line, a dozen headers and a
Content-Length or chunked body, which reading by hand costs a few microseconds.

Every S3 operation S3Con makes goes through `Rest` below (one implementation each); its one
error type is `S3Error` (an error reply), beside OSError (the network) and ProtocolError (a
reply that is not HTTP as we understand it). botocore is used only where S3Con needs AWS's
own rules: the credential chain (botocore's public Credentials.get_frozen_credentials) and
the endpoint rules of AWS itself (read once from a presigned URL).

What the client does, and does not, support: HTTP/1.1 keep-alive with one connection per
thread, TLS through `ssl` (certificates verified), an HTTP proxy (CONNECT for https,
absolute-form requests for http, Basic proxy credentials), Content-Length, chunked and
close-delimited reply bodies, interim 1xx replies skipped. No redirects (S3 errors are
answered, not redirected), no compression. Timeouts are per socket operation, as in
`http.client`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Protocol, Union
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from skynet.engine.backoff import Backoff

if TYPE_CHECKING:  # imported where used: ssl only for https, ElementTree only for XML replies
    import ssl


def escape(text: str) -> str:
    """Text for an XML element (xml.sax.saxutils.escape would import urllib.request)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


#: the one quick retry of a 5xx/429 reply: 0.05-0.25 s (skynet's one back-off; the handler retries after that)
QUICK_RETRY = Backoff(initial=0.05, cap=0.25, jitter=0.2)
PROGRESS_STEP = 1 << 20  # bodies above this are sent in slices of this size, with progress
_ONE_SEND = 64 << 10  # a body up to this size goes out in the same send() as the head
_MAX_HEAD = 64 << 10  # a reply's status line and headers must fit in this
_RECV = 64 << 10  # below malloc's mmap threshold: a 256 KiB recv() buffer cost ~18 us a reply in mmap/munmap
#: a streamed body (BodySink) is received into one reused buffer of this size per connection, made on
#: its first streamed body (measured, 512 MiB ranged GETs written with pwrite: 64 KiB 2.5, 256 KiB 2.2,
#: 1 MiB 2.1, 4 MiB 2.15 CPU s per GiB, MD5 included)
_STREAM_BUF = 1 << 20
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"


class Disconnected(ConnectionResetError):
    """The server closed the connection before answering (a stale keep-alive connection)."""


class ProtocolError(ConnectionError):
    """The reply is not HTTP/1.x as we understand it (transient: a proxy or a server hiccup)."""


class ProxyRefused(ConnectionError):
    """The HTTP proxy did not open a tunnel to the endpoint (its status is in the message)."""


class S3Error(Exception):
    """An S3 error reply: this client's one error type for what the server refused.

    `code` is S3's error code, or the HTTP status as text when the reply has no XML body
    (HEAD); `headers` are the reply's (x-amz-bucket-region tells where a bucket lives)."""

    def __init__(self, operation: str, status: int, code: str, message: str = "",
                 headers: dict[str, str] | None = None, key: str | None = None) -> None:
        super().__init__(f"{operation}: {code or status}{': ' + message if message else ''}")
        self.operation = operation
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.key = key  # DeleteObjects: the key the error is about


class BodyShort(Exception):
    """The file behind a FileBody got shorter while it was being sent."""


class FileBody:
    """`length` bytes of an open file from `offset`, read with os.pread in PROGRESS_STEP
    slices as they go out (a 64 MiB PUT never sits in memory), from the start again when
    the request is sent again. A file that got shorter raises BodyShort."""

    __slots__ = ("fd", "offset", "length")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd, self.offset, self.length = fd, offset, length

    def __len__(self) -> int:
        return self.length

    def __bool__(self) -> bool:
        return True  # a body, even an empty one: PUTs carry Content-Length

    def slices(self) -> Iterator[bytes]:
        pos = 0
        while pos < self.length:
            data = os.pread(self.fd, min(PROGRESS_STEP, self.length - pos), self.offset + pos)
            if not data:
                raise BodyShort(f"the file ended after {pos} of {self.length} bytes")
            pos += len(data)
            yield data


Body = Union[bytes, bytearray, memoryview, FileBody]


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy: `host:port`, and the Proxy-Authorization value when it wants Basic credentials."""

    host: str
    port: int
    authorization: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "Proxy":
        u = urlsplit(url if "//" in url else f"http://{url}")
        if u.scheme not in ("http", "") or not u.hostname:
            raise ValueError(f"only http:// proxies are supported, not {url.split('@')[-1]!r}")
        auth = None
        if u.username is not None:
            pair = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
            auth = "Basic " + base64.b64encode(pair).decode("ascii")
        return cls(u.hostname, u.port or 80, auth)


class FrozenCredentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None


class CredentialSource(Protocol):
    """botocore's Credentials, or StaticCredentials: what the signer asks for each request."""

    def get_frozen_credentials(self) -> FrozenCredentials: ...


class StaticCredentials:
    """Keys given in the config: no botocore needed to hold them."""

    def __init__(self, access_key: str, secret_key: str, token: str | None = None) -> None:
        self._frozen = FrozenCredentials(access_key, secret_key, token)

    def get_frozen_credentials(self) -> FrozenCredentials:
        return self._frozen


@dataclass(frozen=True)
class Layout:
    """Where a bucket's objects live: `scheme://host{base}/{key}`, signed for `region`."""

    scheme: str
    host: str  # netloc, with the port when there is one (it is also the Host header)
    base: str  # "/bucket" (path style) or "" (virtual-hosted style)
    region: str

    @classmethod
    def from_presigned(cls, url: str) -> "Layout":
        """Read the layout botocore chose (AWS endpoint rules, auto addressing) from a
        presigned URL for key "K" (one computation, no request)."""
        u = urlsplit(url)
        if not u.path.endswith("/K"):
            raise ValueError("unexpected URL layout")
        m = re.search(r"X-Amz-Credential=[^&/]+(?:/|%2F)\d{8}(?:/|%2F)([a-z0-9-]+)(?:/|%2F)s3", u.query)
        if not m:
            raise ValueError("no SigV4 credential scope in the presigned URL")
        return cls(u.scheme, u.netloc, u.path[:-2], m.group(1))

    @classmethod
    def from_endpoint(cls, endpoint_url: str, bucket: str, style: str, region: str) -> "Layout":
        """The layout of an explicit endpoint with an explicit style (no rules to apply)."""
        u = urlsplit(endpoint_url)
        base = u.path.rstrip("/")
        if style == "path":
            return cls(u.scheme, u.netloc, f"{base}/{quote(bucket, safe='')}", region)
        if style == "virtual":
            return cls(u.scheme, f"{bucket}.{u.netloc}", base, region)
        raise ValueError(f"addressing style {style!r} needs botocore's endpoint rules")

    @property
    def hostname(self) -> str:
        return urlsplit(f"//{self.host}").hostname or self.host

    @property
    def port(self) -> int:
        return urlsplit(f"//{self.host}").port or (443 if self.scheme == "https" else 80)


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # b"" when the body went to a BodySink


#: Called with each consecutive piece of a streamed reply body; the view is valid only during the call.
Sink = Callable[[memoryview], None]
#: Decides, from a reply's status and headers, whether its body is streamed (the Sink to stream it
#: to) or read whole into Reply.body (None: an error reply's XML, say). May raise to refuse the reply.
BodySink = Callable[[int, dict[str, str]], Union[Sink, None]]


# -- signing --------------------------------------------------------------------------


class Signer:
    """AWS Signature Version 4 for S3, with the per-day signing key and the per-second
    date string cached (both are the same for thousands of requests in a row)."""

    def __init__(self, region: str, credentials: CredentialSource) -> None:
        self.region = region
        self.credentials = credentials
        self._key: tuple[str, str, Any, Any] | None = None  # (yyyymmdd, secret, inner, outer HMAC state)
        self._now: tuple[int, str] = (-1, "")

    def _amz_date(self) -> str:
        sec = int(time.time())
        cached = self._now
        if cached[0] == sec:
            return cached[1]
        text = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(sec))
        self._now = (sec, text)
        return text

    def _signing_key(self, secret: str, day: str) -> tuple[Any, Any]:
        """HMAC-SHA256 keyed with the day's signing key, as its two pre-hashed pads: a
        request then costs two sha256 copies (~1 us) instead of hmac.digest (~3 us, most of
        it OpenSSL 3 looking the algorithm up again)."""
        cached = self._key
        if cached is not None and cached[0] == day and cached[1] == secret:
            return cached[2], cached[3]
        k = ("AWS4" + secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.digest(k, part.encode(), "sha256")
        block = k.ljust(64, b"\0")  # sha256's block size; k is 32 bytes
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._key = (day, secret, inner, outer)
        return inner, outer

    def sign(self, method: str, path: str, query: str, headers: dict[str, str], payload: str) -> None:
        """Add x-amz-date, x-amz-content-sha256, the session token and Authorization to
        `headers` (lower-case names, clean values, `host` included). `path` and `query`
        are already URI-encoded (`canonical_query`), exactly as they go on the wire."""
        creds = self.credentials.get_frozen_credentials()
        amz_date = self._amz_date()
        day = amz_date[:8]
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(
            (method, path, query, "".join([f"{n}:{headers[n]}\n" for n in names]), signed, payload)
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        inner, outer = self._signing_key(creds.secret_key, day)
        h_in = inner.copy()
        h_in.update(to_sign.encode())
        h_out = outer.copy()
        h_out.update(h_in.digest())
        sig = h_out.hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, SignedHeaders={signed}, Signature={sig}"
        )


def canonical_query(params: dict[str, str]) -> str:
    """A query string in SigV4's canonical form (sorted, every reserved byte encoded),
    used as is on the wire so what is signed is what is sent."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))


def key_path(base: str, key: str) -> str:
    """The request path of an object key (S3 keys are encoded once, '/' kept)."""
    return f"{base}/{quote(key, safe='/~')}"


# -- HTTP/1.1 -----------------------------------------------------------------------------


def parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """A reply's status line and headers (without the blank line ending them): (status,
    HTTP version, headers by lower-case name, repeated ones joined with ", ")."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(parts[1]), parts[0], headers


def keeps_alive(version: str, headers: dict[str, str]) -> bool:
    """Whether the connection answers another request after this reply."""
    conn = headers.get("connection", "").lower()
    return "close" not in conn and (version == "HTTP/1.1" or "keep-alive" in conn)


class HttpConn:
    """One keep-alive HTTP/1.1 connection. Not thread-safe: Rest keeps one per thread."""

    def __init__(self, layout: Layout, ssl_context: ssl.SSLContext | None, connect_timeout: float, timeout: float,
                 proxy: Proxy | None = None):
        self.layout = layout
        self.proxy = proxy
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = b""
        self._stream: bytearray | None = None  # the reused receive buffer of streamed bodies, made on first use
        self.used = False  # has answered at least one request: the server may have dropped it since

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self._buf = b""
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _connect(self) -> socket.socket:
        where = (self.proxy.host, self.proxy.port) if self.proxy else (self.layout.hostname, self.layout.port)
        sock = socket.create_connection(where, timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # head and body leave at once
            if self.proxy is not None and self.ssl_context is not None:
                self._tunnel(sock)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.layout.hostname)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock, self._buf, self.used = sock, b"", False
        return sock

    def _tunnel(self, sock: socket.socket) -> None:
        """Ask the proxy for a tunnel to the endpoint (CONNECT); TLS then runs inside it."""
        assert self.proxy is not None
        sock.settimeout(self.connect_timeout)
        target = f"{self.layout.hostname}:{self.layout.port}"
        auth = f"Proxy-Authorization: {self.proxy.authorization}\r\n" if self.proxy.authorization else ""
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode("latin-1"))
        self.sock, self._buf = sock, b""
        try:
            status, _version, _headers = self._read_head()
        finally:
            self.sock = None
        if status != 200:
            raise ProxyRefused(f"the proxy answered {status} to CONNECT {target}")
        if self._buf:
            raise ProtocolError("the proxy sent bytes before the tunnel opened")

    def open(self) -> None:
        """Connect now unless connected: for a caller that tells a failed connection
        (refused, unreachable, a connect timeout) from a failed request."""
        if self.sock is None:
            self._connect()

    def start(self, head: bytes, no_body: bool) -> tuple[int, dict[str, str], "ReplyBody"]:
        """Send a request without a body and read its reply's status and headers; the
        body is read as it arrives through the ReplyBody (a large download never sits in
        memory). The connection answers its next request once that body was read to
        its end; a body abandoned before (ReplyBody.close) closes it. Any exception
        here leaves the connection closed."""
        sock = self.sock or self._connect()
        try:
            sock.sendall(head)
            status, version, headers = self._final_head()
            return status, headers, self._body(status, version, headers, no_body)
        except BaseException:
            self.close()
            raise

    def exchange(self, head: bytes, body: Body, on_sent: Callable[[int], None] | None,
                 no_body: bool, sink_for: BodySink | None = None) -> Reply:
        """Send one request, read its reply; on_sent(bytes of the body sent so far) after
        each 1 MiB slice; `sink_for` may stream the reply's body instead of returning it.
        Any exception leaves the connection closed.

        A server may answer before it has read the body (403 for a bad signature) and
        close the connection: the send then fails, and the reply already in the socket is
        what the request got (as curl does), not the broken pipe."""
        sock = self.sock or self._connect()
        try:
            try:
                self._send(sock, head, body, on_sent)
            except (BrokenPipeError, ConnectionResetError):
                early = self._early_reply(no_body)
                if early is None:
                    raise
                reply, keep = early, False
            else:
                reply, keep = self._read_reply(no_body, sink_for)
        except BaseException:
            self.close()
            raise
        if keep:
            self.used = True
        else:
            self.close()
        return reply

    @staticmethod
    def _send(sock: socket.socket, head: bytes, body: Body, on_sent: Callable[[int], None] | None) -> None:
        if isinstance(body, FileBody):
            sock.sendall(head)
            done = 0
            for piece in body.slices():
                sock.sendall(piece)
                done += len(piece)
                if on_sent is not None:
                    on_sent(done)
        elif len(body) <= _ONE_SEND:
            sock.sendall(head + body if body else head)
            if on_sent is not None and body:
                on_sent(len(body))
        else:
            sock.sendall(head)
            view = memoryview(body)
            for start in range(0, len(view), PROGRESS_STEP):
                sock.sendall(view[start : start + PROGRESS_STEP])
                if on_sent is not None:
                    on_sent(min(len(view), start + PROGRESS_STEP))

    def _early_reply(self, no_body: bool) -> Reply | None:
        """The reply a server sent before it stopped reading our request, if any."""
        try:
            return self._read_reply(no_body)[0]
        except (OSError, ProtocolError):
            return None

    def _recv(self) -> bytes:
        assert self.sock is not None
        return self.sock.recv(_RECV)

    def _read_reply(self, no_body: bool, sink_for: BodySink | None = None) -> tuple[Reply, bool]:
        status, version, headers = self._final_head()
        body = self._body(status, version, headers, no_body)
        if sink_for is None or no_body or status in (204, 304):
            return Reply(status, headers, body.read_all()), body.keep
        sink = sink_for(status, headers)
        if sink is None:
            return Reply(status, headers, body.read_all()), body.keep
        if body.left is not None and not body.done:  # a Content-Length: streamed into the sink
            self._stream_exact(body.left, sink)
            body.ended()
        else:  # a body without a length: read whole, then handed over in one piece
            data = body.read_all()
            if data:
                sink(memoryview(data))
        return Reply(status, headers, b""), body.keep

    def _final_head(self) -> tuple[int, str, dict[str, str]]:
        while True:
            status, version, headers = self._read_head()
            if 100 <= status < 200 and status != 101:
                continue  # interim reply (100 Continue): the real one follows
            return status, version, headers

    def _body(self, status: int, version: str, headers: dict[str, str], no_body: bool) -> "ReplyBody":
        """How the reply's body is framed (none, chunked, Content-Length, up to the
        close), and whether the connection stays open after it."""
        keep = keeps_alive(version, headers)
        if no_body or status in (204, 304):
            return ReplyBody(self, 0, False, keep)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return ReplyBody(self, None, True, keep)
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ProtocolError(f"bad Content-Length {length!r}")
            return ReplyBody(self, int(length), False, keep)
        return ReplyBody(self, None, False, False)

    def _take(self, n: int) -> bytes:
        """Up to `n` bytes that arrived (at least one unless the connection closed)."""
        buf = self._buf
        if not buf:
            buf = self._recv()
            if not buf:
                return b""
        if len(buf) <= n:
            self._buf = b""
            return buf
        self._buf = buf[n:]
        return buf[:n]

    def _read_head(self) -> tuple[int, str, dict[str, str]]:
        buf = self._buf
        first = True
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > _MAX_HEAD:
                raise ProtocolError("reply headers too long")
            chunk = self._recv()
            if not chunk:
                if first and not buf:
                    raise Disconnected("the server closed the connection without answering")
                raise ProtocolError("connection closed inside the reply headers")
            first = False
            buf += chunk
        head, self._buf = buf[:end], buf[end + 4 :]
        return parse_head(head)

    def _read_exact(self, n: int) -> bytes:
        buf = self._buf
        if len(buf) >= n:
            self._buf = buf[n:]
            return buf[:n]
        parts = [buf]
        have = len(buf)
        while have < n:
            chunk = self._recv()
            if not chunk:
                raise ProtocolError(f"connection closed after {have} of {n} body bytes")
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._buf = data[n:]
        return data[:n]

    def _stream_exact(self, n: int, sink: Sink) -> None:
        """Hand the next `n` body bytes to `sink` as they arrive: what the head's read
        already holds, then recv_into() one reused buffer (no bytes object per piece, no
        join: each byte is copied once, by the kernel, before the sink writes it)."""
        buf = self._buf
        if buf:
            take = min(n, len(buf))
            self._buf = buf[take:]
            sink(memoryview(buf)[:take])
            n -= take
        if n <= 0:
            return
        assert self.sock is not None
        if self._stream is None:
            self._stream = bytearray(_STREAM_BUF)
        view = memoryview(self._stream)
        recv_into = self.sock.recv_into
        while n > 0:
            got = recv_into(view, min(n, _STREAM_BUF))
            if not got:
                raise ProtocolError(f"connection closed with {n} body bytes still to come")
            sink(view[:got])
            n -= got

    def _read_line(self) -> bytes:
        while True:
            i = self._buf.find(b"\r\n")
            if i >= 0:
                line, self._buf = self._buf[:i], self._buf[i + 2 :]
                return line
            if len(self._buf) > _MAX_HEAD:
                raise ProtocolError("chunk header too long")
            chunk = self._recv()
            if not chunk:
                raise ProtocolError("connection closed inside a chunked body")
            self._buf += chunk

    def _chunk_size(self) -> int:
        """The size line of the next chunk; at the last (0), the trailer fields are read too."""
        size_text = self._read_line().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while self._read_line():  # trailer fields, then an empty line
                pass
        return size

    def _chunk_end(self) -> None:
        if self._read_exact(2) != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")

    def _read_chunked(self) -> bytes:
        parts = []
        while size := self._chunk_size():
            parts.append(self._read_exact(size))
            self._chunk_end()
        return b"".join(parts)

    def _read_to_close(self) -> bytes:
        parts = [self._buf]
        self._buf = b""
        while chunk := self._recv():
            parts.append(chunk)
        return b"".join(parts)


class ReplyBody:
    """A reply's body, read as it arrives (HttpConn.start) or whole (read_all): framed by
    Content-Length (`left`), chunked, or up to the connection's close (`left` None, not
    chunked). At its end the connection is ready for its next request (`keep`) or
    closed; closed too when the body is abandoned before its end (close()) or a read
    fails. A body cut short raises ProtocolError."""

    __slots__ = ("conn", "left", "chunked", "keep", "done", "_chunk_left")

    def __init__(self, conn: HttpConn, left: int | None, chunked: bool, keep: bool) -> None:
        self.conn, self.left, self.chunked, self.keep = conn, left, chunked, keep
        self.done = False
        self._chunk_left = 0
        if left == 0:
            self._end()

    def ended(self) -> None:
        """The body was read to its end by other means (HttpConn streaming it into a sink)."""
        self._end()

    def _end(self) -> None:
        self.done = True
        if self.keep:
            self.conn.used = True
        else:
            self.conn.close()

    def read_all(self) -> bytes:
        conn = self.conn
        if self.done:
            return b""
        if self.chunked:
            data = conn._read_chunked()
        elif self.left is not None:
            data = conn._read_exact(self.left)
        else:
            data = conn._read_to_close()
        self._end()
        return data

    def read(self, n: int) -> bytes:
        """Up to `n` bytes of the body (fewer as they arrive); b"" at its end."""
        if self.done or n <= 0:
            return b""
        try:
            if self.chunked:
                return self._read_chunk(n)
            data = self.conn._take(n if self.left is None else min(n, self.left))
            if self.left is None:
                if not data:
                    self._end()
                return data
            if not data:
                raise ProtocolError(f"connection closed with {self.left} body bytes still to come")
            self.left -= len(data)
            if self.left == 0:
                self._end()
            return data
        except BaseException:
            self.close()
            raise

    def _read_chunk(self, n: int) -> bytes:
        conn = self.conn
        if self._chunk_left == 0:
            self._chunk_left = conn._chunk_size()
            if self._chunk_left == 0:
                self._end()
                return b""
        data = conn._take(min(n, self._chunk_left))
        if not data:
            raise ProtocolError("connection closed inside a chunked body")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            conn._chunk_end()
        return data

    def close(self) -> None:
        """Abandon the rest of the body: the connection cannot answer again."""
        if not self.done:
            self.done = True
            self.conn.close()


# -- requests -----------------------------------------------------------------------------


class HighWater:
    """Turns "body bytes sent so far" into on_sent(new bytes), each byte counted once
    however often a request is sent again."""

    __slots__ = ("on_sent", "high")

    def __init__(self, on_sent: Callable[[int], None]) -> None:
        self.on_sent = on_sent
        self.high = 0

    def __call__(self, upto: int) -> None:
        if upto > self.high:
            self.on_sent(upto - self.high)
            self.high = upto


def _only_for(ok: tuple[int, ...], sink_for: BodySink) -> BodySink:
    """`sink_for`, asked only about replies whose status is in `ok` (an error's body is read whole)."""
    def streamed(status: int, headers: dict[str, str]) -> Sink | None:
        return sink_for(status, headers) if status in ok else None
    return streamed


def s3_error(reply: Reply, operation: str, scrub: Callable[[str], str], key: str | None = None) -> S3Error:
    """An S3 error reply as an S3Error. A reply without an XML body (HEAD) gets its
    status as its code, as botocore did."""
    text = reply.body.decode("utf-8", "replace")
    code = re.search(r"<Code>(.*?)</Code>", text, re.S)
    msg = re.search(r"<Message>(.*?)</Message>", text, re.S)
    return S3Error(operation, reply.status, code.group(1) if code else str(reply.status),
                   scrub(msg.group(1) if msg else ""), reply.headers, key)


def _meta(headers: dict[str, str]) -> dict[str, str]:
    return {k[11:]: v for k, v in headers.items() if k.startswith("x-amz-meta-")}


def head_shape(h: dict[str, str]) -> dict[str, Any]:
    """An object's reply headers (a HEAD's, or a whole GET's: the same ones) in botocore's
    HeadObject shape: ContentLength, ETag, ContentType, Metadata, LastModified, VersionId."""
    out: dict[str, Any] = {"ContentLength": int(h.get("content-length") or 0), "Metadata": _meta(h)}
    for name, field_ in (("etag", "ETag"), ("content-type", "ContentType"), ("x-amz-version-id", "VersionId")):
        if name in h:
            out[field_] = h[name]
    if h.get("last-modified"):
        from email.utils import parsedate_to_datetime

        try:
            out["LastModified"] = parsedate_to_datetime(h["last-modified"])
        except (TypeError, ValueError):
            pass
    return out


class Rest:
    """Signed S3 requests on one bucket over per-thread keep-alive connections: every
    operation S3Con makes, one method each. Error replies raise S3Error, the network
    OSError (ProtocolError for a reply we cannot read)."""

    def __init__(self, layout: Layout, credentials: CredentialSource, *, connect_timeout: float, timeout: float,
                 scrub: Callable[[str], str], ca_bundle: str | None = None, proxy: Proxy | None = None) -> None:
        self.layout = layout
        self.signer = Signer(layout.region, credentials)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.scrub = scrub
        self.ca_bundle = ca_bundle
        self.proxy = proxy
        self._ssl: ssl.SSLContext | None = None
        if layout.scheme == "https":
            import ssl

            self._ssl = ssl.create_default_context(cafile=ca_bundle)
        # Through a proxy, a plain-http request names its whole URL (absolute form).
        self._origin = f"http://{layout.host}" if proxy is not None and self._ssl is None else ""
        self._local = threading.local()
        self._all: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every thread's connection (a thread's next request opens a new one)."""
        with self._lock:
            conns, self._all = list(self._all), weakref.WeakSet()
        for c in conns:
            c.close()

    def _conn(self) -> HttpConn:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self.connection()
            self._local.conn = c
            with self._lock:
                self._all.add(c)
        return c

    def request(self, method: str, path: str, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: Body = b"",
                on_sent: "Callable[[int], None] | HighWater | None" = None, payload: str | None = None,
                sink_for: BodySink | None = None) -> Reply:
        """One signed request; `path` is encoded already (key_path). A connection the
        server dropped while idle is re-opened and the request sent once more (every
        request we make is idempotent). on_sent(n) gets each new byte of the body once,
        whatever the retries. Network errors raise OSError."""
        if on_sent is not None and not isinstance(on_sent, HighWater):
            on_sent = HighWater(on_sent)
        query = canonical_query(params) if params else ""
        if payload is None:
            payload = UNSIGNED if body else EMPTY_SHA256
        no_body = method == "HEAD"
        for attempt in (0, 1):
            conn = self._conn()
            head = self.head(method, path, query, headers, payload, len(body) if body or method in ("PUT", "POST")
                             else None)
            reused = conn.used and conn.sock is not None
            try:
                return conn.exchange(head, body, on_sent, no_body, sink_for)
            except (Disconnected, BrokenPipeError, ConnectionResetError):
                if reused and attempt == 0:  # a keep-alive connection the server had closed
                    continue
                raise
        raise AssertionError("unreachable")

    def head(self, method: str, path: str, query: str, headers: dict[str, str] | None, payload: str,
             length: int | None = None) -> bytes:
        """A request's signed head (`path` encoded already, `query` canonical), signed now:
        what request() sends, and what WholeGets sends on its own connections."""
        if headers and any("\n" in v or "\r" in v for v in headers.values()):
            raise ValueError("a header value holds a line break")  # would split the request
        target = f"{self._origin}{path}?{query}" if query else f"{self._origin}{path}"
        h = dict(headers) if headers else {}
        h["host"] = self.layout.host
        if length is not None:
            h["content-length"] = str(length)
        self.signer.sign(method, path, query, h, payload)
        if self._origin and self.proxy is not None and self.proxy.authorization:
            h["proxy-authorization"] = self.proxy.authorization  # for the proxy: not signed
        return "".join([f"{method} {target} HTTP/1.1\r\n", *[f"{k}: {v}\r\n" for k, v in h.items()],
                        "\r\n"]).encode("latin-1")

    def connection(self) -> HttpConn:
        """A connection of its own (not the calling thread's), for a caller that drives
        several at once (WholeGets)."""
        return HttpConn(self.layout, self._ssl, self.connect_timeout, self.timeout, self.proxy)

    def _call(self, operation: str, method: str, path: str, params: dict[str, str] | None = None,
              headers: dict[str, str] | None = None, body: Body = b"", on_sent: Callable[[int], None] | None = None,
              ok: tuple[int, ...] = (200,), sink_for: BodySink | None = None) -> Reply:
        """One operation: the reply if its status is in `ok`, else S3Error. A 5xx/429 gets
        one quick retry (it also rides over rclone serve s3's race when two PUTs create one
        folder); bytes sent again are not reported twice. `sink_for` sees only replies in
        `ok` (an error's body is read whole, for its code)."""
        progress = HighWater(on_sent) if on_sent is not None else None
        streamed = None if sink_for is None else _only_for(ok, sink_for)
        for attempt in (0, 1):
            reply = self.request(method, path, params, headers, body, progress, sink_for=streamed)
            if reply.status in ok:
                return reply
            if attempt == 0 and (reply.status >= 500 or reply.status == 429):
                time.sleep(QUICK_RETRY.delay(1))
                continue
            raise s3_error(reply, operation, self.scrub)
        raise AssertionError("unreachable")

    def _key(self, key: str) -> str:
        return key_path(self.layout.base, key)

    # -- writing -------------------------------------------------------------------------
    def put(self, key: str, data: Body, headers: dict[str, str], on_sent: Callable[[int], None] | None) -> str | None:
        """PutObject: `data` (bytes, or a FileBody streamed from a file) at `key`; the ETag."""
        return self._call("PutObject", "PUT", self._key(key), None, headers, data, on_sent).headers.get("etag")

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | memoryview, content_md5: str,
                    on_sent: Callable[[int], None] | None) -> str | None:
        """UploadPart with Content-MD5: part `number` of a multipart upload; its ETag. The
        body goes out in 1 MiB sendall() slices straight from `data` (no copies): botocore's
        http.client sent 8-16 KiB writes, which cost this client and rclone serve s3
        measurably more CPU per MiB."""
        params = {"partNumber": str(number), "uploadId": upload_id}
        return self._call("UploadPart", "PUT", self._key(key), params, {"content-md5": content_md5}, data,
                          on_sent).headers.get("etag")

    def create_multipart(self, key: str, headers: dict[str, str]) -> str:
        """CreateMultipartUpload with the object's headers (content type, x-amz-meta-*,
        encryption, storage class); return the upload id."""
        root = self._xml("CreateMultipartUpload", "POST", self._key(key), {"uploads": ""}, headers)
        upload_id = root.findtext("UploadId")
        if not upload_id:
            raise ProtocolError("CreateMultipartUpload: no UploadId in the reply")
        return upload_id

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str | None:
        """CompleteMultipartUpload of `parts` [(number, ETag without quotes)]; return the
        object's ETag. S3 may answer 200 and put an <Error> in the body (it keeps the
        connection alive with whitespace while it assembles): that raises S3Error too."""
        body = "".join(["<CompleteMultipartUpload>",
                        *[f"<Part><PartNumber>{n}</PartNumber><ETag>&quot;{escape(e)}&quot;</ETag></Part>"
                          for n, e in parts],
                        "</CompleteMultipartUpload>"]).encode()
        root = self._xml("CompleteMultipartUpload", "POST", self._key(key), {"uploadId": upload_id},
                         {"content-type": "application/xml"}, body)
        return root.findtext("ETag")

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload (S3Error NoSuchUpload when the server does not know it)."""
        self._call("AbortMultipartUpload", "DELETE", self._key(key), {"uploadId": upload_id}, ok=(200, 204))

    def list_parts(self, key: str, upload_id: str) -> Iterator[tuple[int, str, int]]:
        """(part number, ETag, size) of every part the server holds for an upload, paged."""
        params = {"uploadId": upload_id}
        while True:
            root = self._xml("ListParts", "GET", self._key(key), params)
            for p in root.iterfind("Part"):
                yield int(p.findtext("PartNumber") or 0), p.findtext("ETag") or "", int(p.findtext("Size") or 0)
            marker = root.findtext("NextPartNumberMarker")
            if (root.findtext("IsTruncated") or "").lower() != "true" or not marker:
                return
            params["part-number-marker"] = marker

    def copy_object(self, key: str, source: str, headers: dict[str, str]) -> str | None:
        """CopyObject of `source` ("bucket/key") to `key` with `headers` (metadata
        directive, encryption...); the new object's ETag. An <Error> in a 200 raises too."""
        h = {"x-amz-copy-source": quote(source, safe="/~"), **headers}
        return self._xml("CopyObject", "PUT", self._key(key), None, h).findtext("ETag")

    def upload_part_copy(self, key: str, upload_id: str, number: int, source: str, first: int, last: int) -> str:
        """UploadPartCopy of bytes [first, last] of `source` ("bucket/key"); the part's ETag."""
        h = {"x-amz-copy-source": quote(source, safe="/~"), "x-amz-copy-source-range": f"bytes={first}-{last}"}
        params = {"partNumber": str(number), "uploadId": upload_id}
        # rclone serve s3 1.75 answers 200 with no body (and stores an empty part, which
        # S3Con's ListParts check catches): no body, no ETag.
        root = self._xml("UploadPartCopy", "PUT", self._key(key), params, h, allow_empty=True)
        return "" if root is None else root.findtext("ETag") or ""

    def delete_object(self, key: str, *, version: str | None = None) -> None:
        """DeleteObject, of one `version` for good (a missing key is no error in S3)."""
        params = {"versionId": version} if version else None
        self._call("DeleteObject", "DELETE", self._key(key), params, ok=(200, 204))

    def delete_objects(self, keys: list[str]) -> list[S3Error]:
        """DeleteObjects (quiet) of up to 1,000 keys; the per-key errors the server reports.
        Content-MD5 is required by S3 for this request."""
        body = "".join(["<Delete><Quiet>true</Quiet>", *[f"<Object><Key>{escape(k)}</Key></Object>" for k in keys],
                        "</Delete>"]).encode()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode("ascii")
        root = self._xml("DeleteObjects", "POST", self.layout.base or "/", {"delete": ""},
                         {"content-md5": md5, "content-type": "application/xml"}, body)
        return [S3Error("DeleteObjects", 200, e.findtext("Code") or "", self.scrub(e.findtext("Message") or ""),
                        key=e.findtext("Key")) for e in root.iterfind("Error")]

    # -- reading -------------------------------------------------------------------------
    def bucket_versioning(self) -> str:
        """GetBucketVersioning: "Enabled", "Suspended", or "" for a bucket that never had it."""
        root = self._xml("GetBucketVersioning", "GET", self.layout.base or "/", {"versioning": ""})
        return (root.findtext("Status") or "").strip()

    def head_bucket(self) -> Reply:
        """HEAD the bucket; raises S3Error (code = status) unless 200."""
        return self._call("HeadBucket", "HEAD", self.layout.base or "/")

    def head_object(self, key: str, *, if_match: str | None = None, version: str | None = None) -> dict[str, Any]:
        """HeadObject (of one `version`; If-Match on an ETag without quotes), in botocore's
        shape: ContentLength, ETag, ContentType, Metadata (x-amz-meta- names), LastModified
        (a datetime), VersionId. S3Error (code = status: "404", "412"...) otherwise."""
        headers = {"if-match": f'"{if_match}"'} if if_match else None
        params = {"versionId": version} if version else None
        return head_shape(self._call("HeadObject", "HEAD", self._key(key), params, headers).headers)

    def get_head(self, key: str, if_match: str | None = None) -> bytes:
        """The signed head of get_object(key, if_match=...): a whole object's GET."""
        return self.head("GET", self._key(key), "", {"if-match": f'"{if_match}"'} if if_match else None, EMPTY_SHA256)

    def get_object(self, key: str, first: int | None = None, last: int | None = None, *,
                   if_match: str | None = None, version: str | None = None,
                   sink_for: BodySink | None = None) -> Reply:
        """GetObject, whole or bytes [first, last] (last None: to the end), of one `version`,
        If-Match on an ETag (without quotes); the reply (200/206), its body streamed where
        `sink_for` says so."""
        headers: dict[str, str] = {}
        if first is not None:
            headers["range"] = f"bytes={first}-{'' if last is None else last}"
        if if_match:
            headers["if-match"] = f'"{if_match}"'
        params = {"versionId": version} if version else None
        return self._call("GetObject", "GET", self._key(key), params, headers or None, ok=(200, 206),
                          sink_for=sink_for)

    def list_versions(self, prefix: str) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        """ListObjectVersions under `prefix`, one page at a time: (versions, delete markers),
        each a list of {"Key", "VersionId", "IsLatest", "LastModified" (text), "ETag", "Size"}."""
        params = {"versions": "", "prefix": prefix, "encoding-type": "url"}
        for root, decode in self._marker_pages("ListObjectVersions", params, "version-id-marker"):
            def entry(el: Any) -> dict[str, Any]:
                return {"Key": decode(el.findtext("Key") or ""), "VersionId": el.findtext("VersionId"),
                        "IsLatest": (el.findtext("IsLatest") or "").lower() == "true",
                        "LastModified": el.findtext("LastModified"), "ETag": el.findtext("ETag"),
                        "Size": int(el.findtext("Size") or 0)}

            yield [entry(v) for v in root.iterfind("Version")], [entry(d) for d in root.iterfind("DeleteMarker")]

    def _marker_pages(self, operation: str, params: dict[str, str], id_marker: str) -> Iterator[tuple[Any, Callable[[str], str]]]:
        """The pages of a listing continued by a key marker and an id marker
        (ListObjectVersions: version-id-marker; ListMultipartUploads: upload-id-marker):
        (root, decode), where decode turns a key back from URL encoding when the
        server used it (encoding-type=url: "+" for a space, as botocore decodes)."""
        next_id = "Next" + "".join(w.title() for w in id_marker.split("-"))  # NextVersionIdMarker...
        while True:
            root = self._xml(operation, "GET", self.layout.base or "/", params)
            encoded = (root.findtext("EncodingType") or "").lower() == "url"
            decode: Callable[[str], str] = unquote_plus if encoded else str
            yield root, decode
            if (root.findtext("IsTruncated") or "").lower() != "true":
                return
            key_marker, id_value = root.findtext("NextKeyMarker"), root.findtext(next_id)
            if not key_marker and not id_value:
                return
            params["key-marker"] = decode(key_marker or "")
            params[id_marker] = id_value or ""

    def _xml(self, operation: str, method: str, path: str, params: dict[str, str] | None,
             headers: dict[str, str] | None = None, body: bytes = b"", allow_empty: bool = False) -> Any:
        """A request whose reply is an XML document; its root, namespace dropped from the
        tags (None for an empty reply when `allow_empty`). An error reply, or an <Error>
        document in a 200, raises S3Error."""
        import xml.etree.ElementTree as ET

        reply = self._call(operation, method, path, params, headers, body)
        if allow_empty and not reply.body.strip():
            return None
        try:
            root = ET.fromstring(reply.body.lstrip())
        except ET.ParseError as exc:
            raise ProtocolError(f"{operation}: unreadable XML reply: {exc}") from None
        for el in root.iter():  # drop the namespace: "{http://s3.amazonaws.com/...}Key" -> "Key"
            if el.tag[:1] == "{":
                el.tag = el.tag.split("}", 1)[1]
        if root.tag == "Error":
            raise s3_error(Reply(500 if root.findtext("Code") == "InternalError" else 400, reply.headers,
                                 reply.body), operation, self.scrub)
        return root

    def list_objects(self, prefix: str) -> Iterator[tuple[str, int, str | None]]:
        """(key, size, ETag) of every object under `prefix` (list_objects_stamped)."""
        for key, size, etag, _modified in self.list_objects_stamped(prefix):
            yield key, size, etag

    def list_objects_stamped(self, prefix: str) -> Iterator[tuple[str, int, str | None, str | None]]:
        """(key, size, ETag, LastModified text) of every object under `prefix`, one page
        (1,000 keys) at a time. Keys travel URL-encoded (encoding-type=url, "+" for a
        space, as botocore decodes them) so that any character survives XML."""
        params = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
        while True:
            root = self._xml("ListObjectsV2", "GET", self.layout.base or "/", params)
            encoded = (root.findtext("EncodingType") or "").lower() == "url"
            for c in root.iterfind("Contents"):
                key = c.findtext("Key") or ""
                yield ((unquote_plus(key) if encoded else key), int(c.findtext("Size") or 0), c.findtext("ETag"),
                       c.findtext("LastModified"))
            token = root.findtext("NextContinuationToken")
            if (root.findtext("IsTruncated") or "").lower() != "true" or not token:
                return
            params["continuation-token"] = token

    def list_uploads(self, prefix: str) -> Iterator[tuple[str, str]]:
        """(key, upload id) of every open multipart upload under `prefix`, paged."""
        params = {"uploads": "", "prefix": prefix, "encoding-type": "url"}
        for root, decode in self._marker_pages("ListMultipartUploads", params, "upload-id-marker"):
            for u in root.iterfind("Upload"):
                yield decode(u.findtext("Key") or ""), u.findtext("UploadId") or ""
