"""A real HTTP server for migration sources: Debian nginx on 127.0.0.1.

Registered as `servers.get("http")`. Its own config (`daemon off;`, one
process, `master_process off` so the PID we started is the server), a root
folder tests put files into, Range, ETag and Last-Modified on (nginx's
defaults for static files), and an access log a test reads to count what
was fetched: method, path, status, body bytes sent, the Range and If-Range
asked for. Paths under a few prefixes behave badly on purpose:

    /stall/...      sent at 1 byte/s: a read timeout
    /norange/...    Range ignored (always 200 and the whole object)
    /chunked/...    no Content-Length (chunked transfer encoding)
    /redirect/X     302 to /X
    /gone/... 410   /forbidden/... 403   /e500/... 500   /e503/... 503
    /private/...    basic authentication: USER / PASSWORD
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.debian import ensure_package
from tests.servers import put_file, register, start_on_free_port, stop_process, wait_answering

NGINX = "/usr/sbin/nginx"
USER, PASSWORD = "reader", "s3cret-pass"
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class Fetch:
    """One line of the access log."""

    method: str
    path: str
    status: int
    sent: int  # body bytes sent
    range: str  # the Range header asked for ("" for none)
    if_range: str


@dataclass
class HttpServer:
    port: int
    root: Path  # files under here are served at /...
    dir: Path
    log: Path
    pid: int = 0
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def put(self, path: str, data: bytes) -> str:
        """Serve `data` at /path (written atomically: a fetch sees the old or the new); its URL."""
        put_file(self.root, path, data)
        return self.url(path)

    def fetches(self, path: str | None = None) -> list[Fetch]:
        """Every request logged so far (for /path only, when given)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            parts = line.replace("\\x22", '"').replace("\\x5C", "\\").split("\t")
            if len(parts) != 6:
                continue
            f = Fetch(parts[0], parts[1], int(parts[2]), int(parts[3]), parts[4], parts[5])
            if path is None or f.path == "/" + path.lstrip("/"):
                out.append(f)
        return out

    def bytes_sent(self, path: str) -> int:
        """Body bytes the server sent for /path, over every request."""
        return sum(f.sent for f in self.fetches(path) if f.method == "GET")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self._proc, sig)

    def start(self) -> None:
        assert not self.running, "already running"
        self._proc = subprocess.Popen([NGINX, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=open(self.dir / "stderr.log", "ab"))
        self.pid = self._proc.pid
        wait_answering(self._proc, self.port, "nginx", b"HEAD / HTTP/1.0\r\n\r\n", b"HTTP/", START_TIMEOUT,
                       lambda: _nginx_log(self.dir))


def _config(d: Path, port: int, root: Path, log: Path) -> str:
    temps = "\n".join(f"    {k}_temp_path {d}/tmp-{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    log_format fetches '$request_method\\t$uri\\t$status\\t$body_bytes_sent\\t$http_range\\t$http_if_range';
    access_log {log} fetches;
{temps}
    keepalive_requests 100000;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /stall/ {{ limit_rate 1; }}
        location /norange/ {{ max_ranges 0; }}
        location /chunked/ {{ sub_filter 'skynet-no-such-text' ''; sub_filter_types *; sub_filter_once on; }}
        location /redirect/ {{ rewrite ^/redirect/(.*)$ /$1 redirect; }}
        location /gone/ {{ return 410; }}
        location /forbidden/ {{ return 403; }}
        location /e500/ {{ return 500; }}
        location /e503/ {{ return 503; }}
        location /private/ {{ auth_basic "skynet"; auth_basic_user_file {d}/htpasswd; }}
    }}
}}
"""


def _nginx_log(d: Path) -> str:
    return (d / "stderr.log").read_text(errors="replace") + \
        ((d / "error.log").read_text(errors="replace") if (d / "error.log").exists() else "")


@register("http")
@contextlib.contextmanager
def http_server(workdir: Path) -> Iterator[HttpServer]:
    """nginx serving workdir/www, logging to workdir/access.log; stopped by its PID."""
    ensure_package("nginx", NGINX)
    workdir.mkdir(parents=True, exist_ok=True)
    root, log = workdir / "www", workdir / "access.log"
    root.mkdir(exist_ok=True)
    (workdir / "htpasswd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")

    def start(port: int) -> HttpServer:
        (workdir / "nginx.conf").write_text(_config(workdir, port, root, log))
        started = HttpServer(port=port, root=root, dir=workdir, log=log)
        try:
            started.start()
        except RuntimeError:
            started.stop()
            raise
        return started

    srv = start_on_free_port(start, "nginx")
    try:
        yield srv
    finally:
        srv.stop()
