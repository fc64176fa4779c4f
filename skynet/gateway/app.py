"""The gateway's HTTP side: tus 1.0 uploads, ranged downloads, the versions listing.

    OPTIONS /uploads               what the server supports (no token needed)
    POST    /uploads               creation (+ creation-with-upload): Upload-Length, Upload-Metadata
    HEAD    /uploads/<id>          Upload-Offset: where the client resumes
    PATCH   /uploads/<id>          a chunk at Upload-Offset (Upload-Checksum: md5|sha1 <base64>)
    DELETE  /uploads/<id>          termination
    GET     /files/<path>          a file (Range: 206), from the first destination that has it;
                                   ?version=N for an earlier version (1 is the oldest)
    HEAD    /files/<path>          its size and ETag
    GET     /versions/[<prefix>]   JSON: the files under prefix and their versions

Every request but OPTIONS carries `Authorization: Bearer TOKEN`, checked against
[gateway] token_hash by the dashboard's TokenCheck; wrong tokens are throttled per
client address by the dashboard's LoginThrottle (429 once blocked).

Upload-Metadata `filename` is the destination path: a clean relative path
(connections.contract.xcon.check_rel), no control characters, nothing of skynet's
own (names starting with ".skynet": the versions area, temporary files).
Optional metadata `md5` (hex or base64) is the whole file's MD5, checked at the end.

Web stack: Flask + waitress, as the dashboard. The tus protocol itself is written
here: the Python tus servers are either unmaintained (tusfilter 2015, tuswsgi,
flask-tus 2016) or an ASGI router for FastAPI (tuspyserver) that would bring a
second web stack and still lacks the checksum extension and fsynced offsets.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import email.utils
import hashlib
import io
import logging
import re
import threading
import time
from types import SimpleNamespace
from typing import Any, BinaryIO, Iterator

from flask import Flask, Response, jsonify, request

from connections.contract.xcon import RemoteEntry, RemoteNotFound, UnsafePath, XConError, check_rel
from skynet.dashboard.auth import LoginThrottle, TokenCheck
from skynet.gateway.deliver import Deliveries, Destination
from skynet.gateway.staging import ALGORITHMS, Staging, Upload, UploadError, parse_checksum, parse_md5
from skynet.versions.model import Version
from skynet.versions.stores import store_for

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,checksum,termination,expiration"
OCTETS = "application/offset+octet-stream"
PIECE = 4 << 20
MAX_NAME = 1024
# A whole upload up to this size in its creation request lands from memory (_direct):
# waitress keeps bodies this large in memory anyway (server.py, inbuf_overflow).
WHOLE_IN_MEMORY = 16 << 20


def check_name(name: str) -> str:
    """The destination path an upload names, or 400: never outside the root, never hostile."""
    try:
        check_rel(name)
    except UnsafePath:
        raise UploadError(400, f"filename {name!r}: not a clean relative path (no leading '/', '.', '..' or "
                               "empty parts)") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UploadError(400, f"filename {name!r}: control characters are not allowed")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME or any(len(p.encode()) > 255 for p in name.split("/")):
        raise UploadError(400, "filename: too long (255 bytes a part, 1024 in all)")
    if any(p.startswith(".skynet") for p in name.split("/")):
        raise UploadError(400, f"filename {name!r}: names starting with .skynet are skynet's own")
    return name


def parse_metadata(header: str) -> dict[str, str]:
    """tus Upload-Metadata: `key base64,key2 base64` -> {key: text}; 400 if malformed."""
    out: dict[str, str] = {}
    for item in header.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, b64 = item.partition(" ")
        try:
            out[key] = base64.b64decode(b64.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise UploadError(400, f"Upload-Metadata {key!r}: not base64 of UTF-8 text") from None
    return out


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=a-b` / `a-` / `-n` range -> (start, end exclusive); None: the whole
    file (no header, or several ranges, which a server may answer with 200);
    ValueError when it cannot be satisfied (416)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m:
        return None
    a, b = m.groups()
    if not a and not b:
        return None
    if not a:
        n = int(b)
        if n == 0:
            raise ValueError("empty suffix range")
        return max(0, size - n), size
    start = int(a)
    end = min(size, int(b) + 1) if b else size
    if start >= size or end <= start:
        raise ValueError("range outside the file")
    return start, end


class Gateway:
    """The server's state: staging, deliveries, the token check and the limits."""

    def __init__(self, gcfg: Any, staging: Staging, deliveries: Deliveries) -> None:
        self.cfg = gcfg
        self.staging = staging
        self.deliveries = deliveries
        self.tokens = TokenCheck(gcfg.token_hash)
        self.throttle = LoginThrottle()
        self.writing: set[str] = set()  # uploads a PATCH is writing now (the sweep leaves them)
        self._wlock = threading.Lock()

    def busy(self, uid: str) -> bool:
        with self._wlock:
            return uid in self.writing

    @contextlib.contextmanager
    def writing_to(self, up: Upload) -> Iterator[None]:
        """Hold the upload for one request (409 if another holds it); the sweep leaves it alone meanwhile."""
        lock = self.staging.locked(up.id)
        if not lock.acquire(blocking=False):
            raise UploadError(409, "another request is writing this upload; retry after it")
        with self._wlock:
            self.writing.add(up.id)
        try:
            yield
        finally:
            with self._wlock:
                self.writing.discard(up.id)
            lock.release()

    def expires(self, up: Upload) -> str:
        return http_date(up.touched + self.cfg.expire_after)

    def live(self, uid: str) -> Upload:
        """The upload `uid`: 404 if unknown, 410 once expired (before the sweep removes it)."""
        up = self.staging.get(uid)
        if not up.finished and up.touched + self.cfg.expire_after <= time.time():
            raise UploadError(410, "this upload expired (expire_after); start it again")
        return up


def build_app(gw: Gateway) -> Flask:
    app = Flask("skynet.gateway")

    @app.errorhandler(UploadError)
    def upload_error(exc: UploadError) -> Response:
        return _text(exc.status, str(exc))

    @app.after_request
    def tus_headers(resp: Response) -> Response:
        resp.headers["Tus-Resumable"] = TUS_VERSION
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.before_request
    def authenticate() -> Response | None:
        if request.method == "OPTIONS":
            return None
        who = request.remote_addr or "?"
        if gw.throttle.blocked(who):
            resp = _text(429, "too many wrong tokens from this address; wait and try again")
            resp.headers["Retry-After"] = str(int(gw.throttle.window))
            return resp
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and gw.tokens.check(auth[7:].strip()):
            gw.throttle.succeeded(who)
            return None
        gw.throttle.failed(who)
        log.warning("gateway: wrong or missing Bearer token from %s", who)  # never the token itself
        resp = _text(401, "a valid `Authorization: Bearer TOKEN` is needed")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="skynet-gateway"'
        return resp

    @app.before_request
    def tus_version() -> Response | None:
        if request.path.startswith("/uploads") and request.method not in ("OPTIONS", "GET"):
            if request.headers.get("Tus-Resumable") != TUS_VERSION:
                resp = _text(412, f"Tus-Resumable: {TUS_VERSION} is needed")
                resp.headers["Tus-Version"] = TUS_VERSION
                return resp
        return None

    @app.route("/uploads", methods=["OPTIONS"])
    @app.route("/uploads/<uid>", methods=["OPTIONS"])
    def options(uid: str | None = None) -> Response:
        resp = Response(status=204)
        resp.headers.update({"Tus-Version": TUS_VERSION, "Tus-Extension": EXTENSIONS,
                             "Tus-Max-Size": str(gw.cfg.max_upload_size), "Tus-Checksum-Algorithm": "md5,sha1"})
        return resp

    @app.route("/uploads", methods=["POST"])
    def create() -> Response:
        if request.headers.get("Upload-Defer-Length"):
            raise UploadError(400, "Upload-Defer-Length is not supported: give Upload-Length")
        length = _int_header("Upload-Length")
        if length > gw.cfg.max_upload_size:
            raise UploadError(413, f"Upload-Length {length} is more than max_upload_size {gw.cfg.max_upload_size}")
        raw_meta = request.headers.get("Upload-Metadata", "")
        meta = parse_metadata(raw_meta)
        name = check_name(meta.get("filename", ""))
        md5 = parse_md5(meta["md5"]) if meta.get("md5") else None
        checksum = _checksum()
        with_body = request.headers.get("Content-Type") == OCTETS
        if request.content_length and not with_body:
            raise UploadError(415, f"a body with the creation needs Content-Type: {OCTETS}")
        whole = with_body and request.content_length == length
        if whole and 0 < length <= WHOLE_IN_MEMORY:
            resp = _direct(gw, length, name, raw_meta, md5, checksum)
            if resp is not None:
                return resp
        up = gw.staging.create(length, name, raw_meta, md5, gw.cfg.max_uploads_in_flight, whole=whole)
        log.debug("gateway: upload %s created for %r (%d bytes) from %s", up.id, name, length, request.remote_addr)
        resp = Response(status=201)
        resp.headers["Location"] = f"/uploads/{up.id}"
        if not whole and length:
            gw.deliveries.early.begin(up)  # a large upload goes to S3 while its chunks arrive (early.py)
        if with_body or length == 0:  # creation-with-upload (an empty file is finished at once)
            try:
                resp.headers.update(_patch(gw, up, 0, checksum).headers)
            except UploadError:
                gw.staging.remove(up.id)  # the client got no Location: nobody could resume it
                raise
        resp.headers["Upload-Expires"] = gw.expires(up)
        return resp

    @app.route("/uploads/<uid>", methods=["HEAD"])
    def head(uid: str) -> Response:
        up = gw.live(uid)
        resp = Response(status=200)
        resp.headers.update({"Upload-Offset": str(up.offset), "Upload-Length": str(up.length)})
        if up.metadata:
            resp.headers["Upload-Metadata"] = up.metadata
        if not up.finished:
            resp.headers["Upload-Expires"] = gw.expires(up)
        return resp

    @app.route("/uploads/<uid>", methods=["PATCH"])
    def patch(uid: str) -> Response:
        up = gw.live(uid)
        if request.headers.get("Content-Type") != OCTETS:
            raise UploadError(415, f"Content-Type: {OCTETS} is needed")
        return _patch(gw, up, _int_header("Upload-Offset"), _checksum())

    @app.route("/uploads/<uid>", methods=["DELETE"])
    def terminate(uid: str) -> Response:
        up = gw.staging.get(uid)
        with gw.writing_to(up):
            if up.finished:
                raise UploadError(403, "this upload is finished (delivered, or being delivered): it cannot be terminated")
            gw.staging.remove(uid)
        log.info("gateway: upload %s (%r) terminated", uid, up.filename)
        return Response(status=204)

    @app.route("/files/<path:rel>", methods=["GET", "HEAD"])
    def download(rel: str) -> Response:
        check_name(rel)
        version = request.args.get("version")
        if version is not None:
            return _serve_version(gw, rel, version)
        d, entry = _find(gw, rel)
        tag = f'"{entry.etag}"' if entry.etag else f'"{entry.size:x}-{entry.mtime_ns or 0:x}"'
        return _ranged(entry.size, tag, lambda off, n: d.con.read_range(rel, off, n, expect=entry))

    @app.route("/versions/", methods=["GET"])
    @app.route("/versions/<path:prefix>", methods=["GET"])
    def versions(prefix: str = "") -> Response:
        if prefix:
            check_name(prefix.rstrip("/"))
        d, store = _store(gw)
        files: dict[str, list[Version]] = {}
        for v in store.history(prefix.rstrip("/")):
            files.setdefault(v.rel, []).append(v)
        out = []
        for rel in sorted(files):
            out.append({"path": rel, "versions": [_version_json(n, v) for n, v in _numbered(files[rel])]})
        return jsonify({"destination": d.name, "files": out})

    return app


REASONS = {460: "460 Checksum Mismatch"}  # tus's own status, unknown to werkzeug


def _text(status: int, message: str) -> Response:
    return Response(message + "\n", status=REASONS.get(status, status), mimetype="text/plain")


def _int_header(name: str) -> int:
    raw = request.headers.get(name)
    if raw is None or not raw.strip().isdigit():
        raise UploadError(400, f"{name}: a whole number of bytes is needed")
    return int(raw)


def _checksum() -> tuple[str, bytes] | None:
    raw = request.headers.get("Upload-Checksum")
    return parse_checksum(raw) if raw else None


def _patch(gw: Gateway, up: Upload, offset: int, checksum: tuple[str, bytes] | None,
           body: BinaryIO | None = None, landed: list[str] | None = None) -> Response:
    """Write one chunk (the request's body, or `body`); at the last byte verify the
    upload and land it everywhere (but in `landed`, where it is already).

    The answer to the last chunk comes once every destination was tried once:
    `Skynet-Landed` names those that have the file, `Skynet-Pending` those that
    were down (it lands there by itself when they return; the upload is safe on
    the gateway's disk meanwhile). 460 when a checksum does not match."""
    landed = landed or []
    with gw.writing_to(up):
        new = gw.staging.write(up, offset, request.stream if body is None else body, request.content_length,
                               checksum)
        done = new == up.length and not up.finished
        if done:
            gw.staging.finish(up, [d.name for d in gw.deliveries.dests if d.name not in landed])
    resp = Response(status=204)
    resp.headers["Upload-Offset"] = str(new)
    if not up.finished:
        resp.headers["Upload-Expires"] = gw.expires(up)
    if done:
        log.debug("gateway: upload %s (%r) finished and verified (md5 %s)", up.id, up.filename,
                 up.etag or "not asked for")
        results = {**dict.fromkeys(landed, True),
                   **{name: fut.result() for name, fut in gw.deliveries.submit(up).items()}}
        if not all(results.values()):
            gw.staging.persist(up)  # a whole upload must now outlive this request: made durable
        resp.headers["Skynet-Landed"] = ", ".join(n for n, ok in results.items() if ok)
        resp.headers["Skynet-Pending"] = ", ".join(n for n, ok in results.items() if not ok)
        if up.etag:
            resp.headers["ETag"] = f'"{up.etag}"'
    return resp


def _direct(gw: Gateway, length: int, name: str, raw_meta: str, md5: str | None,
            checksum: tuple[str, bytes] | None) -> Response | None:
    """A whole small upload in its creation request, landed from memory: the body is
    verified (Upload-Checksum, the md5 metadata) before anything is written, then put
    in each destination (PutBytes: a local folder writes it beside its name and links
    it in place), with no staged file, record or ack line: nothing of it is on the
    gateway's disk, so nothing needs fsyncing or cleaning up, and a crash before the
    answer leaves nothing (the client, without a Location, sends it again). None when
    this cannot be done now (a destination down, busy with that name, or not one
    that takes bytes): the staged way then. A destination that fails gets the bytes
    staged after all (durable, retried), as a staged upload does."""
    dests = gw.deliveries.claim(name)
    if dests is None:
        return None
    held = True
    try:
        with _whole_body(length) as body:
            etag = _verify_whole(body, md5, checksum)
            up = gw.staging.create(length, name, raw_meta, md5, gw.cfg.max_uploads_in_flight, whole=True,
                                   staged=False)
            failed = gw.deliveries.put(up, dests, body)
            resp = Response(status=201)
            resp.headers["Location"] = f"/uploads/{up.id}"
            if not failed:
                gw.staging.delivered_whole(up, etag)
                resp.headers.update({"Upload-Offset": str(length), "Skynet-Landed": ", ".join(d.name for d in dests),
                                     "Skynet-Pending": ""})
                if etag:
                    resp.headers["ETag"] = f'"{etag}"'
            else:
                gw.deliveries.release(name)  # the workers take the staged upload from here
                held = False
                gw.staging.stage(up)
                landed = [d.name for d in dests if d.name not in failed]
                try:
                    resp.headers.update(_patch(gw, up, 0, checksum, io.BytesIO(body), landed).headers)
                except UploadError:
                    gw.staging.remove(up.id)
                    raise
    finally:
        if held:
            gw.deliveries.release(name)
    log.debug("gateway: upload %s for %r (%d bytes) from %s landed from the request", up.id, name, length,
              request.remote_addr)
    resp.headers["Upload-Expires"] = gw.expires(up)
    return resp


@contextlib.contextmanager
def _whole_body(length: int) -> Iterator[memoryview]:
    """The request's body, all `length` bytes. waitress hands a body under its
    inbuf_overflow (server.py) over as a BytesIO: its buffer is used as it is (no
    copy); otherwise it is read into one. 400 when the body is short."""
    inp = request.environ.get("wsgi.input")
    if isinstance(inp, io.BytesIO):
        pos = inp.tell()
        whole = inp.getbuffer()
        view = whole[pos:pos + length]
    else:
        whole = memoryview(bytearray(length))
        view = whole[:_read_fully(request.stream, whole)]
    try:
        if len(view) != length:
            raise UploadError(400, f"the body has {len(view)} bytes, Upload-Length and Content-Length {length}")
        yield view
    finally:
        view.release()  # (a BytesIO with an exported buffer cannot be closed)
        whole.release()


def _read_fully(stream: BinaryIO, buf: memoryview) -> int:
    got = 0
    while got < len(buf):
        n = stream.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _verify_whole(body: memoryview, md5: str | None, checksum: tuple[str, bytes] | None) -> str:
    """460 when the body is not what the client's checksums say (nothing was written
    yet); the MD5 hex when the client gave one (the ETag), else ""."""
    if checksum and ALGORITHMS[checksum[0]](body).digest() != checksum[1]:
        raise UploadError(460, f"Upload-Checksum: the chunk's {checksum[0]} does not match; "
                               "nothing of it was kept, send it again")
    if not md5:
        return ""
    seen = hashlib.md5(body).hexdigest()
    if seen != md5:
        raise UploadError(460, f"the finished upload failed verification (MD5 {seen}, the client said {md5}); "
                               "it was dropped, upload it again")
    return seen


def _find(gw: Gateway, rel: str) -> tuple[Destination, RemoteEntry]:
    """The first destination (in [gateway] targets order) that has `rel`; 404 if none."""
    down = []
    for d in gw.deliveries.dests:
        if not d.ensure():
            down.append(d.name)
            continue
        try:
            entry = d.con.stat(rel)
        except XConError as exc:
            d.lost()
            down.append(f"{d.name} ({exc})")
            continue
        if entry is not None:
            return d, entry
    raise UploadError(503 if down and len(down) == len(gw.deliveries.dests) else 404,
                      f"{rel!r} not found" + (f" (unreachable: {', '.join(down)})" if down else ""))


def _store(gw: Gateway):
    """The versions of the first reachable destination."""
    for d in gw.deliveries.dests:
        if d.ensure():
            return d, store_for(d.con, SimpleNamespace(versions=True, name=d.name))
    raise UploadError(503, "no destination is reachable")


def _numbered(versions: list[Version]) -> list[tuple[int | None, Version]]:
    """Versions newest first, numbered from the oldest content (1); deletions get no number."""
    n = sum(1 for v in versions if not v.deleted)
    out = []
    for v in versions:
        out.append((None if v.deleted else n, v))
        if not v.deleted:
            n -= 1
    return out


def _version_json(n: int | None, v: Version) -> dict:
    return {"version": n, "size": v.size, "etag": v.etag, "deleted": v.deleted, "current": v.until_ns is None,
            "since": dt.datetime.fromtimestamp(v.since_ns / 1e9, dt.timezone.utc).isoformat(),
            "until": None if v.until_ns is None else dt.datetime.fromtimestamp(v.until_ns / 1e9,
                                                                               dt.timezone.utc).isoformat()}


def _serve_version(gw: Gateway, rel: str, wanted: str) -> Response:
    if not wanted.isdigit():
        raise UploadError(400, "version: a number (1 is the oldest) is needed")
    d, store = _store(gw)
    for n, v in _numbered([v for v in store.history(rel) if v.rel == rel]):
        if n == int(wanted):
            tag = f'"{v.etag}"' if v.etag else f'"{v.size:x}-{v.since_ns:x}"'
            return _ranged(v.size, tag, lambda off, k, v=v: store.read_range(v, off, k))
    raise UploadError(404, f"{rel!r} has no version {wanted} on {d.name}")


def _ranged(size: int, etag: str, read) -> Response:
    """200 or 206 (one Range), streamed in pieces through `read(offset, length)`."""
    try:
        rng = parse_range(request.headers.get("Range"), size)
    except ValueError:
        resp = _text(416, "Range not satisfiable")
        resp.headers["Content-Range"] = f"bytes */{size}"
        return resp
    start, end = rng if rng else (0, size)
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Content-Length": str(end - start)}
    if rng:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    if request.method == "HEAD":
        return Response(status=206 if rng else 200, headers=headers)

    def body() -> Iterator[bytes]:
        pos = start
        while pos < end:
            try:
                piece = read(pos, min(PIECE, end - pos))
            except (RemoteNotFound, XConError) as exc:  # changed or gone mid-way: cut the answer short
                log.warning("gateway: download cut short at %d: %s", pos, exc)
                return
            if not piece:
                return
            pos += len(piece)
            yield piece

    return Response(body(), status=206 if rng else 200, headers=headers, mimetype="application/octet-stream")
