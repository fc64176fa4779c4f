"""connections/s3/rest.py: SigV4 as botocore signs, the small HTTP/1.1 client against
scripted replies (chunked, close-delimited, interim, split, dropped keep-alive, garbage),
listings, and S3Con's use of it (error classes, no boto3 import on the hot path).

The real server (rclone serve s3) checks signatures and framing in test_s3_con.py and the
contract suite; the odd replies it never sends come from a scripted socket server here.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from unittest import mock

import pytest

import tests.server_s3  # noqa: F401  (registers the "s3" server)
from connections.s3 import rest as s3rest
from connections.contract.xcon import LocalFile, PermanentError, RemoteNotFound, TransferContext, TransientError
from connections.s3.con import S3Con
from tests.scripted_http import Scripted, ok

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def scripted():
    made: list[Scripted] = []

    def make(replies: list, split: int = 0) -> Scripted:
        s = Scripted(replies, split)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def rest_for(server: Scripted, timeout: float = 5.0) -> s3rest.Rest:
    layout = s3rest.Layout.from_endpoint(f"http://127.0.0.1:{server.port}", "bkt", "path", "us-east-1")
    return s3rest.Rest(layout, s3rest.StaticCredentials("AKID", "SECRET-KEY"), connect_timeout=timeout,
                       timeout=timeout, scrub=lambda t: t.replace("SECRET-KEY", "***"))


# -- signing ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["plain.txt", "a b/ç日本+=&;,$@!'()*.bin", "~tilde/%41"])
@pytest.mark.parametrize("params", [None, {"partNumber": "3", "uploadId": "a/b+c=="},
                                    {"list-type": "2", "prefix": "x y/+", "continuation-token": "t=/+"}])
def test_signature_is_botocores(key, params):
    """The same request signed by botocore's S3SigV4Auth and by s3rest.Signer."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token")
    path = s3rest.key_path("/bucket", key)
    query = s3rest.canonical_query(params) if params else ""
    url = f"https://127.0.0.1:9000{path}" + (f"?{query}" if query else "")
    headers = {"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg==", "content-type": "text/plain", "x-amz-meta-mtime": "1.5"}

    req = AWSRequest(method="PUT", url=url, data=b"", headers=headers)
    req.context["payload_signing_enabled"] = False  # what S3Con's boto3 client is configured with
    S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(req)
    theirs = req.headers["Authorization"]
    when = datetime.datetime.strptime(req.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)

    signer = s3rest.Signer("eu-west-1", creds)
    ours = {**headers, "host": "127.0.0.1:9000"}
    with mock.patch("time.time", return_value=when.timestamp() + 0.5):  # the same second
        signer.sign("PUT", path, query, ours, s3rest.UNSIGNED)
    assert ours["x-amz-security-token"] == "session-token"
    # botocore signs the same headers (it adds host and the x-amz-* ones itself)
    assert ours["authorization"] == theirs


# -- framing --------------------------------------------------------------------------------


def test_chunked_close_delimited_interim_and_split_replies(scripted):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after")
    close_delimited = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil the end"
    server = scripted([chunked, interim, ok(b"again"), close_delimited, ok(b"new conn")], split=1)
    rest = rest_for(server)
    assert rest.request("GET", "/bkt").body == b"hello world"
    assert rest.request("GET", "/bkt").body == b"after"
    assert rest.request("GET", "/bkt").body == b"again"
    assert server.connections == 1  # one keep-alive connection so far
    assert rest.request("GET", "/bkt").body == b"until the end"
    assert rest.request("GET", "/bkt").body == b"new conn"
    assert server.connections == 2  # the close-delimited reply ended its connection


def test_head_reply_has_no_body_even_with_a_length(scripted):
    server = scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n", ok(b"next")])
    rest = rest_for(server)
    assert rest.request("HEAD", "/bkt/k").status == 200
    assert rest.request("GET", "/bkt/k").body == b"next"


def test_a_dropped_keep_alive_connection_is_reopened_once(scripted):
    server = scripted([ok(extra="ETag: \"1\"\r\n"), "close", ok(extra="ETag: \"2\"\r\n")])
    rest = rest_for(server)
    sent: list[int] = []
    assert rest.put("k", b"x" * 10, {}, sent.append) == '"1"'
    assert rest.put("k", b"y" * 10, {}, sent.append) == '"2"'  # first try hit the hang-up
    assert server.connections == 2 and len(server.requests) == 3


def test_a_fresh_connection_hanging_up_is_an_error(scripted):
    server = scripted(["close"])
    with pytest.raises(ConnectionError):
        rest_for(server).put("k", b"x", {}, None)


def test_garbage_and_timeouts_are_oserrors(scripted):
    server = scripted([b"NOT HTTP AT ALL\r\n\r\n"])
    with pytest.raises(s3rest.ProtocolError):
        rest_for(server).request("GET", "/bkt")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        layout = s3rest.Layout.from_endpoint(f"http://127.0.0.1:{silent.getsockname()[1]}", "b", "path", "r")
        rest = s3rest.Rest(layout, s3rest.StaticCredentials("a", "b"), connect_timeout=2, timeout=0.3, scrub=str)
        with pytest.raises(TimeoutError):
            rest.request("GET", "/b")
    finally:
        silent.close()


def test_put_retries_a_5xx_once_and_counts_progress_once(scripted):
    xml = b"<Error><Code>SlowDown</Code><Message>busy, key SECRET-KEY</Message></Error>"
    busy = b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n%s" % (len(xml), xml)
    server = scripted([busy, ok(extra="ETag: \"e\"\r\n"), busy, busy])
    rest = rest_for(server)
    body = os.urandom(3 * s3rest.PROGRESS_STEP + 5)
    sent: list[int] = []
    assert rest.upload_part("k", "up-1", 2, memoryview(body), "md5==", sent.append) == '"e"'
    assert sum(sent) == len(body)  # sent twice, counted once
    line, headers, got = server.requests[1]
    assert line.startswith("PUT /bkt/k?partNumber=2&uploadId=up-1 ") and got == body
    assert headers["content-md5"] == "md5==" and headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    with pytest.raises(s3rest.S3Error) as info:
        rest.put("k", b"x", {}, None)
    assert info.value.code == "SlowDown" and info.value.status == 503 and "SECRET-KEY" not in str(info.value)


def test_multipart_create_and_complete(scripted):
    created = ok(b"<?xml version='1.0'?><InitiateMultipartUploadResult xmlns='http://s3.amazonaws.com/doc/2006-03-01/'>"
                 b"<Bucket>bkt</Bucket><Key>k</Key><UploadId>up&amp;1</UploadId></InitiateMultipartUploadResult>")
    done = ok(b"  \n<?xml version='1.0'?><CompleteMultipartUploadResult><ETag>&quot;abc-2&quot;</ETag>"
              b"</CompleteMultipartUploadResult>")  # S3 may send whitespace first
    failed = ok(b"\n\n<Error><Code>InvalidPart</Code><Message>part 2</Message></Error>")
    server = scripted([created, done, failed])
    rest = rest_for(server)
    assert rest.create_multipart("a b/k", {"content-type": "text/plain", "x-amz-meta-mode": "0644"}) == "up&1"
    assert rest.complete_multipart("a b/k", "up&1", [(1, "e1"), (2, "e2")]) == '"abc-2"'
    with pytest.raises(s3rest.S3Error) as info:
        rest.complete_multipart("a b/k", "up&1", [(1, "e1")])
    assert info.value.code == "InvalidPart"
    (create, h1, _), (complete, _, body), _ = server.requests
    assert create.startswith("POST /bkt/a%20b/k?uploads= ") and h1["x-amz-meta-mode"] == "0644"
    assert complete.startswith("POST /bkt/a%20b/k?uploadId=up%261 ")
    assert body == (b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag></Part>"
                    b"<Part><PartNumber>2</PartNumber><ETag>&quot;e2&quot;</ETag></Part></CompleteMultipartUpload>")


def test_a_line_break_in_a_header_value_is_refused(scripted):
    server = scripted([ok()])
    with pytest.raises(ValueError):
        rest_for(server).put("k", b"x", {"x-amz-meta-a": "1\r\nx-evil: 2"}, None)
    assert server.requests == []


def test_listing_pages_and_url_encoded_keys(scripted):
    page1 = (b"<?xml version='1.0'?><ListBucketResult xmlns='http://s3.amazonaws.com/doc/2006-03-01/'>"
             b"<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
             b"<NextContinuationToken>tok/+=</NextContinuationToken>"
             b"<Contents><Key>p/a+b%2Bc.txt</Key><Size>3</Size><ETag>&quot;abc&quot;</ETag></Contents>"
             b"</ListBucketResult>")
    page2 = (b"<ListBucketResult><IsTruncated>false</IsTruncated>"
             b"<Contents><Key>p/plain</Key><Size>0</Size></Contents></ListBucketResult>")
    server = scripted([ok(page1), ok(page2)])
    got = list(rest_for(server).list_objects("p/"))
    assert got == [("p/a b+c.txt", 3, '"abc"'), ("p/plain", 0, None)]
    assert "continuation-token=tok%2F%2B%3D" in server.requests[1][0]
    assert "encoding-type=url" in server.requests[0][0] and "prefix=p%2F" in server.requests[0][0]


# -- S3Con on the fast path -----------------------------------------------------------------


def s3con_for(server: Scripted, **kw) -> S3Con:
    return S3Con("bkt", "root", endpoint_url=f"http://127.0.0.1:{server.port}", region="us-east-1",
                 addressing_style="path", access_key_id="AKID", secret_access_key="SECRET-KEY",
                 connect_timeout=2, read_timeout=2, **kw)


def small_file(tmp_path, data: bytes = b"data") -> LocalFile:
    p = tmp_path / "f.txt"
    p.write_bytes(data)
    st = p.stat()
    return LocalFile(str(p), "d/f.txt", st.st_size, st.st_mtime_ns, 0o640, st.st_ino, 1000, 1000)


def error_reply(status: int, code: str) -> bytes:
    body = f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode()
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize("replies,kind", [
    ([error_reply(403, "AccessDenied")], PermanentError),
    ([error_reply(404, "NoSuchBucket")], PermanentError),
    ([error_reply(503, "SlowDown"), error_reply(503, "SlowDown")], TransientError),
    ([error_reply(500, "InternalError"), error_reply(500, "InternalError")], TransientError),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: \"00000000000000000000000000000000\"\r\n\r\n"], PermanentError),
])
def test_fast_put_errors_are_classified(scripted, tmp_path, replies, kind):
    server = scripted(replies)
    con = s3con_for(server)
    with pytest.raises(kind) as info:
        con.send(small_file(tmp_path), TransferContext())
    assert "s3://bkt/root/d/f.txt" in str(info.value) and "SECRET-KEY" not in str(info.value)
    line, headers, body = server.requests[0]
    assert line.startswith("PUT /bkt/root/d/f.txt ") and body == b"data"
    assert headers["content-md5"] == base64.b64encode(hashlib.md5(b"data").digest()).decode()
    assert headers["x-amz-meta-mode"] == "0640" and headers["x-amz-meta-uid"] == "1000"
    assert headers["content-type"] == "text/plain"
    con.close()


def test_fast_connect_errors(scripted, tmp_path):
    assert "does not exist" in str(_connect_error(scripted([b"HTTP/1.1 404 NF\r\nContent-Length: 0\r\n\r\n"])))
    assert "denied" in str(_connect_error(scripted([b"HTTP/1.1 403 NO\r\nContent-Length: 0\r\n\r\n"])))
    moved = b"HTTP/1.1 301 M\r\nx-amz-bucket-region: eu-west-3\r\nContent-Length: 0\r\n\r\n"
    assert "region eu-west-3" in str(_connect_error(scripted([moved])))
    refused = socket.create_server(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()
    con = S3Con("bkt", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", addressing_style="path",
                access_key_id="a", secret_access_key="b", connect_timeout=1)
    with pytest.raises(TransientError, match="cannot reach"):
        con.connect()


def _connect_error(server: Scripted) -> Exception:
    with pytest.raises(PermanentError) as info:
        s3con_for(server).connect()
    return info.value


def test_light_layout_is_botocores():
    """Where the settings alone fix the URLs, they are the URLs botocore would use."""
    for endpoint, style in [("http://127.0.0.1:9000", "path"), ("https://minio.example:9000", "path"),
                            ("https://s3.example.com", "virtual"), ("http://127.0.0.1:9000/base", "path")]:
        con = S3Con("my-bucket", endpoint_url=endpoint, region="eu-west-1", addressing_style=style,
                    access_key_id="a", secret_access_key="b")
        light = con._light_layout()
        theirs = s3rest.Layout.from_presigned(con._presigned(con.client))
        assert light == theirs, (endpoint, style)
        assert con._http().layout == theirs
        con.close()


def test_no_operation_needs_boto3(servers, tmp_path):
    """connect, cleanup, listing, small PUTs, a multipart upload, stat, move and delete run
    without importing boto3 (~0.3 s of CPU): given keys and an endpoint, every request
    goes through s3rest, and botocore is never loaded."""
    srv = servers.get("s3")
    bucket = srv.new_bucket()
    (tmp_path / "small").write_bytes(b"x" * 1000)
    (tmp_path / "big").write_bytes(os.urandom(6 << 20))
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from connections.contract.xcon import LocalFile, TransferContext
        from connections.s3.con import S3Con
        con = S3Con({bucket!r}, "root", endpoint_url={srv.endpoint_url!r}, region={srv.region!r},
                    addressing_style="path", access_key_id={srv.access_key!r},
                    secret_access_key=os.environ["SECRET"], part_size=5 << 20, multipart_threshold=5 << 20)
        def lf(name):
            p = os.path.join({str(tmp_path)!r}, name)
            st = os.stat(p)
            return LocalFile(p, name, st.st_size, st.st_mtime_ns, 0o644, st.st_ino, 0, 0)
        con.connect()
        con.cleanup([])
        assert list(con.list()) == []
        con.send(lf("small"), TransferContext())
        assert [e.rel for e in con.list()] == ["small"]
        print("boto3 after small:", "boto3" in sys.modules)
        con.send(lf("big"), TransferContext())
        assert sorted(e.rel for e in con.list()) == ["big", "small"]
        print("boto3 after big:", "boto3" in sys.modules)
        assert con.stat("big").size == 6 << 20
        con.move("big", "moved")
        con.delete("small")
        assert [e.rel for e in con.list()] == ["moved"]
        print("boto3 after delete:", "boto3" in sys.modules)
        con.close()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SECRET": srv.secret_key})
    assert out.returncode == 0, out.stderr
    assert "boto3 after small: False" in out.stdout and "boto3 after big: False" in out.stdout
    assert "boto3 after delete: False" in out.stdout


# -- the operations that moved from boto3 (issue 19, item 5) ----------------------------


def test_list_parts_pages_and_head_object_shape(scripted):
    page1 = ok(b"<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>1</NextPartNumberMarker>"
               b"<Part><PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag><Size>5</Size></Part></ListPartsResult>")
    page2 = ok(b"<ListPartsResult><IsTruncated>false</IsTruncated>"
               b"<Part><PartNumber>2</PartNumber><ETag>\"e2\"</ETag><Size>3</Size></Part></ListPartsResult>")
    head = ok(extra="ETag: \"abc\"\r\nContent-Type: text/plain\r\nx-amz-meta-Mtime: 1.5\r\n"
                    "Last-Modified: Sat, 05 Dec 2026 09:00:00 GMT\r\n")
    server = scripted([page1, page2, head.replace(b"Content-Length: 0", b"Content-Length: 7")])
    rest = rest_for(server)
    assert list(rest.list_parts("k", "u")) == [(1, '"e1"', 5), (2, '"e2"', 3)]
    assert "part-number-marker=1" in server.requests[1][0]
    got = rest.head_object("k")
    assert got == {"ContentLength": 7, "ETag": '"abc"', "ContentType": "text/plain", "Metadata": {"mtime": "1.5"},
                   "LastModified": datetime.datetime(2026, 12, 5, 9, 0, tzinfo=datetime.timezone.utc)}


def test_delete_objects_sends_content_md5_and_returns_per_key_errors(scripted):
    reply = ok(b"<DeleteResult><Error><Key>a&amp;b</Key><Code>AccessDenied</Code><Message>no SECRET-KEY</Message>"
               b"</Error></DeleteResult>")
    server = scripted([reply])
    errors = rest_for(server).delete_objects(["a&b", "c<d"])
    assert [(e.key, e.code, e.message) for e in errors] == [("a&b", "AccessDenied", "no ***")]
    line, headers, body = server.requests[0]
    assert line.startswith("POST /bkt?delete= ")
    assert body == b"<Delete><Quiet>true</Quiet><Object><Key>a&amp;b</Key></Object><Object><Key>c&lt;d</Key></Object></Delete>"
    assert headers["content-md5"] == base64.b64encode(hashlib.md5(body).digest()).decode()


def test_copy_requests_and_an_error_inside_a_200(scripted):
    copied = ok(b"<CopyObjectResult><ETag>\"c1\"</ETag></CopyObjectResult>")
    failed = ok(b"<Error><Code>InternalError</Code><Message>later</Message></Error>")
    server = scripted([copied, failed, ok()])  # an <Error> in a 200 is not sent again
    rest = rest_for(server)
    assert rest.copy_object("a b/k2", "bkt/a b/k", {"x-amz-metadata-directive": "COPY"}) == '"c1"'
    with pytest.raises(s3rest.S3Error) as info:
        rest.copy_object("k2", "bkt/k", {})
    assert info.value.code == "InternalError"
    assert rest.upload_part_copy("k2", "u", 3, "bkt/k", 0, 9) == ""  # rclone's empty 200
    (line, h, _), _, (part_line, h2, _) = server.requests
    assert line.startswith("PUT /bkt/a%20b/k2 ") and h["x-amz-copy-source"] == "bkt/a%20b/k"
    assert h["x-amz-metadata-directive"] == "COPY"
    assert part_line.startswith("PUT /bkt/k2?partNumber=3&uploadId=u ") and h2["x-amz-copy-source-range"] == "bytes=0-9"


def test_a_reply_sent_before_the_body_was_read_is_the_answer():
    """A server that refuses a request from its head (403: bad signature) and closes
    without reading the body: the client reports that reply, not the broken pipe."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    refusal = error_reply(403, "SignatureDoesNotMatch").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            conn.sendall(refusal)
            conn.shutdown(socket.SHUT_WR)
        listener.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    layout = s3rest.Layout.from_endpoint(f"http://127.0.0.1:{port}", "bkt", "path", "us-east-1")
    rest = s3rest.Rest(layout, s3rest.StaticCredentials("AKID", "S"), connect_timeout=5, timeout=5, scrub=str)
    with pytest.raises(s3rest.S3Error) as info:
        rest.put("k", os.urandom(32 << 20), {}, None)
    assert info.value.status == 403 and info.value.code == "SignatureDoesNotMatch"
    t.join(5)


def test_http_proxy_gets_the_absolute_url_and_its_credentials(scripted, monkeypatch):
    proxy = scripted([ok(extra="ETag: \"e\"\r\n")])
    monkeypatch.setenv("HTTP_PROXY", f"http://me:p%40ss@127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    con = S3Con("bkt", "root", endpoint_url="http://s3.example.test:9000", region="us-east-1",
                addressing_style="path", access_key_id="AKID", secret_access_key="SECRET-KEY")
    assert con._http().proxy == s3rest.Proxy("127.0.0.1", proxy.port, "Basic " + base64.b64encode(b"me:p@ss").decode())
    assert con._http().put("k", b"x", {}, None) == '"e"'
    line, headers, _ = proxy.requests[0]
    assert line == "PUT http://s3.example.test:9000/bkt/k HTTP/1.1"
    assert headers["host"] == "s3.example.test:9000"
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"me:p@ss").decode()
    assert "proxy-authorization" not in headers["authorization"]  # not signed: the proxy takes it
    con.close()


def test_https_through_a_proxy_asks_for_a_tunnel(scripted, tmp_path):
    """https through a proxy: CONNECT host:port first (TLS runs inside the tunnel); a proxy
    that refuses is a transient error naming its answer."""
    proxy = scripted([b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"])
    layout = s3rest.Layout.from_endpoint("https://s3.example.test", "bkt", "virtual", "eu-west-1")
    rest = s3rest.Rest(layout, s3rest.StaticCredentials("AKID", "S"), connect_timeout=5, timeout=5, scrub=str,
                       proxy=s3rest.Proxy.from_url(f"http://u:p@127.0.0.1:{proxy.port}"))
    with pytest.raises(s3rest.ProxyRefused, match="407"):
        rest.head_bucket()
    line, headers, _ = proxy.requests[0]
    assert line == "CONNECT bkt.s3.example.test:443 HTTP/1.1"
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    con = S3Con("bkt", access_key_id="a", secret_access_key="b")
    assert isinstance(con._classify(s3rest.ProxyRefused("the proxy answered 407"), "connect", None), TransientError)


def test_list_versions_pages_and_conditional_reads(scripted):
    page1 = ok(b"<ListVersionsResult><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
               b"<NextKeyMarker>a+b</NextKeyMarker><NextVersionIdMarker>v1</NextVersionIdMarker>"
               b"<Version><Key>a+b</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest>"
               b"<LastModified>2026-12-05T09:00:01.000Z</LastModified><ETag>\"e2\"</ETag><Size>3</Size></Version>"
               b"<DeleteMarker><Key>a+b</Key><VersionId>d1</VersionId><IsLatest>false</IsLatest>"
               b"<LastModified>2026-12-05T09:00:00.000Z</LastModified></DeleteMarker></ListVersionsResult>")
    page2 = ok(b"<ListVersionsResult><IsTruncated>false</IsTruncated>"
               b"<Version><Key>a b</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest><Size>1</Size></Version>"
               b"</ListVersionsResult>")
    ranged = b"HTTP/1.1 206 Partial\r\nContent-Length: 2\r\nETag: \"e2\"\r\n\r\nhi"
    server = scripted([page1, page2, ranged, error_reply(412, "PreconditionFailed")])
    rest = rest_for(server)
    pages = list(rest.list_versions("a b"))
    assert [[v["VersionId"] for v in versions] for versions, _m in pages] == [["v2"], ["v1"]]
    assert pages[0][0][0]["Key"] == "a b" and pages[0][0][0]["IsLatest"] and pages[0][1][0]["VersionId"] == "d1"
    assert "key-marker=a%20b" in server.requests[1][0] and "version-id-marker=v1" in server.requests[1][0]
    assert rest.get_object("a b", 0, 1, if_match="e2", version="v2").body == b"hi"
    line, headers, _ = server.requests[2]
    assert "versionId=v2" in line and headers["if-match"] == '"e2"' and headers["range"] == "bytes=0-1"
    with pytest.raises(s3rest.S3Error) as info:
        rest.head_object("a b", if_match="old")
    assert info.value.status == 412


def test_a_streamed_body_goes_to_the_sink_in_order_and_errors_are_read_whole(scripted):
    """get_object(sink_for=...): a 2xx body is handed to the sink piece by piece (received into
    one reused buffer; the bytes the head's read already held first), the connection kept
    alive after it; an error reply is never streamed (its XML becomes the S3Error); a body
    without a length (chunked) reaches the sink whole; a body cut short is a ProtocolError."""
    big = os.urandom(s3rest._STREAM_BUF * 3 + 777)
    ranged = b"HTTP/1.1 206 Partial\r\nContent-Length: %d\r\nETag: \"e\"\r\n\r\n" % len(big) + big
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    cut = b"HTTP/1.1 206 Partial\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly this"
    server = scripted([ranged, error_reply(500, "InternalError"), error_reply(412, "PreconditionFailed"), chunked,
                       ok(b"plain"), cut], split=100_000)
    rest = rest_for(server)
    pieces: list[bytes] = []
    seen: list[tuple[int, str]] = []

    def sink_for(status: int, headers: dict[str, str]):
        seen.append((status, headers.get("etag", "")))
        return lambda piece: pieces.append(bytes(piece))

    reply = rest.get_object("k", 0, len(big) - 1, sink_for=sink_for)
    assert reply.status == 206 and reply.body == b"" and b"".join(pieces) == big and len(pieces) > 3
    assert seen == [(206, '"e"')]
    with pytest.raises(s3rest.S3Error) as info:  # a 500 (retried once), then a 412: neither streamed
        rest.get_object("k", 0, 9, if_match="old", sink_for=sink_for)
    assert info.value.status == 412 and info.value.code == "PreconditionFailed" and seen == [(206, '"e"')]
    pieces.clear()
    assert rest.get_object("k", sink_for=sink_for).body == b"" and pieces == [b"hello"]
    assert rest.get_object("k").body == b"plain"  # no sink: the body as before
    assert server.connections == 1  # every reply above was read to its end: one keep-alive connection
    with pytest.raises(s3rest.ProtocolError):
        rest.get_object("k", 0, 99, sink_for=sink_for)


def test_a_copy_of_a_known_size_is_one_request_and_a_refused_one_looks_first(scripted):
    """S3Con.copy(size=...) (the keeper keeping a version before an overwrite, with the size
    the Index knows): one CopyObject, no HEAD first; a missing source is its 404; a refusal
    (a source larger than believed) falls back to the HEAD and the copy it chooses."""
    copied = ok(b"<CopyObjectResult><ETag>\"c1\"</ETag></CopyObjectResult>")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nETag: \"e\"\r\n\r\n"
    server = scripted([copied, error_reply(404, "NoSuchKey"), error_reply(400, "InvalidRequest"), head, copied,
                       head, copied])
    con = s3con_for(server)
    con.copy("d/f.txt", "v/f.txt", size=4)
    assert [r[0].split(" ")[0] for r in server.requests] == ["PUT"]
    with pytest.raises(RemoteNotFound):
        con.copy("d/gone.txt", "v/gone.txt", size=4)
    con.copy("d/f.txt", "v/f2.txt", size=4)  # refused: HEAD, then the copy
    con.copy("d/f.txt", "v/f3.txt")  # no size known: HEAD first, as before
    methods = [r[0].split(" ")[0] for r in server.requests]
    assert methods == ["PUT", "PUT", "PUT", "HEAD", "PUT", "HEAD", "PUT"]
    assert all(r[1]["x-amz-copy-source"] == "bkt/root/d/f.txt" for r in server.requests if r[0].startswith("PUT /bkt/root/v/f"))
