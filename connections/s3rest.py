"""The S3 requests S3Con makes without botocore: SigV4 signing and a small HTTP/1.1 client.

Why this exists (measured on the 2-core test machine, 4 KiB objects, 16 threads, rclone
serve s3; README "S3 and S3-compatible stores" has the table): a boto3 `put_object`
costs ~2 ms of client CPU, a botocore-signed request over urllib3 ~1 ms, our own SigV4
over `http.client` ~0.3 ms, of which `http.client` itself took about half: its request
side validates every header with regular expressions and its response side parses
headers with the `email` package (~60 us per reply alone). A reply from S3 is a status
line, a dozen headers and a Content-Length or chunked body; reading that by hand costs a
few microseconds. So the hot requests (PUT of small objects, and at start-up HEAD bucket,
ListObjectsV2 and ListMultipartUploads) go through `Rest` below, and botocore is loaded
only for what needs it (multipart, copy, delete, ranged GET, the AWS credential chain,
and the endpoint rules of AWS itself).

What the client does, and does not, support: HTTP/1.1 keep-alive with one connection per
thread, TLS through `ssl` (certificates verified), Content-Length, chunked and
close-delimited reply bodies, interim 1xx replies skipped. No proxies (S3Con uses
botocore when a proxy applies), no redirects (S3 errors are answered, not redirected),
no compression. Timeouts are per socket operation, as in `http.client`.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Protocol
from urllib.parse import quote, unquote_plus, urlsplit

import botocore.exceptions as bce  # light: the exception classes only (~15 ms)

if TYPE_CHECKING:  # imported where used: ssl only for https, ElementTree only for listings
    import ssl
    import xml.etree.ElementTree as ET

PROGRESS_STEP = 1 << 20  # bodies above this are sent in slices of this size, with progress
_ONE_SEND = 64 << 10  # a body up to this size goes out in the same send() as the head
_MAX_HEAD = 64 << 10  # a reply's status line and headers must fit in this
_RECV = 64 << 10  # below malloc's mmap threshold: a 256 KiB recv() buffer cost ~18 us a reply in mmap/munmap
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"


class Disconnected(ConnectionResetError):
    """The server closed the connection before answering (a stale keep-alive connection)."""


class ProtocolError(ConnectionError):
    """The reply is not HTTP/1.x as we understand it (transient: a proxy or a server hiccup)."""


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
    body: bytes


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


class HttpConn:
    """One keep-alive HTTP/1.1 connection. Not thread-safe: Rest keeps one per thread."""

    def __init__(self, layout: Layout, ssl_context: ssl.SSLContext | None, connect_timeout: float, timeout: float):
        self.layout = layout
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = b""
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
        sock = socket.create_connection((self.layout.hostname, self.layout.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # head and body leave at once
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.layout.hostname)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock, self._buf, self.used = sock, b"", False
        return sock

    def exchange(self, head: bytes, body: bytes | memoryview, on_sent: Callable[[int], None] | None,
                 no_body: bool) -> Reply:
        """Send one request, read its reply; on_sent(bytes of the body sent so far) after
        each 1 MiB slice. Any exception leaves the connection closed."""
        sock = self.sock or self._connect()
        try:
            if len(body) <= _ONE_SEND:
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
            reply, keep = self._read_reply(no_body)
        except BaseException:
            self.close()
            raise
        if keep:
            self.used = True
        else:
            self.close()
        return reply

    def _recv(self) -> bytes:
        assert self.sock is not None
        return self.sock.recv(_RECV)

    def _read_reply(self, no_body: bool) -> tuple[Reply, bool]:
        while True:
            status, version, headers = self._read_head()
            if 100 <= status < 200 and status != 101:
                continue  # interim reply (100 Continue): the real one follows
            break
        conn = headers.get("connection", "").lower()
        keep = "close" not in conn and (version == "HTTP/1.1" or "keep-alive" in conn)
        if no_body or status in (204, 304):
            return Reply(status, headers, b""), keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return Reply(status, headers, self._read_chunked()), keep
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ProtocolError(f"bad Content-Length {length!r}")
            return Reply(status, headers, self._read_exact(int(length))), keep
        return Reply(status, headers, self._read_to_close()), False

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

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size_text = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while self._read_line():  # trailer fields, then an empty line
                    pass
                return b"".join(parts)
            parts.append(self._read_exact(size))
            if self._read_exact(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")

    def _read_to_close(self) -> bytes:
        parts = [self._buf]
        self._buf = b""
        while chunk := self._recv():
            parts.append(chunk)
        return b"".join(parts)


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


def client_error(reply: Reply, operation: str, scrub: Callable[[str], str]) -> bce.ClientError:
    """An S3 error reply as the ClientError botocore would have raised (one classifier
    serves both paths). A reply without an XML body (HEAD) gets its status as its code."""
    text = reply.body.decode("utf-8", "replace")
    code = re.search(r"<Code>(.*?)</Code>", text, re.S)
    msg = re.search(r"<Message>(.*?)</Message>", text, re.S)
    return bce.ClientError(
        {
            "Error": {"Code": code.group(1) if code else str(reply.status),
                      "Message": scrub(msg.group(1) if msg else "")},
            "ResponseMetadata": {"HTTPStatusCode": reply.status, "RequestId": reply.headers.get("x-amz-request-id", ""),
                                 "HTTPHeaders": reply.headers},
        },
        operation,
    )


class Rest:
    """Signed S3 requests on one bucket over per-thread keep-alive connections."""

    def __init__(self, layout: Layout, credentials: CredentialSource, *, connect_timeout: float, timeout: float,
                 scrub: Callable[[str], str], ca_bundle: str | None = None) -> None:
        self.layout = layout
        self.signer = Signer(layout.region, credentials)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.scrub = scrub
        self.ca_bundle = ca_bundle
        self._ssl: ssl.SSLContext | None = None
        if layout.scheme == "https":
            import ssl

            self._ssl = ssl.create_default_context(cafile=ca_bundle)
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
            c = HttpConn(self.layout, self._ssl, self.connect_timeout, self.timeout)
            self._local.conn = c
            with self._lock:
                self._all.add(c)
        return c

    def request(self, method: str, path: str, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes | memoryview = b"",
                on_sent: "Callable[[int], None] | HighWater | None" = None, payload: str | None = None) -> Reply:
        """One signed request; `path` is encoded already (key_path). A connection the
        server dropped while idle is re-opened and the request sent once more (every
        request we make is idempotent). on_sent(n) gets each new byte of the body once,
        whatever the retries. Network errors raise OSError."""
        if on_sent is not None and not isinstance(on_sent, HighWater):
            on_sent = HighWater(on_sent)
        if headers and any("\n" in v or "\r" in v for v in headers.values()):
            raise ValueError("a header value holds a line break")  # would split the request
        query = canonical_query(params) if params else ""
        target = f"{path}?{query}" if query else path
        if payload is None:
            payload = UNSIGNED if body else EMPTY_SHA256
        no_body = method == "HEAD"
        for attempt in (0, 1):
            conn = self._conn()
            h = dict(headers) if headers else {}
            h["host"] = self.layout.host
            if body or method in ("PUT", "POST"):
                h["content-length"] = str(len(body))
            self.signer.sign(method, path, query, h, payload)
            head = "".join([f"{method} {target} HTTP/1.1\r\n", *[f"{k}: {v}\r\n" for k, v in h.items()], "\r\n"])
            reused = conn.used and conn.sock is not None
            try:
                return conn.exchange(head.encode("latin-1"), body, on_sent, no_body)
            except (Disconnected, BrokenPipeError, ConnectionResetError):
                if reused and attempt == 0:  # a keep-alive connection the server had closed
                    continue
                raise
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes | memoryview, headers: dict[str, str],
            on_sent: Callable[[int], None] | None) -> str | None:
        """PutObject: `data` at `key`; return the ETag (see _put for errors)."""
        return self._put(key_path(self.layout.base, key), None, headers, data, on_sent, "PutObject")

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | memoryview, content_md5: str,
                    on_sent: Callable[[int], None] | None) -> str | None:
        """UploadPart: part `number` of a multipart upload; return its ETag. The body goes
        out in 1 MiB sendall() slices straight from `data` (no copies): botocore's
        http.client sent 8-16 KiB writes, which cost this client and rclone serve s3
        measurably more CPU per MiB."""
        params = {"partNumber": str(number), "uploadId": upload_id}
        return self._put(key_path(self.layout.base, key), params, {"content-md5": content_md5}, data, on_sent,
                         "UploadPart")

    def _put(self, path: str, params: dict[str, str] | None, headers: dict[str, str], data: bytes | memoryview,
             on_sent: Callable[[int], None] | None, operation: str) -> str | None:
        """A PUT with a body; the reply's ETag. Raises ClientError for an S3 error reply and
        OSError for the network. A 5xx/429 gets one quick retry, as the boto3 path's
        total_max_attempts=2 does (it also rides over rclone serve s3's race when two PUTs
        create one folder); bytes sent again are not reported twice."""
        progress = HighWater(on_sent) if on_sent is not None else None
        for attempt in (0, 1):
            reply = self.request("PUT", path, params, headers, data, progress)
            if reply.status == 200:
                return reply.headers.get("etag")
            if attempt == 0 and (reply.status >= 500 or reply.status == 429):
                time.sleep(0.05 + 0.2 * (time.monotonic() % 1))  # jitter without the random module
                continue
            raise client_error(reply, operation, self.scrub)
        raise AssertionError("unreachable")

    def create_multipart(self, key: str, headers: dict[str, str]) -> str:
        """CreateMultipartUpload with the object's headers (content type, x-amz-meta-*,
        encryption, storage class); return the upload id."""
        root = self._xml("POST", key_path(self.layout.base, key), {"uploads": ""}, headers, b"",
                         "CreateMultipartUpload")
        upload_id = root.findtext("UploadId")
        if not upload_id:
            raise ProtocolError("CreateMultipartUpload: no UploadId in the reply")
        return upload_id

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str | None:
        """CompleteMultipartUpload of `parts` [(number, ETag without quotes)]; return the
        object's ETag. S3 may answer 200 and put an <Error> in the body (it keeps the
        connection alive with whitespace while it assembles): that raises ClientError too."""
        from xml.sax.saxutils import escape

        body = "".join(["<CompleteMultipartUpload>",
                        *[f"<Part><PartNumber>{n}</PartNumber><ETag>&quot;{escape(e)}&quot;</ETag></Part>"
                          for n, e in parts],
                        "</CompleteMultipartUpload>"]).encode()
        root = self._xml("POST", key_path(self.layout.base, key), {"uploadId": upload_id},
                         {"content-type": "application/xml"}, body, "CompleteMultipartUpload")
        return root.findtext("ETag")

    def head_bucket(self) -> Reply:
        """HEAD the bucket; raises ClientError (code = status, as botocore's) unless 200."""
        reply = self.request("HEAD", self.layout.base or "/")
        if reply.status != 200:
            raise client_error(reply, "HeadBucket", self.scrub)
        return reply

    def _get_xml(self, params: dict[str, str], operation: str) -> "ET.Element":
        return self._xml("GET", self.layout.base or "/", params, None, b"", operation)

    def _xml(self, method: str, path: str, params: dict[str, str], headers: dict[str, str] | None, body: bytes,
             operation: str) -> "ET.Element":
        """A request whose reply is an XML document; its root, namespace dropped from the
        tags. An error reply, or an <Error> document in a 200, raises ClientError."""
        import xml.etree.ElementTree as ET

        reply = self.request(method, path, params, headers, body)
        if reply.status != 200:
            raise client_error(reply, operation, self.scrub)
        try:
            root = ET.fromstring(reply.body.lstrip())
        except ET.ParseError as exc:
            raise ProtocolError(f"{operation}: unreadable XML reply: {exc}") from None
        for el in root.iter():  # drop the namespace: "{http://s3.amazonaws.com/...}Key" -> "Key"
            if el.tag[:1] == "{":
                el.tag = el.tag.split("}", 1)[1]
        if root.tag == "Error":
            raise client_error(Reply(500 if root.findtext("Code") == "InternalError" else 400, reply.headers,
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
            root = self._get_xml(params, "ListObjectsV2")
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
        while True:
            root = self._get_xml(params, "ListMultipartUploads")
            encoded = (root.findtext("EncodingType") or "").lower() == "url"
            for u in root.iterfind("Upload"):
                key = u.findtext("Key") or ""
                yield (unquote_plus(key) if encoded else key), u.findtext("UploadId") or ""
            if (root.findtext("IsTruncated") or "").lower() != "true":
                return
            key_marker, id_marker = root.findtext("NextKeyMarker"), root.findtext("NextUploadIdMarker")
            if not key_marker and not id_marker:
                return
            params["key-marker"] = unquote_plus(key_marker or "") if encoded else key_marker or ""
            params["upload-id-marker"] = id_marker or ""
