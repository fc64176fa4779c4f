"""S3Con: the remote is a bucket on AWS S3 or an S3-compatible store, under a key prefix.

Layout
  * The object key of a relative path `rel` is `<prefix>/<rel>`. Keys must be UTF-8: a
    name holding undecodable bytes (surrogate-escaped) is refused with a PermanentError.
  * Every object carries user metadata: `size`, `mtime`, `mode` (octal permission bits),
    `uid`, `gid`, plus `md5` (hex, single-PUT objects) or `part-size` (multipart ones).
    `mtime` is written "seconds.nanoseconds" ("1600000000.123456789"): exact to the
    nanosecond, and the form rclone reads and writes (rclone serve s3 even sets the
    stored file's mtime from it), so the bucket stays readable by rclone.
  * Content-Type is guessed from the name; Content-Encoding is never set.

Hashes and ETags
  S3 fixes an object's metadata when the upload starts, so a whole-file hash can only go
  into the metadata of objects sent in one PUT (we read those before sending). For
  multipart uploads we record the part size instead: the ETag S3 reports
  ("md5-of-part-md5s-N") is then reproducible from the local file, see `local_etags()`.
  Some stores (rclone serve s3) report the plain MD5 of the whole object for multipart
  objects; both forms are accepted everywhere. With SSE-KMS the ETag is no MD5 and is
  not checked.

Integrity
  Every PUT and UploadPart carries Content-MD5, which AWS and rclone serve s3 verify
  (rclone ignores the newer x-amz-checksum-* headers, so those would prove nothing
  there); payloads are therefore sent UNSIGNED, saving a SHA-256 pass. A single PUT's
  ETag must be the MD5 sent. A multipart object is checked through the ETag that
  CompleteMultipartUpload returns, which must be the md5-of-md5s-N of the parts sent
  (whose lengths add up to the file's size); only a completion without a checkable ETag
  (another form, or SSE-KMS) costs a HEAD (size, and a plain MD5 compared after hashing
  the file again). See _verify_multipart for why not a HEAD every time.

Resume
  A multipart send saves {bucket, key, upload_id, size, mtime_ns, ino, part_size,
  parts: {n: etag}} in ctx.resume (at most once a second: the server's ListParts is
  the truth). A later send of the same file version (key, size, mtime, inode) lists the
  parts and uploads only the missing ones; SendResult.bytes_sent counts those. The file
  is still read whole, to hash it and to check the saved parts (a saved part with other
  bytes restarts the upload). A changed, shrunk or vanished file aborts its old upload;
  so does a permanent error. ctx.stop stops between parts with a TransientError and
  keeps the upload. cleanup(keep) aborts every upload under the prefix that no kept
  state names (call it at start-up).

Moves
  CopyObject (metadata kept) then delete; objects over 5 GiB are copied in parts
  (UploadPartCopy). rclone serve s3 1.75 answers UploadPartCopy with 200 but stores an
  empty part: the parts are checked with ListParts and, when wrong, the copy goes
  through this machine (ranged GET + UploadPart) instead.

Listing
  ListObjectsV2 returns no user metadata: `list()` yields size and ETag only (mtime and
  mode None), one page at a time. `stat()` HEADs one object and returns mtime and mode too.

Speed (client CPU measured on the 2-core test machine against rclone serve s3; README
"S3 and S3-compatible stores" has the figures)
  A boto3 `put_object` costs ~2 ms of CPU per small object, which caps one process near
  400 files/s. The requests that are made per file or per byte therefore go through
  connections/s3rest.py: SigV4 signing and a small HTTP/1.1 keep-alive client, one
  connection per thread. That covers PUTs of up to SMALL_MAX bytes, UploadPart, and the
  start-up requests (HEAD bucket, ListObjectsV2, ListMultipartUploads); a 4 KiB send()
  costs ~0.3 ms of CPU (~0.6 ms over http.client, whose header parsing alone took
  ~60 us). boto3 does the rest (create/complete/abort/list parts, copy, delete, HEAD,
  ranged GET, 4-64 MiB PUTs) and is imported on first need: a daemon syncing small files
  to an endpoint given with path or virtual addressing and a region never loads it
  (~0.3 s of CPU at start). There is one configuration: keys from the config sign both
  paths, or else both take the boto3 session's credentials (profile, default chain);
  where the URLs need botocore's endpoint rules (AWS, "auto" addressing) they are read
  from a presigned URL, and when botocore gets loaded its URL layout and CA bundle are
  compared with the fast path's, which follows them if they differ. No proxy support on
  the fast path: when a proxy applies, boto3 makes every request. (obstore was measured
  too: ~0.2 ms, but it cannot send Content-MD5, the only integrity check rclone serve s3
  makes.)

Multipart threshold (64 MiB by default)
  Below it a file goes up in one PUT: one request, a plain-MD5 ETag, and on rclone serve
  s3 single PUTs were faster than parallel parts at every size measured (64 MiB: 80 vs
  53-75 MB/s). Above it, resumability pays: an interrupted upload costs at most one part,
  and on AWS parallel parts raise throughput. Losing a sub-threshold upload costs at
  most 64 MiB, about 5 s at 100 Mbit/s.

Threads
  One boto3 client (thread-safe) made from one boto3.Session (made under a lock) serves
  every worker; the fast path keeps one keep-alive connection per thread. Part uploads
  of all sends share one thread pool and one semaphore, so memory is bounded by
  concurrency x part size whatever the number of workers. A multipart send reads its
  file in order into reused part buffers (readinto: no page faults per part); the pool
  threads hash each part (hashlib releases the GIL) and send it in 1 MiB writes.
"""
from __future__ import annotations

import base64
import collections
import functools
import hashlib
import io
import logging
import math
import mimetypes
import os
import re
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator, NoReturn
from urllib.parse import urlsplit

import botocore.exceptions as bce  # the exception classes only: boto3 itself is imported on first use

from connections import s3rest
from connections.base import (
    Abilities,
    EtagCheck,
    LocalFile,
    PermanentError,
    PoolSized,
    RemoteChanged,
    RemoteEntry,
    RemoteNotFound,
    SendResult,
    ServerSideCopy,
    ServerSideMove,
    TransferContext,
    TransientError,
    UnsafePath,
    VersionEntry,
    Versions,
    XCon,
    XConError,
    check_range,
    check_rel,
    remote_join,
    within_listing,
)
from connections.source import open_source, open_source_fd
from skynet.values import keyed, parse_int_range, parse_size_range

log = logging.getLogger("skynet.s3")

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
MAX_PARTS = 10_000
PART_TARGET = 9_000  # parts we aim at, leaving head-room under MAX_PARTS
MIN_PART = 5 * MiB  # S3's minimum for every part but the last
MAX_PART = 5 * GiB
MAX_PUT = 5 * GiB  # largest single PUT / CopyObject
MAX_OBJECT = 5 * TiB
MAX_KEY_BYTES = 1024
SMALL_MAX = 4 * MiB  # single PUTs up to this size are read into memory once
PROGRESS_STEP = MiB
DELETE_BATCH = 1000  # DeleteObjects limit
SEND_MEMORY = 256 * MiB  # parts one multipart send may hold in memory (at least 2 parts)
PROGRESS_POLL = 0.2  # seconds between progress reports of a multipart send
STATE_SAVE_EVERY = 1.0  # seconds between resume-state saves (ListParts is the truth)

# Warm the mimetypes table now: its lazy first load is not thread-safe.
mimetypes.init()

#: config key -> (default, one-line doc). Sizes take binary units: 8MiB, 8M, 8388608.
KEYS: dict[str, tuple[str, str]] = {
    "bucket": ("", "bucket name (required)"),
    "prefix": ("", "key prefix in the bucket; each mapping's target is joined under it"),
    "region": ("", "AWS region; empty: from the AWS config/environment, else us-east-1"),
    "endpoint_url": ("", "URL of an S3-compatible server (http[s]://host:port); empty for AWS"),
    "addressing_style": ("auto", "auto, path (http://host/bucket/key) or virtual (http://bucket.host/key)"),
    "storage_class": ("", "storage class for new objects (STANDARD_IA, ...); empty: bucket default"),
    "sse": ("none", "server-side encryption: none, AES256 or aws:kms"),
    "sse_kms_key_id": ("", "KMS key id or ARN with sse = aws:kms; empty: the account's default key"),
    "part_size": ("8MiB", "smallest multipart part (>= 5MiB); grows with the file to stay under 10,000 parts"),
    "multipart_threshold": ("64MiB", "files of at least this size go up in parallel, resumable parts"),
    "concurrency": ("8", "parts in flight at once (shared by all sends of this connection)"),
    "access_key_id": ("", "access key; empty: use profile or the default AWS credential chain"),
    "secret_access_key": ("", "secret key, with access_key_id (never logged)"),
    "profile": ("", "profile in ~/.aws/config to take credentials from, when no keys are given"),
}

# Keys an engine may keep in a service section that are not ours to validate.
_RESERVED = {"type", "service", "name"}

# -- sizes and config ---------------------------------------------------------------

def _clean_prefix(key: str, value: str) -> str:
    """A key prefix without leading/trailing '/', made of clean UTF-8 path parts."""
    value = value.strip("/")
    if not value:
        return ""
    for part in value.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"{key}: {value!r} has an empty, '.' or '..' part")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{key}: {value!r} is not valid UTF-8") from None
    return value


def _options(service: dict[str, str], target: str) -> dict[str, Any]:
    """Check one [s3] section plus a mapping's target; return S3Con's keyword arguments.

    The key prefix is the service's `prefix` with `target` joined under it. Raises
    ValueError("key: problem") for the first bad value; never echoes a secret.
    """
    unknown = sorted(set(service) - set(KEYS) - _RESERVED)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown s3 setting (known: {', '.join(KEYS)})")
    cfg = {k: str(service.get(k, d)).strip() for k, (d, _doc) in KEYS.items()}

    bucket = cfg["bucket"]
    if not bucket:
        raise ValueError("bucket: required")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]", bucket):
        raise ValueError(f"bucket: {bucket!r} is not a bucket name")
    prefix = "/".join(p for p in (_clean_prefix("prefix", cfg["prefix"]), _clean_prefix("target", target or "")) if p)

    region = cfg["region"]
    if region and not re.fullmatch(r"[a-z0-9-]+", region):
        raise ValueError(f"region: {region!r} is not a region name (e.g. eu-west-1)")
    endpoint = cfg["endpoint_url"].rstrip("/")
    if endpoint:
        u = urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment:
            raise ValueError(f"endpoint_url: {endpoint!r} is not an http(s)://host[:port] URL")
    style = cfg["addressing_style"].lower()
    if style not in ("auto", "path", "virtual"):
        raise ValueError(f"addressing_style: {style!r} is not auto, path or virtual")
    storage_class = cfg["storage_class"].upper()
    if storage_class and not re.fullmatch(r"[A-Z_]+", storage_class):
        raise ValueError(f"storage_class: {storage_class!r} is not a storage class name")
    sse = {"none": "none", "": "none", "aes256": "AES256", "aws:kms": "aws:kms"}.get(cfg["sse"].lower())
    if sse is None:
        raise ValueError(f"sse: {cfg['sse']!r} is not none, AES256 or aws:kms")
    if cfg["sse_kms_key_id"] and sse != "aws:kms":
        raise ValueError("sse_kms_key_id: only used with sse = aws:kms")
    if re.search(r"\s", cfg["sse_kms_key_id"]):
        raise ValueError("sse_kms_key_id: a key id or ARN has no spaces or line breaks")

    part_size = keyed("part_size", cfg["part_size"], parse_size_range(MIN_PART, MAX_PART))
    threshold = keyed("multipart_threshold", cfg["multipart_threshold"], parse_size_range(MIN_PART, MAX_PUT))
    concurrency = keyed("concurrency", cfg["concurrency"], parse_int_range(1, 64))

    access, secret = cfg["access_key_id"], cfg["secret_access_key"]
    if bool(access) != bool(secret):
        raise ValueError("access_key_id: give both access_key_id and secret_access_key, or neither")
    return dict(
        bucket=bucket,
        prefix=prefix,
        region=region,
        endpoint_url=endpoint,
        addressing_style=style,
        storage_class=storage_class,
        sse=sse,
        sse_kms_key_id=cfg["sse_kms_key_id"],
        part_size=part_size,
        multipart_threshold=threshold,
        concurrency=concurrency,
        access_key_id=access,
        secret_access_key=secret,
        profile=cfg["profile"],
    )


def validate(service: dict[str, str], target: str) -> None:
    """Raise ValueError("key: problem") if the settings cannot make a connection."""
    build(service, target)


def build(service: dict[str, str], target: str) -> "S3Con":
    """Validate the settings (see _options) and build the connection, not yet connected.

    Credentials: explicit keys if given, else `profile`, else the default AWS chain
    (environment, ~/.aws, instance role...).
    """
    opts = _options(service, target)
    try:
        return S3Con(**opts)
    except bce.ProfileNotFound:
        raise ValueError(f"profile: no profile {opts['profile']!r} in the AWS config") from None


# -- metadata -----------------------------------------------------------------------


def format_mtime(ns: int) -> str:
    """Nanoseconds -> 'seconds.nanoseconds' (exact; rclone's format)."""
    sign = "-" if ns < 0 else ""
    s, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{s}.{frac:09d}"


def parse_mtime(value: str | None) -> int | None:
    """'1600000000.123456789' or '1600000000' -> nanoseconds; None if unreadable."""
    if not value:
        return None
    m = re.fullmatch(r"\s*(-?)(\d+)(?:\.(\d{1,9})\d*)?\s*", value)
    if not m:
        return None
    ns = int(m.group(2)) * 1_000_000_000 + int((m.group(3) or "0").ljust(9, "0"))
    return -ns if m.group(1) else ns


def _meta_lower(meta: dict[str, str] | None) -> dict[str, str]:
    """User metadata with lower-cased keys (rclone Title-Cases them)."""
    return {k.lower(): v for k, v in (meta or {}).items()}


def _entry_from_head(rel: str, head: dict) -> RemoteEntry:
    """stat()'s entry: mtime and mode from our metadata; without an mtime of ours
    (an object someone else put there), the time the server stored it."""
    meta = _meta_lower(head.get("Metadata"))
    mode = None
    if re.fullmatch(r"[0-7]{1,6}", meta.get("mode", "")):
        mode = int(meta["mode"], 8) & 0o7777
    mtime = parse_mtime(meta.get("mtime"))
    stored = stored_ns(head.get("LastModified")) if mtime is None else None
    return RemoteEntry(
        rel,
        int(head.get("ContentLength", 0)),
        mtime if mtime is not None else stored,
        mode,
        _etag(head.get("ETag")),
        mtime_is_stored=stored is not None,
    )


def stored_ns(value: Any) -> int | None:
    """S3's LastModified (a datetime from boto3, ISO 8601 text from a listing's XML)
    -> nanoseconds since the epoch; None when missing or unreadable."""
    if value is None:
        return None
    if isinstance(value, str):
        import datetime

        try:
            value = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    try:
        whole = int(value.timestamp())
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    return whole * 1_000_000_000 + value.microsecond * 1000


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


_MD5_RE = re.compile(r"[0-9a-f]{32}")
_MULTI_RE = re.compile(r"[0-9a-f]{32}-\d+")


def multipart_etag(part_digests: list[bytes]) -> str:
    """The ETag AWS gives a multipart object: md5 of the part md5s, dash, part count."""
    return f"{hashlib.md5(b''.join(part_digests)).hexdigest()}-{len(part_digests)}"


def part_size_for(size: int, minimum: int) -> int:
    """Part size for a file: at least `minimum`, big enough for <= PART_TARGET parts, whole MiB."""
    want = max(minimum, math.ceil(size / PART_TARGET), MIN_PART)
    return math.ceil(want / MiB) * MiB


# -- errors -------------------------------------------------------------------------

_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests",
    "BadDigest", "IncompleteBody", "OperationAborted", "XAmzContentSHA256Mismatch",
    "PriorRequestNotComplete", "ExpiredToken", "NoSuchUpload",
}
_PERMANENT_CODES = {
    "AccessDenied", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "EntityTooLarge", "EntityTooSmall", "InvalidBucketName", "KeyTooLongError",
    "AllAccessDisabled", "AccountProblem", "InvalidArgument", "InvalidRequest",
    "InvalidStorageClass", "InvalidObjectState", "MetadataTooLarge", "MethodNotAllowed",
    "NotImplemented", "PermanentRedirect", "AuthorizationHeaderMalformed", "InvalidToken",
    "InvalidPart", "InvalidPartOrder", "MalformedXML", "InvalidURI", "InvalidDigest",
    "KMS.NotFoundException", "KMS.DisabledException", "UnauthorizedAccess", "Forbidden",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}


class _FileChanged(Exception):
    """The local file no longer matches what send() was asked to upload."""


class _StaleParts(Exception):
    """Parts saved for this file version hold other bytes: the upload must start over."""


def error_code(exc: BaseException) -> str:
    if isinstance(exc, bce.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _status(exc: bce.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


# -- the fast path ---------------------------------------------------------------------


def _proxy_applies(endpoint_url: str | None) -> bool:
    """True when a proxy would be needed to reach the endpoint: then botocore (which
    honours proxies) makes every request, and the fast path is not used."""
    if not any(k.lower() in ("http_proxy", "https_proxy", "all_proxy") for k in os.environ):
        return False  # the common case, decided without importing urllib.request (and http.client)
    import urllib.request

    proxies = urllib.request.getproxies()
    if not (proxies.get("http") or proxies.get("https") or proxies.get("all")):
        return False
    host = urlsplit(endpoint_url or "https://s3.amazonaws.com").hostname or ""
    return not urllib.request.proxy_bypass(host)


def _ca_bundle(core: Any = None) -> str | None:
    """The CA bundle TLS is verified with, chosen here once for both paths: it is given to
    boto3 as `verify=` and to s3rest as `ca_bundle`, so the two agree by construction (no
    reading back what botocore picked). botocore's own order: the `ca_bundle` config variable
    of the botocore session `core` (the profile's ca_bundle, or AWS_CA_BUNDLE), then
    REQUESTS_CA_BUNDLE, then the bundle botocore would default to (certifi's, else its own
    cacert.pem: botocore.httpsession.where). Without `core` (the fast path set up before
    botocore is imported, which costs ~0.3 s of CPU) only AWS_CA_BUNDLE stands for the
    config variable; S3Con._open notices a profile's ca_bundle and moves the fast path to it."""
    configured = core.get_config_variable("ca_bundle") if core is not None else os.environ.get("AWS_CA_BUNDLE")
    if configured:
        return str(configured)
    if os.environ.get("REQUESTS_CA_BUNDLE"):
        return os.environ["REQUESTS_CA_BUNDLE"]
    try:
        from certifi import where
    except ImportError:
        import botocore

        bundled = os.path.join(os.path.dirname(botocore.__file__), "cacert.pem")
        return bundled if os.path.exists(bundled) else None
    return where()


# -- request bodies -------------------------------------------------------------------


class _Body(io.RawIOBase):
    """A seekable view of bytes for botocore that reports each byte sent once.

    A retry seeks back to 0; only reads past the high-water mark count as progress.
    """

    def __init__(self, data: bytes, on_sent: Callable[[int], None]) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._pos = 0
        self._high = 0
        self._on_sent = on_sent

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._data)

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n is None or n < 0 else min(len(self._data), self._pos + n)
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        if end > self._high:
            self._on_sent(end - self._high)
            self._high = end
        return chunk

    def readinto(self, b: Any) -> int:  # pragma: no cover - read() is what the senders use
        chunk = self.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = max(0, min(len(self._data), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos


class _FileBody(_Body):
    """The first `size` bytes of an open file, streamed; a short file raises _FileChanged."""

    def __init__(self, fh: Any, size: int, on_sent: Callable[[int], None]) -> None:
        super().__init__(b"", on_sent)
        self._fh = fh
        self._size = size

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        want = self._size - self._pos if n is None or n < 0 else min(n, self._size - self._pos)
        if want <= 0:
            return b""
        self._fh.seek(self._pos)
        chunk = self._fh.read(want)
        if len(chunk) != want:
            raise _FileChanged("the file got shorter while it was being sent")
        self._pos += want
        if self._pos > self._high:
            self._on_sent(self._pos - self._high)
            self._high = self._pos
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        return self._pos


class _Buffers:
    """Part buffers, reused: reading into a fresh 8 MiB bytes object per part costs page
    faults and zeroing each time; a free list keeps the few that are in flight at once
    (at most the send's part limit) warm."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: collections.deque[bytearray] = collections.deque()

    def take(self) -> bytearray:
        try:
            return self._free.pop()
        except IndexError:
            return bytearray(self.size)

    def give(self, buf: bytearray) -> None:
        self._free.append(buf)  # deque.append/pop are atomic: part threads give back


def _read_into(fh: Any, view: memoryview) -> int:
    """Fill `view` from `fh`; the bytes read (fewer only at the end of the file)."""
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


class _Counter:
    """Bytes sent by part threads, read by the sending thread to report progress."""

    def __init__(self, start: int = 0) -> None:
        self.value = start
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


# -- the connection -------------------------------------------------------------------


class S3Con(XCon, ServerSideMove, ServerSideCopy, Versions, PoolSized, EtagCheck):
    """A mapping's files as objects under `<bucket>/<prefix>/`. See the module doc.

    move() is CopyObject then DeleteObject on the server (no byte through us), so
    it counts as ServerSideMove; Versions reads a versioned bucket's history (on a
    bucket without versioning each key has one version, "null")."""

    service = "s3"
    abilities = Abilities(resumable=True, byte_names=False, mode=True, mtime_precision_ns=1)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region: str = "",
        endpoint_url: str = "",
        addressing_style: str = "auto",
        storage_class: str = "",
        sse: str = "none",
        sse_kms_key_id: str = "",
        part_size: int = 8 * MiB,
        multipart_threshold: int = 64 * MiB,
        concurrency: int = 8,
        access_key_id: str = "",
        secret_access_key: str = "",
        profile: str = "",
        workers: int = 16,
        copy_threshold: int = MAX_PUT,
        fast_put: bool = True,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.endpoint_url = endpoint_url or None
        self.addressing_style = addressing_style
        self.storage_class = storage_class
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.concurrency = concurrency
        self.workers = workers  # engine worker threads: sizes the HTTP connection pool
        self.copy_threshold = copy_threshold  # larger objects are copied part by part
        self.fast_put = fast_put
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.profile = profile if not access_key_id else ""
        self._secret = secret_access_key  # kept only to scrub it out of messages
        self._access_key = access_key_id
        self._lock = threading.RLock()
        self._session: Any = None
        self._core: Any = None  # the botocore session inside self._session (made with it)
        if profile and not access_key_id:
            self.session  # reads the AWS config now: ProfileNotFound is build()'s to report
        self._client: Any = None
        self._fast: s3rest.Rest | None = None
        self._fast_made = False  # _fast was decided (it stays None when it cannot be used)
        self._probe: Any = None  # what connect()/check() use: a short-timeout Rest, or a boto3 client
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(concurrency)
        self._active: set[str] = set()  # upload ids being sent now: cleanup() never aborts them
        self._active_lock = threading.Lock()
        self._part_copy_works: bool | None = None  # learnt on the first multipart copy
        self._sse_h = _sse_headers(self._sse_args())  # the same settings as x-amz-* headers, for the fast path

    # -- plumbing ------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    @property
    def session(self) -> Any:
        """The boto3.Session holding the one credential configuration (keys, profile or the
        default chain), made on first use: importing boto3 and botocore costs ~0.3 s of CPU,
        which a daemon whose fast path needs neither does not pay at start."""
        with self._lock:
            if self._session is None:
                import boto3
                import botocore.session

                # Our own botocore session, handed to boto3 (its public `botocore_session`
                # argument), so that its configuration is ours to read (_ca_bundle).
                core = botocore.session.Session()
                if self._access_key:
                    session = boto3.Session(aws_access_key_id=self._access_key,
                                            aws_secret_access_key=self._secret, botocore_session=core)
                elif self.profile:
                    session = boto3.Session(profile_name=self.profile, botocore_session=core)
                else:
                    session = boto3.Session(botocore_session=core)
                self._core, self._session = core, session
            return self._session

    def _make_client(self, connect_timeout: float, read_timeout: float, attempts: int, pool: int) -> Any:
        from botocore.config import Config

        region = self.region or self.session.region_name or "us-east-1"
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": self.addressing_style, "payload_signing_enabled": False},
            retries={"total_max_attempts": attempts, "mode": "standard"},  # the handler does the retrying
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=pool,
            request_checksum_calculation="when_required",  # we send Content-MD5 ourselves
            response_checksum_validation="when_required",
            tcp_keepalive=True,
        )
        session = self.session
        return session.client("s3", endpoint_url=self.endpoint_url, config=config, verify=_ca_bundle(self._core))

    @property
    def client(self) -> Any:
        """The shared boto3 client, made on first use (multipart, copy, delete, stat...)."""
        c = self._client
        if c is None:
            with self._lock:
                if self._client is None:
                    self._open()
                c = self._client
        return c

    def _open(self) -> None:
        """Make the boto3 client (under self._lock). When the fast path was set up without
        botocore, check that botocore puts objects at the same URLs; if not, take its layout."""
        try:
            client = self._make_client(self.connect_timeout, self.read_timeout, 2, self.workers + self.concurrency + 2)
        except bce.BotoCoreError as exc:
            raise self._classify(exc, "connect", None) from None
        if self._fast is not None:
            try:
                theirs = s3rest.Layout.from_presigned(self._presigned(client))
            except Exception as exc:  # any surprise: boto3 does the PUTs
                log.warning("s3: fast path disabled: %s", self._scrub(str(exc)))
                self._fast.close()
                self._fast = None
            else:
                if theirs != self._fast.layout or _ca_bundle(self._core) != self._fast.ca_bundle:
                    if theirs != self._fast.layout:
                        log.warning("s3: botocore addresses objects at %s, not %s: using its layout",
                                    theirs, self._fast.layout)
                    self._fast.close()
                    self._fast = self._make_rest(theirs, self._fast.signer.credentials)
        self._client = client

    def _presigned(self, client: Any) -> str:
        return client.generate_presigned_url("put_object", Params={"Bucket": self.bucket, "Key": "K"}, ExpiresIn=60)

    def _make_rest(self, layout: s3rest.Layout, creds: Any, short: bool = False) -> s3rest.Rest:
        """A Rest on `layout`; `short`: the probe's timeouts, so that a black-holed network
        is noticed by connect()/check() in seconds, not minutes."""
        connect_timeout = min(5.0, self.connect_timeout) if short else self.connect_timeout
        timeout = min(10.0, self.read_timeout) if short else self.read_timeout
        ca = _ca_bundle(self._core)  # the botocore session's choice once it exists
        return s3rest.Rest(layout, creds, connect_timeout=connect_timeout, timeout=timeout, scrub=self._scrub,
                           ca_bundle=ca)

    def _light_layout(self) -> s3rest.Layout | None:
        """The object URL layout when it follows from the settings alone (an endpoint URL,
        path or virtual addressing, a region): no botocore endpoint rules needed."""
        if self.endpoint_url and self.region and self.addressing_style in ("path", "virtual"):
            return s3rest.Layout.from_endpoint(self.endpoint_url, self.bucket, self.addressing_style, self.region)
        return None

    def _fast_path(self) -> s3rest.Rest | None:
        """The s3rest path for small PUTs and the start-up requests (HEAD bucket, listings),
        made on first use; None when it cannot be used (disabled, a proxy applies, no
        credentials), and then boto3 does everything."""
        if self._fast_made:
            return self._fast
        with self._lock:
            if not self._fast_made:
                self._fast = self._new_fast()
                self._fast_made = True
            return self._fast

    def _new_fast(self) -> s3rest.Rest | None:
        if not self.fast_put or _proxy_applies(self.endpoint_url):
            return None
        try:
            if self._access_key:  # the same keys the boto3 session will be made from
                creds: Any = s3rest.StaticCredentials(self._access_key, self._secret)
            else:
                creds = self.session.get_credentials()
                if creds is None:
                    return None  # boto3 reports the missing credentials
            layout = self._light_layout()
            if layout is not None:
                return self._make_rest(layout, creds)
            client = self.client
            return self._make_rest(s3rest.Layout.from_presigned(self._presigned(client)), creds)
        except XConError:
            raise
        except Exception as exc:  # any surprise: boto3 does the PUTs
            log.warning("s3: fast path disabled: %s", self._scrub(str(exc)))
            return None

    def _prober(self) -> Any:
        """What connect()/check() HEAD the bucket with: a Rest with short timeouts beside
        the fast path, else a boto3 client with short timeouts and one attempt."""
        with self._lock:
            if self._probe is None:
                fast = self._fast_path()
                if fast is not None:
                    self._probe = self._make_rest(fast.layout, fast.signer.credentials, short=True)
                else:
                    try:
                        self._probe = self._make_client(min(5.0, self.connect_timeout), min(10.0, self.read_timeout), 1, 2)
                    except bce.BotoCoreError as exc:
                        raise self._classify(exc, "connect", None) from None
            return self._probe

    def _mark_active(self, upload_id: str, on: bool) -> None:
        with self._active_lock:
            (self._active.add if on else self._active.discard)(upload_id)

    def _active_ids(self) -> set[str]:
        with self._active_lock:
            return set(self._active)

    def _part_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part")
            return self._pool

    def _key(self, rel: str) -> str:
        """The object key of `rel` (checked), or PermanentError for a name S3 cannot hold."""
        key = remote_join(self.prefix, check_rel(rel))
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError:
            raise PermanentError(
                f"{rel!r}: the name is not valid UTF-8 and S3 keys must be; rename the file"
            ) from None
        if len(raw) > MAX_KEY_BYTES:
            raise PermanentError(f"{rel!r}: the key is {len(raw)} bytes long, S3 allows {MAX_KEY_BYTES}")
        return key

    def _dir(self, rel: str) -> str:
        """The key prefix of everything under folder `rel` ('' = the whole root)."""
        if rel == "":
            return self.prefix + "/" if self.prefix else ""
        return self._key(rel) + "/"

    def _rel(self, key: str) -> str | None:
        """Key -> relative path, or None for keys that are no file of ours."""
        root = self._dir("")
        if not key.startswith(root) or key.endswith("/"):
            return None
        rel = key[len(root) :]
        try:
            return check_rel(rel)
        except UnsafePath:
            log.warning("s3: skipping key %r: not a clean path", key)
            return None

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"

    def _classify(self, exc: BaseException, what: str, key: str | None) -> XConError:
        """Map a botocore/network error to TransientError / PermanentError / RemoteNotFound."""
        where = self._where(key)
        if isinstance(exc, XConError):
            return exc
        if isinstance(exc, bce.ClientError):
            code, status = error_code(exc), _status(exc)
            message = exc.response.get("Error", {}).get("Message") or ""
            text = self._scrub(f"{what}: {where}: {code or status}{': ' + message if message else ''}")
            if code in _NOT_FOUND_CODES:
                return RemoteNotFound(text)
            if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
                return TransientError(text)
            return PermanentError(text)
        if isinstance(exc, bce.HTTPClientError) and isinstance(exc.kwargs.get("error"), _FileChanged):
            return TransientError(f"{what}: {exc.kwargs['error']}; it will be sent again")
        if isinstance(exc, _FileChanged):
            return TransientError(f"{what}: {exc}; it will be sent again")
        if isinstance(exc, bce.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return PermanentError(self._scrub(f"{what}: {where}: TLS certificate rejected: {exc}"))
        # ssl is imported by whoever made a TLS connection; another thread may be
        # importing it right now, and a half-imported module lacks the class
        # (seen: an AttributeError here failed a delete during a torture run).
        cert_error = getattr(sys.modules.get("ssl"), "SSLCertVerificationError", None)
        if cert_error is not None and isinstance(exc, cert_error):
            return PermanentError(self._scrub(f"{what}: {where}: TLS certificate rejected: {exc}"))
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return PermanentError(
                f"{what}: {where}: no usable AWS credentials (set access_key_id and secret_access_key, or profile)"
            )
        if isinstance(exc, (bce.ProfileNotFound, bce.ParamValidationError, bce.NoRegionError, bce.UnknownKeyError)):
            return PermanentError(self._scrub(f"{what}: {where}: {exc}"))
        # urllib3 may let one through (half-imported module: as for ssl above)
        http_error = getattr(sys.modules.get("http.client"), "HTTPException", None)
        if isinstance(exc, (bce.BotoCoreError, OSError)) or (http_error is not None and isinstance(exc, http_error)):
            # timeouts, refused/reset connections, unreachable endpoints, credential refresh
            return TransientError(self._scrub(f"{what}: {where}: {type(exc).__name__}: {exc}"))
        return PermanentError(self._scrub(f"{what}: {where}: {type(exc).__name__}: {exc}"))

    def _call(self, what: str, key: str | None, fn: Callable[..., Any], **kw: Any) -> Any:
        try:
            return fn(**kw)
        except Exception as exc:
            raise self._classify(exc, what, key) from exc

    def _sse_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.sse != "none":
            args["ServerSideEncryption"] = self.sse
        if self.sse == "aws:kms" and self.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        return args

    def _etag_is_md5(self) -> bool:
        return self.sse != "aws:kms"

    # -- lifecycle -----------------------------------------------------------------------
    def connect(self) -> None:
        self._head_bucket("connect")

    def check(self) -> None:
        self._head_bucket("check")

    def _head_bucket(self, what: str) -> None:
        where = f"{self._where(None)}{' at ' + self.endpoint_url if self.endpoint_url else ''}"
        try:
            probe = self._prober()
            if isinstance(probe, s3rest.Rest):
                probe.head_bucket()
            else:
                probe.head_bucket(Bucket=self.bucket)
        except bce.ClientError as exc:
            code, status = error_code(exc), _status(exc)
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
            if headers.get("x-amz-bucket-region") and status in (301, 307, 400):
                raise PermanentError(
                    f"{what}: bucket {where} is in region {headers['x-amz-bucket-region']}: set region"
                ) from None
            if code in ("404", "NoSuchBucket"):
                raise PermanentError(f"{what}: bucket {where} does not exist") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise PermanentError(
                    f"{what}: access to bucket {where} denied: check access_key_id/secret_access_key "
                    "(or profile) and the bucket policy"
                ) from None
            if code in ("301", "PermanentRedirect") or status in (301, 307):
                raise PermanentError(f"{what}: bucket {where} is in another region: set region") from None
            raise self._classify(exc, what, None) from None
        except Exception as exc:
            err = self._classify(exc, what, None)
            if isinstance(err, TransientError):
                raise TransientError(f"{what}: cannot reach {where}: {err}") from None
            raise err from None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            things = [c for c in (self._client, self._probe, self._fast) if c is not None]
            self._client = self._probe = self._fast = None
            self._fast_made = False
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for c in things:
            c.close()

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        extra = []
        if self.endpoint_url:
            extra.append(f"at {self.endpoint_url}")
        if self.region:
            extra.append(f"region {self.region}")
        if self.profile:
            extra.append(f"profile {self.profile}")
        return " ".join([where, *extra])

    # -- send ----------------------------------------------------------------------------
    def _metadata(self, f: LocalFile, md5_hex: str | None, part_size: int | None) -> dict[str, str]:
        meta = {
            "size": str(f.size),
            "mtime": format_mtime(f.mtime_ns),
            "mode": f"{f.mode & 0o7777:04o}",
            "uid": str(f.uid),
            "gid": str(f.gid),
        }
        if md5_hex is not None:
            meta["md5"] = md5_hex
        if part_size is not None:
            meta["part-size"] = str(part_size)
        return meta

    @staticmethod
    def _content_type(rel: str) -> str:
        """mimetypes' guess for the name, looked up once per suffix (see _guess_type)."""
        name = rel.rpartition("/")[2]
        last = name.rfind(".")
        if last <= 0 or ":" in name:  # no extension, a dot-file, or what guess_type reads as a URL
            return _guess_type(name)
        before = name.rfind(".", 0, last)
        return _guess_type("x" + (name[before:] if before > 0 else name[last:]))

    def send(self, f: LocalFile, ctx: TransferContext) -> SendResult:
        key = self._key(f.rel)
        what = f"send {f.rel!r}"
        if f.size > MAX_OBJECT:
            raise PermanentError(f"{what}: {self._where(key)}: {f.size} bytes is over S3's 5 TiB object limit")
        if ctx.stop.is_set():
            raise TransientError(f"{what}: stopped")
        state = self._usable_state(ctx, f, key)
        if f.size < self.multipart_threshold:
            if state is not None:  # the file shrank under the threshold: its old upload is useless
                self._drop_state(ctx, state, "file changed")
            return self._send_single(f, key, ctx, what)
        return self._send_multipart(f, key, ctx, what, state)

    def _verify(self, what: str, key: str, etag: str | None, size: int | None, expect: set[str], want_size: int) -> None:
        """Check a stored object against what we sent; md5-shaped ETags must match."""
        if size is not None and size != want_size:
            raise PermanentError(f"{what}: {self._where(key)} holds {size} bytes after upload, expected {want_size}")
        if etag and self._etag_is_md5() and (_MD5_RE.fullmatch(etag) or _MULTI_RE.fullmatch(etag)):
            if etag not in expect:
                raise PermanentError(
                    f"{what}: {self._where(key)}: ETag {etag} after upload does not match the data sent"
                )

    def _send_single(self, f: LocalFile, key: str, ctx: TransferContext, what: str) -> SendResult:
        """One PUT. Small files are read once into memory; larger ones are hashed, then streamed."""
        sent = 0

        def on_sent(n: int) -> None:  # report each MiB, not each socket write
            nonlocal sent
            before, sent = sent, sent + n
            if sent // PROGRESS_STEP != before // PROGRESS_STEP or sent >= f.size:
                ctx.report(min(sent, f.size), f.size)

        if f.size <= SMALL_MAX:
            digest, etag = self._put_small(f, key, what, on_sent)
        else:
            digest, etag = self._put_streamed(f, key, ctx, what, on_sent)
        self._verify(what, key, etag, None, {digest.hex()}, f.size)
        if sent < f.size or f.size == 0:
            ctx.report(f.size, f.size)
        return SendResult(size=f.size, etag=etag, bytes_sent=f.size)

    def _put_small(self, f: LocalFile, key: str, what: str, on_sent: Callable[[int], None]) -> tuple[bytes, str | None]:
        """Read the file whole, PUT it with Content-MD5; (md5 digest, ETag). The fast path
        when there is one (the hot path of an initial sync: keep it lean), else boto3."""
        data = _read_whole(f)
        if len(data) != f.size:
            raise TransientError(f"{what}: the file changed size while being read; it will be sent again")
        digest = hashlib.md5(data).digest()
        try:
            fast = self._fast_path()
            meta = self._metadata(f, digest.hex(), None)
            if fast is not None:
                headers = {"content-md5": _b64(digest), "content-type": self._content_type(f.rel), **self._sse_h}
                for k, v in meta.items():
                    headers["x-amz-meta-" + k] = v
                return digest, _etag(fast.put(key, data, headers, on_sent if f.size > PROGRESS_STEP else None))
            resp = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=_Body(data, on_sent), ContentMD5=_b64(digest),
                Metadata=meta, ContentType=self._content_type(f.rel), **self._sse_args(),
            )
            return digest, _etag(resp.get("ETag"))
        except Exception as exc:
            raise self._classify(exc, what, key) from exc

    def _put_streamed(self, f: LocalFile, key: str, ctx: TransferContext, what: str,
                      on_sent: Callable[[int], None]) -> tuple[bytes, str | None]:
        """Hash the file, then stream it in one boto3 PUT; (md5 digest, ETag)."""
        with open_source(f) as fh:  # FileNotFoundError, SourceChanged...: the caller's to see
            h = hashlib.md5()
            n = 0
            while chunk := fh.read(PROGRESS_STEP):
                h.update(chunk)
                n += len(chunk)
                if ctx.stop.is_set():
                    raise TransientError(f"{what}: stopped")
            if n != f.size:
                raise TransientError(f"{what}: the file changed size while being read; it will be sent again")
            digest = h.digest()
            try:
                resp = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=_FileBody(fh, f.size, on_sent), ContentMD5=_b64(digest),
                    Metadata=self._metadata(f, digest.hex(), None), ContentType=self._content_type(f.rel),
                    **self._sse_args(),
                )
            except Exception as exc:
                raise self._classify(exc, what, key) from exc
        return digest, _etag(resp.get("ETag"))

    # -- multipart + resume ----------------------------------------------------------
    def _usable_state(self, ctx: TransferContext, f: LocalFile, key: str) -> dict | None:
        """The saved upload of this very file version, or None (aborting a stale one)."""
        state = ctx.resume.load()
        if not state or not state.get("upload_id"):
            return None
        same = (
            state.get("bucket") == self.bucket
            and state.get("key") == key
            and state.get("size") == f.size
            and state.get("mtime_ns") == f.mtime_ns
            and state.get("ino") == f.ino
            and isinstance(state.get("part_size"), int)
            and MIN_PART <= state["part_size"] <= MAX_PART
            and math.ceil(f.size / state["part_size"]) <= MAX_PARTS
        )
        if same:
            return state
        self._drop_state(ctx, state, "file changed")
        return None

    def _drop_state(self, ctx: TransferContext, state: dict, why: str) -> None:
        """Abort the saved upload (if it is in our bucket) and forget it."""
        self._abort_saved(state, why)
        ctx.resume.clear()

    def _abort_saved(self, state: dict, why: str) -> None:
        """Abort the multipart upload a resume state names, if it is in our bucket."""
        if state.get("bucket", self.bucket) == self.bucket and state.get("key") and state.get("upload_id"):
            log.info("s3: aborting upload of %s (%s)", state["key"], why)
            self._abort(state["key"], state["upload_id"])

    def discard(self, rel: str, state: dict | None) -> None:
        """Abort the multipart upload `state` names (single PUTs leave nothing behind)."""
        if not state:
            return
        try:
            self._abort_saved(state, f"{rel!r} will not be sent")
        except PermanentError as exc:  # not this action's failure; the upload stays listed
            log.warning("s3: cannot abort the upload of %r: %s", rel, exc)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except bce.ClientError as exc:
            if error_code(exc) not in ("NoSuchUpload", "404"):
                raise self._classify(exc, "abort upload", key) from exc
        except Exception as exc:
            raise self._classify(exc, "abort upload", key) from exc

    def _list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """{part number: (etag, size)} the server holds, or None if the upload is gone."""
        parts: dict[int, tuple[str, int]] = {}
        try:
            pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
            for page in pages:
                for p in page.get("Parts", []):
                    parts[int(p["PartNumber"])] = (_etag(p["ETag"]) or "", int(p["Size"]))
        except bce.ClientError as exc:
            if error_code(exc) in ("NoSuchUpload", "404"):
                return None
            raise self._classify(exc, "list parts", key) from exc
        except Exception as exc:
            raise self._classify(exc, "list parts", key) from exc
        return parts

    def _send_multipart(self, f: LocalFile, key: str, ctx: TransferContext, what: str, state: dict | None) -> SendResult:
        try:
            fh = open_source(f)
        except FileNotFoundError:
            if state is not None:  # this version of the file is gone for good
                self._drop_state(ctx, state, "file gone")
            raise
        with fh:
            for attempt in (1, 2):
                have: dict[int, tuple[str, int]] = {}
                if state is not None:
                    listed = self._list_parts(key, state["upload_id"])
                    if listed is None:
                        log.info("s3: upload of %s vanished from the server; starting again", key)
                        ctx.resume.clear()
                        state = None
                    else:
                        have = listed
                if state is None:
                    state = self._create_upload(f, key, ctx, what)
                upload_id = state["upload_id"]
                self._mark_active(upload_id, True)
                try:
                    return self._upload(f, fh, key, ctx, what, state, have)
                except _StaleParts as exc:
                    # Same size, mtime and inode, other bytes: start over rather than
                    # replace parts (rclone serve s3 cannot replace a part).
                    self._drop_state(ctx, state, str(exc))
                    if attempt == 2:
                        raise TransientError(f"{what}: {exc}; it will be sent again") from None
                    state = None
                    fh.seek(0)
                finally:
                    self._mark_active(upload_id, False)
        raise AssertionError("unreachable")

    def _create_upload(self, f: LocalFile, key: str, ctx: TransferContext, what: str) -> dict:
        part_size = part_size_for(f.size, self.part_size)
        meta = self._metadata(f, None, part_size)
        fast = self._fast_path()
        if fast is not None:  # no boto3 import (~0.3 s of CPU) before the first part goes out
            headers = {"content-type": self._content_type(f.rel), **self._sse_h}
            headers.update({"x-amz-meta-" + k: v for k, v in meta.items()})
            upload_id = self._call(what, key, lambda: fast.create_multipart(key, headers))
        else:
            upload_id = self._call(
                what, key, self.client.create_multipart_upload,
                Bucket=self.bucket, Key=key, ContentType=self._content_type(f.rel), Metadata=meta, **self._sse_args(),
            )["UploadId"]
        state = {
            "bucket": self.bucket, "key": key, "upload_id": upload_id, "size": f.size,
            "mtime_ns": f.mtime_ns, "ino": f.ino, "part_size": part_size, "parts": {},
        }
        _save(ctx, state)
        return state

    def _upload(
        self, f: LocalFile, fh: Any, key: str, ctx: TransferContext, what: str, state: dict,
        have: dict[int, tuple[str, int]],
    ) -> SendResult:
        """Read the file once, in order, into reused buffers; pool threads hash each part
        (Content-MD5) and send the parts the server lacks, in parallel."""
        upload_id, part_size = state["upload_id"], state["part_size"]
        nparts = max(1, math.ceil(f.size / part_size))
        digests: dict[int, bytes] = {}
        etags: dict[int, str] = {}
        done = _Counter()  # bytes known to be on the server (skipped or sent)
        sent = _Counter()  # bytes that crossed the wire this time
        pending: dict[Future, int] = {}
        errors: list[BaseException] = []
        last = {"report": -1, "save": time.monotonic()}
        pool = self._part_pool()
        buffers = _Buffers(part_size)

        def reap(timeout: float | None) -> None:
            if pending:
                finished, _ = wait(list(pending), timeout=timeout, return_when=FIRST_COMPLETED)
                for fut in finished:
                    n = pending.pop(fut)
                    exc = fut.exception()
                    if exc is not None:
                        errors.append(exc)
                    else:
                        digests[n], etags[n] = fut.result()
                        state["parts"][str(n)] = etags[n]
                if finished and time.monotonic() - last["save"] >= STATE_SAVE_EVERY:
                    _save(ctx, state)
                    last["save"] = time.monotonic()
            if done.value != last["report"]:
                last["report"] = done.value
                ctx.report(min(done.value, f.size), f.size)

        def on_sent(n: int) -> None:
            done.add(n)
            sent.add(n)

        def part_done(buf: bytearray) -> Callable[[Future], None]:
            def release(_fut: Future) -> None:
                buffers.give(buf)
                self._slots.release()
            return release

        # Parts of this send in memory at once: `concurrency`, fewer when parts are huge.
        limit = max(2, min(self.concurrency, SEND_MEMORY // part_size))
        stopped = False
        try:
            for n in range(1, nparts + 1):
                while len(pending) >= limit:
                    reap(PROGRESS_POLL)
                while not self._slots.acquire(timeout=PROGRESS_POLL):
                    reap(0)
                if ctx.stop.is_set() or errors:
                    self._slots.release()
                    stopped = ctx.stop.is_set()
                    break
                handed = False  # once submitted, the part's task gives back the slot and buffer
                buf = buffers.take()
                try:
                    length = min(part_size, f.size - (n - 1) * part_size)
                    view = memoryview(buf)[:length]
                    if _read_into(fh, view) != length:
                        raise _FileChanged("the file got shorter while it was being sent")
                    old = have.get(n)
                    if old:
                        digest = hashlib.md5(view).digest()
                        if old[1] != length or (self._etag_is_md5() and old[0] != digest.hex()):
                            raise _StaleParts(f"part {n} on the server does not match the file")
                        digests[n], etags[n] = digest, old[0]
                        done.add(length)
                    else:
                        fut = pool.submit(self._hash_and_put_part, key, upload_id, n, view, on_sent)
                        handed = True
                        pending[fut] = n
                        fut.add_done_callback(part_done(buf))
                finally:
                    if not handed:
                        buffers.give(buf)
                        self._slots.release()
                reap(0)
            while pending:
                reap(PROGRESS_POLL)
            if not stopped and not errors and fh.read(1):
                raise _FileChanged("the file grew while it was being sent")
        except BaseException as exc:
            while pending:  # never leave part threads running behind our back
                reap(PROGRESS_POLL)
            if isinstance(exc, _FileChanged):
                self._drop_state(ctx, state, "file changed during upload")
                raise TransientError(f"{what}: {exc}; it will be sent again") from None
            if isinstance(exc, OSError):  # local read error: keep the upload for a retry
                _save(ctx, state)
            raise
        _save(ctx, state)
        if stopped:
            raise TransientError(f"{what}: stopped after {len(etags)} of {nparts} parts; the upload will resume")
        if errors:
            self._fail_upload(ctx, state, what, key, errors[0])
        try:
            completed = self._complete(key, upload_id, [(n, etags[n]) for n in range(1, nparts + 1)])
        except Exception as exc:
            self._fail_upload(ctx, state, what, key, exc)
        ctx.resume.clear()
        etag = self._verify_multipart(what, key, f, fh, [digests[n] for n in range(1, nparts + 1)], completed)
        ctx.report(f.size, f.size)
        return SendResult(size=f.size, etag=etag, bytes_sent=sent.value)

    def _complete(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str | None:
        """CompleteMultipartUpload (fast path, else boto3); the object's ETag, unquoted."""
        fast = self._fast_path()
        if fast is not None:
            return _etag(fast.complete_multipart(key, upload_id, parts))
        resp = self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in parts]},
        )
        return _etag(resp.get("ETag"))

    def _verify_multipart(
        self, what: str, key: str, f: LocalFile, fh: Any, digests: list[bytes], completed: str | None
    ) -> str | None:
        """Check the finished multipart object; return its ETag.

        Each part's bytes were checked by the server (Content-MD5) and their lengths add up
        to the file's size. CompleteMultipartUpload answers with the object's ETag, which S3
        (and MinIO, Ceph, rclone serve s3) make from the part MD5s ("md5-of-md5s-N"): when
        it equals ours, the object is exactly our parts and needs no more requests. Why not a
        HEAD each time: rclone serve s3 answers a HEAD of a fresh multipart object by reading
        and hashing the whole object (~2 ms of server CPU per MiB, seconds of wall time for
        1 GiB), and its plain-MD5 ETag would need a second hashing pass over the file here
        too. Only when the completion's ETag cannot be checked (another form, or SSE-KMS)
        is the object HEADed: its size checked and an MD5-shaped ETag compared, hashing the
        file again when the server reports a plain MD5.
        """
        expect = multipart_etag(digests)
        if self._etag_is_md5() and completed == expect:
            return completed
        if self._etag_is_md5() and completed and _MULTI_RE.fullmatch(completed):
            raise PermanentError(f"{what}: {self._where(key)}: ETag {completed} after upload does not match the data sent")
        head = self._call(what, key, self.client.head_object, Bucket=self.bucket, Key=key)
        etag = _etag(head.get("ETag"))
        expected = {expect}
        if self._etag_is_md5() and etag and _MD5_RE.fullmatch(etag):
            expected.add(self._whole_md5(fh, f, what))
        self._verify(what, key, etag, int(head["ContentLength"]), expected, f.size)
        return etag or completed

    def _whole_md5(self, fh: Any, f: LocalFile, what: str) -> str:
        """The MD5 of the whole file, read again (only for servers that report a multipart
        object's ETag as a plain MD5 and did not answer the completion with the md5-N form)."""
        h = hashlib.md5()
        fh.seek(0)
        while chunk := fh.read(8 * MiB):
            h.update(chunk)
        st = os.fstat(fh.fileno())
        if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
            raise TransientError(f"{what}: the file changed while it was being sent; it will be sent again")
        return h.hexdigest()

    def _fail_upload(self, ctx: TransferContext, state: dict, what: str, key: str, exc: BaseException) -> NoReturn:
        """Raise for a failed part/complete: keep the upload if a retry can use it, else abort it."""
        err = self._classify(exc, what, key)
        code = error_code(exc)
        if code in ("NoSuchUpload", "InvalidPart", "InvalidPartOrder"):
            ctx.resume.clear()  # the upload is gone or unusable: next time starts afresh
            if code != "NoSuchUpload":
                self._abort(key, state["upload_id"])
            raise TransientError(f"{err}; the upload starts again") from exc
        if isinstance(err, PermanentError):
            try:
                self._drop_state(ctx, state, "permanent failure")
            except XConError as abort_exc:
                log.warning("s3: could not abort upload of %s: %s", key, abort_exc)
        raise err from exc

    def _hash_and_put_part(
        self, key: str, upload_id: str, n: int, data: memoryview, on_sent: Callable[[int], None]
    ) -> tuple[bytes, str]:
        """On a pool thread: the part's MD5 (hashlib lets go of the GIL, so parts hash in
        parallel with the reading), then the part itself; (digest, ETag)."""
        digest = hashlib.md5(data).digest()
        return digest, self._put_part(key, upload_id, n, data, digest, on_sent)

    def _put_part(
        self, key: str, upload_id: str, n: int, data: bytes | memoryview, digest: bytes,
        on_sent: Callable[[int], None],
    ) -> str:
        """UploadPart with Content-MD5: through the fast path when there is one (1 MiB
        writes straight from the buffer), else boto3. Raises ClientError/OSError."""
        fast = self._fast_path()
        if fast is not None:
            return _etag(fast.upload_part(key, upload_id, n, data, _b64(digest), on_sent)) or ""
        resp = self.client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n,
            Body=_Body(data, on_sent), ContentMD5=_b64(digest),
        )
        return _etag(resp.get("ETag")) or ""  # the server checked Content-MD5

    def cleanup(self, keep: list[dict]) -> None:
        """Abort every multipart upload under our prefix that no resume state in `keep` names.

        Call at start-up (after loading resume states) and after a run. Uploads this
        connection is sending right now are never aborted. Everything under the prefix
        is taken to be ours: give each daemon its own prefix.
        """
        wanted = {s.get("upload_id") for s in keep if isinstance(s, dict)}
        aborted = 0
        for up in self.uploads():
            if up["upload_id"] not in wanted and up["upload_id"] not in self._active_ids():
                self._abort(up["key"], up["upload_id"])
                aborted += 1
        if aborted:
            log.info("s3: aborted %d abandoned multipart upload(s) under %s", aborted, self._where(self._dir("")))

    def local_etags(self, f: LocalFile, part_size: int | None = None) -> set[str]:
        """ETags an object holding this local file may show: its MD5 and, when it would
        be (or was, with `part_size` from stat's metadata) sent in parts, the multipart form.

        Lets the first sync compare a listing with local files without downloading.
        The file is read as a send reads it (connections/source.py).
        """
        size = f.size
        use_parts = part_size or (part_size_for(size, self.part_size) if size >= self.multipart_threshold else 0)
        whole = hashlib.md5()
        digests: list[bytes] = []
        with open_source(f) as fh:
            while True:
                chunk = fh.read(use_parts or 8 * MiB)
                if not chunk:
                    break
                whole.update(chunk)
                digests.append(hashlib.md5(chunk).digest())
        out = {whole.hexdigest()}
        if use_parts:
            out.add(multipart_etag(digests or [hashlib.md5(b"").digest()]))
        return out

    # -- delete / move / stat / list -------------------------------------------------
    def _keys_under(self, prefix: str) -> Iterator[dict]:
        """Every object under a key prefix ({"Key", "Size", "ETag"}), one page at a time;
        through the fast path when there is one (a first sync lists before any upload, and
        needs no botocore for it). Keys the server returns outside `prefix` are dropped:
        delete and move act on what this yields."""
        return within_listing(self._listed(prefix), prefix, _key_of, f"s3: {self._where(None)}")

    def _listed(self, prefix: str) -> Iterator[dict]:
        """ListObjectsV2 as the server answers it (see _keys_under)."""
        try:
            fast = self._fast_path()
            if fast is not None:
                for key, size, etag, modified in fast.list_objects_stamped(prefix):
                    yield {"Key": key, "Size": size, "ETag": etag, "LastModified": modified}
                return
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                yield from page.get("Contents", []) or []
        except Exception as exc:
            raise self._classify(exc, "list", prefix) from exc

    def _delete_keys(self, keys: list[str], what: str, folder: str | None = None) -> None:
        """DeleteObjects in batches of at most DELETE_BATCH; missing keys are fine.

        `folder` is a key that may name no object but a folder of a store backed by a
        file system, which may refuse to remove it: rclone serve s3 answers InternalError
        while the folder holds a file it does not list (the temp file of a multipart
        upload it forgot when it restarted). No object has that key: nothing to delete."""
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            resp = self._call(
                what, batch[0], self.client.delete_objects,
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = [e for e in resp.get("Errors", []) or [] if e.get("Code") not in ("NoSuchKey",)]
            if errors and folder is not None and {e.get("Key") for e in errors} == {folder} \
                    and self._head(folder, what) is None:
                log.debug("s3: %s: the store keeps folder %s (no object has that key)", what, folder)
                errors = []
            if errors:
                e = errors[0]
                fake = bce.ClientError({"Error": {"Code": e.get("Code", ""), "Message": e.get("Message", "")}}, "DeleteObjects")
                raise self._classify(fake, what, e.get("Key")) from None

    def delete(self, rel: str) -> None:
        """Delete key `rel` and every key under `rel/` (never `rel2/` or `rel.bak`)."""
        key = self._key(rel)
        what = f"delete {rel!r}"
        batch: list[str] = []
        for obj in self._keys_under(key + "/"):
            batch.append(obj["Key"])
            if len(batch) == DELETE_BATCH:
                self._delete_keys(batch, what)
                batch = []
        # The key itself goes last: stores backed by a file system (rclone serve s3)
        # fail to delete "dir" while "dir/..." still exists, and succeed once it is gone.
        self._delete_keys(batch + [key], what, folder=key)

    def move(self, src: str, dest: str) -> None:
        """Server-side copy then delete; a folder moves every object under `src/`.

        Objects already under `dest/` that are not under `src/` are left alone: a move
        retried after a crash halfway must not delete what it had already moved.
        """
        a, b = self._key(src), self._key(dest)
        what = f"move {src!r} -> {dest!r}"
        if a == b:
            if self.stat(src) is None and next(self._keys_under(a + "/"), None) is None:
                raise RemoteNotFound(f"{what}: {self._where(a)} is not there")
            return
        if b.startswith(a + "/") or a.startswith(b + "/"):
            raise PermanentError(f"{what}: cannot move a folder into itself or over its parent")
        head = self._head(a, what)
        if head is not None:
            self._copy(a, b, int(head["ContentLength"]), what, head)
            self._call(what, a, self.client.delete_object, Bucket=self.bucket, Key=a)
            return
        moved = 0
        page: list[dict] = []
        for obj in self._keys_under(a + "/"):
            page.append(obj)
            if len(page) == DELETE_BATCH:
                self._move_page(page, a, b, what)
                moved += len(page)
                page = []
        if page:
            self._move_page(page, a, b, what)
            moved += len(page)
        if not moved:
            raise RemoteNotFound(f"{what}: nothing at {self._where(a)}")

    def _move_page(self, objs: list[dict], a: str, b: str, what: str) -> None:
        """Copy a page of objects (small ones in parallel), then delete their sources."""
        small = [o for o in objs if int(o["Size"]) <= self.copy_threshold]
        big = [o for o in objs if int(o["Size"]) > self.copy_threshold]
        pool = self._part_pool()
        futures = [pool.submit(self._copy, o["Key"], b + o["Key"][len(a) :], int(o["Size"]), what) for o in small]
        errors = [f.exception() for f in futures if f.exception() is not None]
        for o in big:  # these use the part pool themselves: copy them from this thread
            self._copy(o["Key"], b + o["Key"][len(a) :], int(o["Size"]), what)
        if errors:
            raise errors[0]
        self._delete_keys([o["Key"] for o in objs], what)

    def _head(self, key: str, what: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except bce.ClientError as exc:
            if error_code(exc) in _NOT_FOUND_CODES or _status(exc) == 404:
                return None
            raise self._classify(exc, what, key) from exc
        except Exception as exc:
            raise self._classify(exc, what, key) from exc

    def _copy(self, src: str, dest: str, size: int, what: str, head: dict | None = None) -> None:
        """Server-side copy keeping metadata; multipart copy above copy_threshold (5 GiB)."""
        if size <= self.copy_threshold:
            self._call(
                what, dest, self.client.copy_object,
                Bucket=self.bucket, Key=dest, CopySource={"Bucket": self.bucket, "Key": src},
                MetadataDirective="COPY", **self._sse_args(),
            )
            return
        head = head or self._head(src, what)
        if head is None:
            raise RemoteNotFound(f"{what}: {self._where(src)} vanished while being moved")
        self._copy_multipart(src, dest, size, what, head)

    def _copy_multipart(self, src: str, dest: str, size: int, what: str, head: dict) -> None:
        """Copy part by part with UploadPartCopy, or, where the server gets that wrong,
        through this machine (ranged GET + UploadPart); either way metadata is kept."""
        part_size = part_size_for(size, self.part_size)
        ranges = [(n + 1, start, min(size, start + part_size) - 1) for n, start in enumerate(range(0, size, part_size))]
        done = False
        if self._part_copy_works is not False:
            done = self._copy_parts(src, dest, ranges, what, head, self._copy_part)
            if not done:
                self._part_copy_works = False
                log.warning("s3: %s does not copy parts right (UploadPartCopy); copying through this machine",
                            self.endpoint_url or "the server")
        if not done and not self._copy_parts(src, dest, ranges, what, head, self._relay_part):
            raise PermanentError(f"{what}: {self._where(dest)}: the server stored parts of the wrong size")
        got = self._head(dest, what)
        if got is None or int(got["ContentLength"]) != size:
            raise PermanentError(f"{what}: {self._where(dest)} has the wrong size after a multipart copy")

    def _copy_parts(
        self, src: str, dest: str, ranges: list[tuple[int, int, int]], what: str, head: dict,
        part_fn: Callable[[str, str, str, int, int, int], str],
    ) -> bool:
        """One multipart upload of `dest` made of `ranges` of `src`; False (and aborted) if
        the server stored a part of the wrong size or does not implement part copy."""
        extra = {"ContentType": head["ContentType"]} if head.get("ContentType") else {}
        resp = self._call(
            what, dest, self.client.create_multipart_upload,
            Bucket=self.bucket, Key=dest, Metadata=_meta_lower(head.get("Metadata")), **extra, **self._sse_args(),
        )
        upload_id = resp["UploadId"]
        self._mark_active(upload_id, True)
        try:
            pool = self._part_pool()
            futs = {pool.submit(part_fn, src, dest, upload_id, n, lo, hi): n for n, lo, hi in ranges}
            wait(futs)
            for fut in futs:
                exc = fut.exception()
                if exc is not None and error_code(exc) == "NotImplemented" and part_fn == self._copy_part:
                    self._abort(dest, upload_id)
                    return False
                if exc is not None:
                    raise exc
            etags = {futs[f]: f.result() for f in futs}
            # rclone serve s3 (1.75) answers UploadPartCopy with 200 but stores an empty part.
            listed = self._list_parts(dest, upload_id) or {}
            if any(listed.get(n, ("", -1))[1] != hi - lo + 1 for n, lo, hi in ranges):
                self._abort(dest, upload_id)
                return False
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=dest, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{etags[n]}"'} for n, _lo, _hi in ranges]},
            )
            return True
        except Exception as exc:
            try:
                self._abort(dest, upload_id)
            except XConError as abort_exc:
                log.warning("s3: could not abort copy upload of %s: %s", dest, abort_exc)
            raise self._classify(exc, what, dest) from exc
        finally:
            self._mark_active(upload_id, False)

    def _copy_part(self, src: str, dest: str, upload_id: str, n: int, lo: int, hi: int) -> str:
        resp = self.client.upload_part_copy(
            Bucket=self.bucket, Key=dest, UploadId=upload_id, PartNumber=n,
            CopySource={"Bucket": self.bucket, "Key": src}, CopySourceRange=f"bytes={lo}-{hi}",
        )
        return _etag(resp.get("CopyPartResult", {}).get("ETag")) or ""

    def _relay_part(self, src: str, dest: str, upload_id: str, n: int, lo: int, hi: int) -> str:
        """Copy one part through this machine: ranged GET, then UploadPart with Content-MD5."""
        # No self._slots here: this runs on a pool thread, and sends hold slots while
        # waiting for pool threads. The pool's size bounds the memory instead.
        body = self.client.get_object(Bucket=self.bucket, Key=src, Range=f"bytes={lo}-{hi}")["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        if len(data) != hi - lo + 1:
            raise TransientError(f"copy {self._where(src)}: short read of part {n}")
        return self._put_part(dest, upload_id, n, data, hashlib.md5(data).digest(), lambda _n: None)

    def stat(self, rel: str) -> RemoteEntry | None:
        """HEAD one object: size, ETag and, from user metadata, mtime and mode."""
        key = self._key(rel)
        head = self._head(key, f"stat {rel!r}")
        return None if head is None else _entry_from_head(rel, head)

    def list(self, rel: str = "") -> Iterator[RemoteEntry]:
        """Every object under folder `rel`, paged: size, ETag and the time the server
        stored it (mtime_is_stored; listings carry no user metadata, so neither our
        mtime nor the mode: stat() has those)."""
        for obj in self._keys_under(self._dir(rel)):
            r = self._rel(obj["Key"])
            if r is not None:
                stored = stored_ns(obj.get("LastModified"))
                yield RemoteEntry(r, int(obj["Size"]), stored, None, _etag(obj.get("ETag")),
                                  mtime_is_stored=stored is not None)

    # -- reads, copies, versions -------------------------------------------------------
    def read_range(self, rel: str, offset: int, length: int, *, expect: RemoteEntry | None = None) -> bytes:
        """A ranged GET; with `expect`, If-Match on its ETag (412: RemoteChanged), and the
        ETag of the answer checked too, for a server that ignores If-Match."""
        check_range(offset, length)
        key = self._key(rel)
        etag = expect.etag if expect is not None else None
        if expect is not None and not etag:
            raise RemoteChanged(f"read {rel!r}: no ETag to hold the read to the version expected")
        return self._get_range(f"read {rel!r}", key, offset, length, etag=etag)

    def _get_range(self, what: str, key: str, offset: int, length: int, *, etag: str | None = None,
                   version: str | None = None) -> bytes:
        """GET bytes [offset, offset+length) of `key` (of one `version`): b"" past the end."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if etag:
            args["IfMatch"] = f'"{etag}"'
        if version:
            args["VersionId"] = version
        if length == 0:  # an empty Range is no valid header: HEAD says whether it is there
            return self._past_end(what, key, etag, version)
        args["Range"] = f"bytes={offset}-{offset + length - 1}"
        try:
            resp = self.client.get_object(**args)
        except bce.ClientError as exc:
            code, status = error_code(exc), _status(exc)
            if code == "InvalidRange" or status == 416:
                return self._past_end(what, key, etag, version)
            raise self._read_error(exc, what, key) from exc
        except Exception as exc:
            raise self._classify(exc, what, key) from exc
        if etag and _etag(resp.get("ETag")) not in (None, etag):
            resp["Body"].close()
            raise RemoteChanged(f"{what}: {self._where(key)} is another version now")
        try:
            return resp["Body"].read()
        except Exception as exc:
            raise self._classify(exc, what, key) from exc
        finally:
            resp["Body"].close()

    def _past_end(self, what: str, key: str, etag: str | None, version: str | None) -> bytes:
        """Nothing to GET (a range at or past the end: 416; length 0): b"", once a HEAD
        under the same conditions shows the object (that version) is there."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if etag:
            args["IfMatch"] = f'"{etag}"'
        if version:
            args["VersionId"] = version
        try:
            head = self.client.head_object(**args)
        except bce.ClientError as exc:
            raise self._read_error(exc, what, key) from exc
        except Exception as exc:
            raise self._classify(exc, what, key) from exc
        if etag and _etag(head.get("ETag")) not in (None, etag):
            raise RemoteChanged(f"{what}: {self._where(key)} is another version now")
        return b""

    def _read_error(self, exc: bce.ClientError, what: str, key: str) -> XConError:
        """A refused GET or HEAD: 412 is another version now, 405 a delete marker
        (not found); the rest as every S3 error (_classify)."""
        code, status = error_code(exc), _status(exc)
        if code == "PreconditionFailed" or status == 412:
            return RemoteChanged(f"{what}: {self._where(key)} is another version now")
        if code == "MethodNotAllowed" or status == 405:
            return RemoteNotFound(f"{what}: {self._where(key)} is deleted at that version")
        return self._classify(exc, what, key)

    def copy(self, src: str, dest: str) -> None:
        """CopyObject (multipart copy above copy_threshold), metadata kept."""
        a, b = self._key(src), self._key(dest)
        what = f"copy {src!r} -> {dest!r}"
        head = self._head(a, what)
        if head is None:
            raise RemoteNotFound(f"{what}: {self._where(a)} is not there")
        if a != b:
            self._copy(a, b, int(head["ContentLength"]), what, head)

    def size_pool(self, workers: int) -> None:
        """The HTTP connection pool (made on first use) holds a connection per worker."""
        self.workers = max(self.workers, workers)

    def list_versions(self, rel: str) -> Iterator[VersionEntry]:
        """ListObjectVersions of the key `rel`, newest first, delete markers included.
        Only versions of that very key: a prefix listing of "h" rightly holds "h.bak" and
        "h/x" too, so the rule here is stricter than within_listing's (the key itself)."""
        key = self._key(rel)
        for v in self._listed_versions(key):
            if v["Key"] != key:
                continue
            yield VersionEntry(
                rel, v.get("VersionId") or "null", int(v.get("Size", 0) or 0), stored_ns(v.get("LastModified")),
                _etag(v.get("ETag")), latest=bool(v.get("IsLatest")), deleted=v["deleted"],
            )

    def _listed_versions(self, key: str) -> Iterator[dict]:
        """ListObjectVersions under `key` as the server answers it, page by page, each
        page's versions and delete markers (two lists, each newest first) merged: the
        current one first, then by LastModified, newest first. LastModified has whole
        seconds on some servers: versions of the same second keep the server's order,
        before delete markers of that second."""
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key)
            for page in pages:
                both = [{**v, "deleted": False} for v in page.get("Versions", []) or []]
                both += [{**d, "deleted": True} for d in page.get("DeleteMarkers", []) or []]
                both.sort(key=lambda v: (v["Key"], not v.get("IsLatest"), -(stored_ns(v.get("LastModified")) or 0)))
                yield from both
        except Exception as exc:
            raise self._classify(exc, "list versions", key) from exc

    def read_version_range(self, rel: str, version_id: str, offset: int, length: int) -> bytes:
        """A ranged GET of one version (a delete marker or an unknown version: RemoteNotFound)."""
        check_range(offset, length)
        key = self._key(rel)
        return self._get_range(f"read {rel!r} version {version_id!r}", key, offset, length, version=version_id)

    def uploads(self) -> Iterator[dict]:
        """Open multipart uploads under our prefix, paged: {"key", "upload_id"}. Uploads the
        server lists outside it are dropped: cleanup() aborts what this yields."""
        where = self._dir("")
        return within_listing(self._listed_uploads(), where, _upload_key, f"s3: {self._where(None)} uploads")

    def _listed_uploads(self) -> Iterator[dict]:
        """ListMultipartUploads as the server answers it (see uploads)."""
        try:
            fast = self._fast_path()
            if fast is not None:
                for key, upload_id in fast.list_uploads(self._dir("")):
                    yield {"key": key, "upload_id": upload_id}
                return
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self._dir(""))
            for page in pages:
                for u in page.get("Uploads", []) or []:
                    yield {"key": u["Key"], "upload_id": u["UploadId"]}
        except bce.ClientError as exc:
            if error_code(exc) == "NoSuchUpload":  # rclone's answer for a bucket that never had one
                return
            raise self._classify(exc, "list uploads", self._dir("")) from exc
        except Exception as exc:
            raise self._classify(exc, "list uploads", self._dir("")) from exc


def _key_of(obj: dict) -> str:
    return obj["Key"]


def _upload_key(upload: dict) -> str:
    return upload["key"]


def _save(ctx: TransferContext, state: dict) -> None:
    """Save a snapshot (the parts dict keeps changing after the call)."""
    ctx.resume.save({**state, "parts": dict(state.get("parts", {}))})


@functools.lru_cache(maxsize=4096)
def _guess_type(name: str) -> str:
    """mimetypes.guess_type, cached. S3Con._content_type passes "x" plus the name's last two
    extensions (all guess_type looks at: ".tar.gz" is a type plus an encoding), so the
    cache holds one entry per suffix: guess_type costs ~4 us a call, a cache hit ~0.1."""
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def _read_whole(f: LocalFile) -> bytes:
    """The file's bytes, reading one past its size so that a file that grew is noticed.
    A bare descriptor and os.read: a buffered file object costs more than the read
    itself here."""
    size = f.size
    fd = open_source_fd(f)  # FileNotFoundError, SourceChanged...: the caller's to see
    try:
        data = os.read(fd, size + 1)
        while len(data) <= size:
            more = os.read(fd, size + 1 - len(data))
            if not more:
                break
            data += more
        return data
    finally:
        os.close(fd)


def _sse_headers(args: dict[str, str]) -> dict[str, str]:
    """The x-amz-* headers of _sse_args() for the fast PUT path."""
    names = {
        "ServerSideEncryption": "x-amz-server-side-encryption",
        "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
        "StorageClass": "x-amz-storage-class",
    }
    return {names[k]: v for k, v in args.items() if k in names}
