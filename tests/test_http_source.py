"""Issue 21: the HTTP client of job sources (skynet/jobs/http_source.py on
connections/s3/rest.py's HttpConn and ReplyBody), against a small HTTP/1.1 server
made here that can do what nginx will not on demand: count its connections, drop an
idle one, end a chunked or close-delimited body, cut a body short, echo the
Authorization it got. (tests/test_job_transfer.py runs the same client against nginx.)"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3

from skynet.jobs.http_source import HttpSource, _auth, _split
from skynet.jobs.item import OTHER, ItemFailed

BODY = bytes(range(256)) * 400  # 102,400 bytes


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.connections += 1  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path
        if path == "/len":
            self._head(200, {"Content-Length": str(len(BODY)), "ETag": '"v1"'})
            self.wfile.write(BODY)
        elif path == "/chunked":
            self._head(200, {"Transfer-Encoding": "chunked"})
            for i in range(0, len(BODY), 7000):
                piece = BODY[i:i + 7000]
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif path == "/close":  # no length, no chunks: the body ends with the connection
            self._head(200, {"Connection": "close"})
            self.wfile.write(BODY)
            self.close_connection = True
        elif path == "/short":
            self._head(200, {"Content-Length": str(len(BODY))})
            self.wfile.write(BODY[:1000])
            self.close_connection = True
        elif path == "/drop":  # a keep-alive reply, then the server closes the connection anyway
            self._head(200, {"Content-Length": "4"})
            self.wfile.write(b"drop")
            self.close_connection = True
        elif path.startswith("/to/"):  # /to/PORT/PATH: a redirect to PATH on 127.0.0.1:PORT
            _, _, port, rest = path.split("/", 3)
            self._head(302, {"Location": f"http://127.0.0.1:{port}/{rest}", "Content-Length": "2"})
            self.wfile.write(b"go")
        elif path == "/loop":
            self._head(301, {"Location": "/loop", "Content-Length": "0"})
        elif path == "/auth":
            got = (self.headers.get("Authorization") or "none").encode()
            self._head(200, {"Content-Length": str(len(got))})
            self.wfile.write(got)
        else:
            self._head(404, {"Content-Length": "0"})

    do_HEAD = do_GET


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    yield from _serve()


@pytest.fixture
def other() -> Iterator[ThreadingHTTPServer]:
    yield from _serve()


def _serve() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.connections = 0  # type: ignore[attr-defined]
    srv.lock = threading.Lock()  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


def url(srv: ThreadingHTTPServer, path: str, auth: str = "") -> str:
    return f"http://{auth}127.0.0.1:{srv.server_address[1]}{path}"


def fetch(src: HttpSource, u: str, piece: int = 3000) -> bytes:
    """The whole object, read in small pieces as the target reads a stream."""
    s = src.open_at(u, 0, None)
    try:
        parts = []
        while data := s.read(piece):
            parts.append(data)
        return b"".join(parts)
    finally:
        s.close()


@pytest.mark.parametrize("path", ["/len", "/chunked", "/close"])
def test_every_body_framing_is_streamed_whole(server, path):
    src = HttpSource()
    try:
        assert fetch(src, url(server, path)) == BODY
        assert fetch(src, url(server, path)) == BODY  # and the connection after it serves again
    finally:
        src.close()
    # a Content-Length or chunked body leaves its connection open for the next item; a close-delimited one cannot
    assert server.connections == (2 if path == "/close" else 1)


def test_connections_are_kept_alive_and_shared_by_the_workers(server):
    src = HttpSource(workers=4)
    results: list[bytes] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            data = fetch(src, url(server, "/len"), piece=65536)
            with lock:
                results.append(data)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    src.close()
    assert len(results) == 100 and all(r == BODY for r in results)
    assert server.connections <= 4  # 100 requests, at most one connection per worker


def test_a_body_cut_short_is_a_transient_error_never_a_short_object(server):
    src = HttpSource()
    s = src.open_at(url(server, "/short"), 0, None)
    with pytest.raises(ItemFailed) as exc:
        while s.read(65536):
            pass
    s.close()
    src.close()
    assert exc.value.error_class == OTHER and not exc.value.permanent


def test_a_connection_the_server_dropped_while_idle_is_replaced_once(server):
    src = HttpSource()
    try:
        assert fetch(src, url(server, "/drop")) == b"drop"  # pooled: the reply said nothing of a close
        assert fetch(src, url(server, "/len")) == BODY  # the dropped connection fails, a new one serves
    finally:
        src.close()
    assert server.connections == 2


def test_an_abandoned_body_does_not_go_back_to_the_pool(server):
    src = HttpSource()
    s = src.open_at(url(server, "/len"), 0, None)
    assert s.read(100) == BODY[:100]
    s.close()  # the rest of the body is still on that connection: it cannot serve another request
    try:
        assert fetch(src, url(server, "/len")) == BODY
    finally:
        src.close()
    assert server.connections == 2


def test_credentials_follow_a_redirect_on_the_same_host_only(server, other):
    src = HttpSource()
    try:
        same = fetch(src, url(server, f"/to/{server.server_address[1]}/auth", auth="u:p@"))
        away = fetch(src, url(server, f"/to/{other.server_address[1]}/auth", auth="u:p@"))
        head_size, _ = src.head(url(server, f"/to/{other.server_address[1]}/len"))
    finally:
        src.close()
    assert same == b"Basic dTpw"
    assert away == b"none"
    assert head_size == len(BODY)


def test_a_redirect_loop_fails_for_good(server):
    src = HttpSource(max_redirects=3)
    with pytest.raises(ItemFailed) as exc:
        src.open_at(url(server, "/loop"), 0, None)
    src.close()
    assert exc.value.permanent and "too many redirects" in str(exc.value)


@pytest.mark.parametrize("u", [
    "http://127.0.0.1:8080/bench/d01/f00001.bin", "http://h", "http://h/", "http://h/x?y=1&z=/2",
    "https://ex.com:443/a.b/c.d?", "http://h/.hidden/x", "http://h/..x/y", "http://h/x?a=../b",
    "http://h/a/./b", "http://h/a/../b", "http://h/a/..", "http://h/a b", "http://H/x", "http://h/x%41",
    "http://u:p@h/x", "http://h/x#f", "http://h/é?q=é", "http://bücher.de/x", "https://[::1]:99/x",
])
def test_split_is_urllib3s_reading_of_the_url(u):
    """The plain-URL shortcut and urllib3's parse_url read every URL alike."""
    p = urllib3.util.parse_url(u)
    assert _split(u) == ((p.scheme or "http").lower(), p.netloc, p.request_uri)


@pytest.mark.parametrize("u", ["http://127.0.0.1:8080/x", "http://u:p@h/x", "http://u@h/x", "http://h/p@x", "http://h/x?a=b@c",
                               "https://user%40mail:pw@h/x", "ftp://h/x"])
def test_credentials_are_read_only_from_a_url_with_user_info(u):
    """_auth's shortcut (no "@" in the URL: no credentials, no urlsplit per request)
    gives what reading the URL whole gives."""
    parts = urlsplit(u)
    want = {} if parts.username is None else urllib3.util.make_headers(
        basic_auth=f"{unquote(parts.username)}:{unquote(parts.password or '')}")
    assert _auth(u) == want
