"""The skynet dashboard: a read-only web page over the notifier's PostgreSQL
tables (or, with no database, over the local daemon's state files).

    from skynet.dashboard import DashboardConfig, serve, hash_secret
    serve(DashboardConfig(dsn="postgresql://...", port=8765, password_hash=hash_secret("...")))

Served beyond this machine, it belongs behind a TLS reverse proxy (README):
`allowed_hosts` names the host the proxy forwards, `trusted_proxies` the
proxy's address (whose X-Forwarded-For is then believed), `secure_cookie`
keeps the cookies off plain HTTP.

Web stack: Flask (routing, templates with auto-escaping, cookies) served by
waitress (a pure-Python production WSGI server with a thread pool): both are
small, well kept, have no C extension and no dependency outside PyPI, and
waitress needs no reverse proxy for an internal tool. The page is one HTML
file plus a small script that polls /api/status; no CDN, no build step.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from skynet.dashboard.auth import hash_secret, is_token_hash, new_token, verify
from skynet.extras import require as require_extra

__all__ = ["DashboardConfig", "config_from_daemon", "serve", "make_server", "stop_server", "build", "hash_secret",
           "new_token", "verify"]

log = logging.getLogger(__name__)


@dataclass
class DashboardConfig:
    """What the dashboard needs. At least one of password_hash / token_hash."""

    dsn: str | None = None  # None: local mode (state_dirs); "": libpq environment variables
    host: str = "127.0.0.1"
    port: int = 8765
    password_hash: str | None = None  # for the login form (hash_secret())
    token_hash: str | None = None  # for `Authorization: Bearer` on the JSON endpoints (and the form): new_token()
    state_dirs: list[str] = field(default_factory=list)  # local mode: daemons' state folders
    sslmode: str | None = None
    stale_factor: float = 3.0  # a daemon is stale after this many missed heartbeat intervals
    refresh_seconds: float = 3.0
    session_hours: float = 12.0
    secure_cookie: bool = False  # set when served over HTTPS (behind a TLS proxy)
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered; empty: host and localhost
    trusted_proxies: list[str] = field(default_factory=list)  # addresses/networks whose X-Forwarded-For counts
    threads: int = 8
    # /metrics for Prometheus on a port of its own (0: off), without login: the
    # fleet's gauges read from the data source at each scrape (skynet/reporting/metrics.py)
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    jobs_dsn: str | None = None  # [skynet] jobs_dsn: the fleet's jobs and workers (skynet/dashboard/fleet.py)


def config_from_daemon(cfg: Any, host: str | None = None, port: int | None = None, secure_cookie: bool = False,
                       trusted_proxies: list[str] | None = None) -> DashboardConfig:
    """A DashboardConfig from the daemon's Config (skynet.config.settings.Config):
    notify_dsn ("" -> local mode on state_dir; "env" -> libpq's environment),
    notify_sslmode, dashboard_password_hash, dashboard_token_hash,
    dashboard_hosts, dashboard_metrics_port, metrics_host; the rest comes from the command line. Attributes are read
    with defaults, so this also works on a Config without them."""
    raw = (getattr(cfg, "notify_dsn", "") or "").strip()
    return DashboardConfig(
        dsn=None if not raw else ("" if raw == "env" else raw),
        host=host or "127.0.0.1",
        port=8765 if port is None else port,
        password_hash=getattr(cfg, "dashboard_password_hash", "") or None,
        token_hash=getattr(cfg, "dashboard_token_hash", "") or None,
        state_dirs=[cfg.state_dir],
        sslmode=getattr(cfg, "notify_sslmode", "") or None,
        secure_cookie=secure_cookie,
        allowed_hosts=list(getattr(cfg, "dashboard_hosts", None) or []),
        trusted_proxies=list(trusted_proxies or []),
        metrics_port=int(getattr(cfg, "dashboard_metrics_port", 0) or 0),
        metrics_host=getattr(cfg, "metrics_host", "") or "127.0.0.1",
        jobs_dsn=getattr(cfg, "jobs_dsn", "") or None,
    )


def _source(cfg: DashboardConfig) -> Any:
    from skynet.dashboard.data import LocalSource, PgSource

    if cfg.dsn is None:
        return LocalSource(cfg.state_dirs)
    require_extra("postgres", "the dashboard of a fleet (notify_dsn)")
    return PgSource(cfg.dsn, cfg.sslmode, stale_factor=cfg.stale_factor)


def build(cfg: DashboardConfig) -> tuple[Any, Any]:
    """(Flask app, data source) for `cfg`; raises ValueError on a bad config."""
    from skynet.dashboard.app import create_app

    if not cfg.password_hash and not cfg.token_hash:
        raise ValueError("the dashboard needs a password or token hash (python -m skynet.dashboard hash-secret)")
    if cfg.password_hash and not cfg.password_hash.startswith("scrypt$"):
        raise ValueError("dashboard secrets must be given as hashes made by hash_secret(), not in clear")
    if cfg.token_hash and not (cfg.token_hash.startswith("scrypt$") or is_token_hash(cfg.token_hash)):
        raise ValueError("the dashboard token must be given as the sha256$ hash printed by "
                         "`python -m skynet.dashboard new-token` (or an older scrypt$ hash), not in clear")
    from skynet.dashboard.app import parse_proxy

    for proxy in cfg.trusted_proxies:
        parse_proxy(proxy)  # ValueError names a bad one before anything listens
    if cfg.dsn is None and not cfg.state_dirs:
        raise ValueError("no database and no state folder: nothing to show")
    source = _source(cfg)
    return create_app(cfg, source), source


class DashboardServer:
    """A waitress server whose loop runs in `run()` and stops cleanly from any
    thread with `stop()`.

    Only waitress's public API: `create_server(app, map=...)` is given a socket
    map of ours, `server.run()` serves until that map is empty, and `stop()`
    hands the loop a thunk through the server's trigger (`trigger.pull_trigger`)
    that closes every socket in the map from the loop's own thread, so no
    socket is closed under a poll in progress. Then the worker threads
    (`task_dispatcher.shutdown()`) and the database pool are closed."""

    def __init__(self, server: Any, source: Any, sockets: dict, metrics_server: Any = None) -> None:
        self.server = server
        self.metrics_server = metrics_server  # prometheus_client's HTTP server, when metrics_port is set
        self.sockets = sockets  # the socket map we gave create_server(); the server and its channels live in it
        self.source = source
        self._stop = threading.Event()
        self._done = threading.Event()
        self._running = False
        self._state = threading.Lock()

    @property
    def effective_port(self) -> int:
        return int(self.server.effective_port)

    def run(self) -> None:
        with self._state:
            if self._stop.is_set():
                return
            self._running = True
        try:
            self.server.run()  # returns once _close_sockets has emptied the map
        finally:
            self._close()

    def _close_sockets(self) -> None:
        for dispatcher in list(self.sockets.values()):
            try:
                dispatcher.close()
            except OSError:
                pass
        self.sockets.clear()

    def _close(self) -> None:
        if self._done.is_set():
            return
        self.server.task_dispatcher.shutdown()
        self._close_sockets()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.source.close()
        self._done.set()

    def stop(self, timeout: float = 10.0) -> None:
        with self._state:
            self._stop.set()
            running = self._running
        if not running:
            self._close()
            return
        try:
            self.server.trigger.pull_trigger(self._close_sockets)  # runs in the loop's thread
        except OSError:
            # The trigger is closed already (waitress closes a dispatcher whose poll
            # reports an error): close from here; the loop then finds the map empty
            # when its current poll ends (asyncore_loop_timeout, 1 s).
            self._close_sockets()
        self._done.wait(timeout)


def make_server(cfg: DashboardConfig) -> DashboardServer:
    """A dashboard server, not yet serving: `.run()` serves until `.stop()`;
    `.effective_port` is the port (useful with port=0)."""
    require_extra("dashboard", "the dashboard")
    from waitress import create_server

    app, source = build(cfg)
    sockets: dict = {}
    # waitress would drop every X-Forwarded-* header before the app sees it:
    # app.TrustedProxies does that instead, for all but the trusted proxies.
    # asyncore_use_poll: poll(), not select(), which fails on descriptors past 1023.
    server = create_server(app, map=sockets, host=cfg.host, port=cfg.port, threads=cfg.threads,
                           ident="skynet-dashboard", clear_untrusted_proxy_headers=False, asyncore_use_poll=True)
    return DashboardServer(server, source, sockets, _metrics_server(cfg, source))


def _metrics_server(cfg: DashboardConfig, source: Any) -> Any:
    """The fleet's /metrics on cfg.metrics_port (None when 0). A port of its own
    rather than a route of the app: Prometheus scrapes without a login, and the
    dashboard's pages must keep theirs; bound to 127.0.0.1 unless metrics_host
    says otherwise."""
    if not cfg.metrics_port:
        return None
    require_extra("metrics", "dashboard_metrics_port")
    from skynet.reporting import metrics

    server = metrics.start_server(cfg.metrics_host, cfg.metrics_port, metrics.fleet_registry(source.status))
    log.info("dashboard: the fleet's metrics on http://%s:%d/metrics", cfg.metrics_host, server.server_port)
    return server


def stop_server(server: DashboardServer) -> None:
    """Stop a server made by make_server() (from any thread)."""
    server.stop()


def serve(cfg: DashboardConfig) -> None:
    """Serve the dashboard in the foreground until interrupted."""
    server = make_server(cfg)
    from skynet.dashboard.app import allowed_hosts

    log.info("dashboard: http://%s:%d/ (%s); answers to host names %s%s", cfg.host, server.effective_port,
             server.source.describe(), ", ".join(allowed_hosts(cfg)),
             f"; trusts X-Forwarded-For from {', '.join(cfg.trusted_proxies)}" if cfg.trusted_proxies else "")
    if cfg.host in ("0.0.0.0", "::", "") and not cfg.allowed_hosts:
        log.warning("dashboard: listening on every address, but answering only to the host names above: set "
                    "dashboard_hosts to the names clients use (better: bind 127.0.0.1 behind a TLS proxy, README)")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
