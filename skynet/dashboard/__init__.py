"""The skynet dashboard: a read-only web page over the notifier's PostgreSQL
tables (or, with no database, over the local daemon's state files).

    from skynet.dashboard import DashboardConfig, serve, hash_secret
    serve(DashboardConfig(dsn="postgresql://...", port=8765, password_hash=hash_secret("...")))

Web stack: Flask (routing, templates with auto-escaping, cookies) served by
waitress (a pure-Python production WSGI server with a thread pool): both are
small, well kept, have no C extension and no dependency outside PyPI, and
waitress needs no reverse proxy for an internal tool. The page is one HTML
file plus a small script that polls /api/status; no CDN, no build step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from skynet.dashboard.auth import hash_secret, verify

__all__ = ["DashboardConfig", "serve", "make_server", "stop_server", "build", "hash_secret", "verify"]

log = logging.getLogger(__name__)


@dataclass
class DashboardConfig:
    """What the dashboard needs. At least one of password_hash / token_hash."""

    dsn: str | None = None  # None: local mode (state_dirs); "": libpq environment variables
    host: str = "127.0.0.1"
    port: int = 8765
    password_hash: str | None = None  # for the login form (hash_secret())
    token_hash: str | None = None  # for `Authorization: Bearer` on the JSON endpoints (and the form)
    state_dirs: list[str] = field(default_factory=list)  # local mode: daemons' state folders
    sslmode: str | None = None
    stale_factor: float = 3.0  # a daemon is stale after this many missed heartbeat intervals
    refresh_seconds: float = 3.0
    session_hours: float = 12.0
    secure_cookie: bool = False  # set when served over HTTPS (behind a TLS proxy)
    threads: int = 8


def _source(cfg: DashboardConfig) -> Any:
    from skynet.dashboard.data import LocalSource, PgSource

    if cfg.dsn is None:
        return LocalSource(cfg.state_dirs)
    return PgSource(cfg.dsn, cfg.sslmode, stale_factor=cfg.stale_factor)


def build(cfg: DashboardConfig) -> tuple[Any, Any]:
    """(Flask app, data source) for `cfg`; raises ValueError on a bad config."""
    from skynet.dashboard.app import create_app

    if not cfg.password_hash and not cfg.token_hash:
        raise ValueError("the dashboard needs a password or token hash (python -m skynet.dashboard hash-secret)")
    for h in (cfg.password_hash, cfg.token_hash):
        if h and not h.startswith("scrypt$"):
            raise ValueError("dashboard secrets must be given as hashes made by hash_secret(), not in clear")
    if cfg.dsn is None and not cfg.state_dirs:
        raise ValueError("no database and no state folder: nothing to show")
    source = _source(cfg)
    return create_app(cfg, source), source


def make_server(cfg: DashboardConfig) -> Any:
    """A waitress server, not yet running: `.run()` serves until `.close()`;
    `.effective_port` is the port (useful with port=0)."""
    from waitress import create_server

    app, source = build(cfg)
    server = create_server(app, host=cfg.host, port=cfg.port, threads=cfg.threads, ident="skynet-dashboard")
    server.skynet_source = source
    return server


def stop_server(server: Any) -> None:
    """Stop a server made by make_server() (from any thread): its worker
    threads, its sockets, and the database pool."""
    from waitress import wasyncore

    server.task_dispatcher.shutdown()
    wasyncore.close_all(server._map)
    server.skynet_source.close()


def serve(cfg: DashboardConfig) -> None:
    """Serve the dashboard in the foreground until interrupted."""
    server = make_server(cfg)
    log.info("dashboard: http://%s:%d/ (%s)", cfg.host, server.effective_port, server.skynet_source.describe())
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)
