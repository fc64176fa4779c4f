"""The dashboard's web application (Flask, served by waitress).

Routes
    GET  /login           the login form (sets the CSRF cookie)
    POST /login           password -> session cookie
    POST /logout          ends the session (CSRF-checked)
    GET  /                the page (static HTML + /static/app.js, which polls:)
    GET  /api/status      everything the page shows, as JSON
    GET  /api/failures    older failures (?before=CURSOR)
    GET  /healthz         "ok" (no data; for a load balancer)

Everything but /login, /healthz and /static requires a session cookie, or
(for the JSON endpoints) `Authorization: Bearer TOKEN` when a token hash is
configured. Unauthenticated page requests are redirected to /login; JSON
requests get 401. Wrong passwords and wrong tokens are logged and counted
together per client address; past the limit the client gets 429. Responses
carry a strict Content-Security-Policy (no inline script, nothing from other
origins: the machines have no internet anyway) and `Cache-Control: no-store`.
The app only reads.

Every request must name an allowed host (`dashboard_hosts`; by default the
listen address and localhost): a page on evil.example whose name an attacker
re-points at 127.0.0.1 (DNS rebinding) is same-origin with itself for the
browser, so only the Host header tells such a request from a real one.
X-Forwarded-For/-Proto are honoured only from the configured trusted proxies
(werkzeug's ProxyFix behind an address check), so that throttling and the
log name the real client, and nobody else can pose as one.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from flask import Flask, Response, abort, jsonify, redirect, render_template, request
from werkzeug.middleware.proxy_fix import ProxyFix

from skynet.dashboard.auth import LoginThrottle, Sessions, TokenCheck, verify

log = logging.getLogger(__name__)

SESSION_COOKIE = "skynet_session"
CSRF_COOKIE = "skynet_login_csrf"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def create_app(cfg: Any, source: Any) -> Flask:
    """Build the Flask app for `cfg` (a DashboardConfig) reading from `source`
    (data.PgSource or data.LocalSource)."""
    from skynet.dashboard.fleet import register as register_fleet

    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(MAX_CONTENT_LENGTH=16 * 1024, JSON_SORT_KEYS=False)
    app.wsgi_app = TrustedProxies(app.wsgi_app, getattr(cfg, "trusted_proxies", None) or [])  # type: ignore[method-assign]
    hosts = HostAllowList(allowed_hosts(cfg))
    sessions = Sessions(lifetime=cfg.session_hours * 3600)
    tokens = TokenCheck(cfg.token_hash)
    throttle = LoginThrottle()
    if tokens.legacy:
        log.warning("dashboard: dashboard_token_hash is an scrypt hash, so every wrong token costs about 0.1 s of "
                    "CPU; make a random token with `python -m skynet.dashboard new-token` and store its sha256$ hash")

    def secure() -> bool:
        """Secure cookies when asked, or when the request came over HTTPS (a
        trusted proxy said so with X-Forwarded-Proto)."""
        return bool(cfg.secure_cookie) or request.is_secure

    def client() -> str:
        return request.remote_addr or "?"

    def logged_in() -> bool:
        if sessions.valid(request.cookies.get(SESSION_COOKIE)):
            return True
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return bearer_ok(auth[7:].strip())
        return False

    def bearer_ok(token: str) -> bool:
        """Check a Bearer token with the throttle and the log the login form uses."""
        who = client()
        if throttle.blocked(who):
            abort(_json_error("too many failed attempts; wait a few minutes", 429))
        if tokens.check(token):
            throttle.succeeded(who)
            return True
        throttle.failed(who)
        log.warning("dashboard: wrong Bearer token from %s", who)
        return False

    @app.before_request
    def known_host() -> Response | None:
        if hosts.allows(request.host):
            return None
        log.warning("dashboard: refused a request from %s for host %r (not in dashboard_hosts)", client(),
                    request.host[:200])
        return Response("unknown host name (see dashboard_hosts)\n", status=400, mimetype="text/plain")

    def same_origin() -> bool:
        """Refuse a POST whose Origin (or Referer) names another site. An
        absent or opaque ("null") origin proves nothing either way: then the
        CSRF token (double submit, SameSite=Strict cookie) decides alone."""
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        if not origin or origin == "null":
            return True
        return urlsplit(origin).netloc == request.host

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        if not request.path.startswith("/static/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    def login_form(error: str = "", status: int = 200) -> Response:
        token = secrets.token_urlsafe(32)
        resp = Response(render_template("login.html", csrf=token, error=error), status=status)
        resp.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=secure(), path="/login")
        return resp

    @app.get("/login")
    def login_get() -> Response:
        if logged_in():
            return redirect("/", 303)
        return login_form()

    @app.post("/login")
    def login_post() -> Response:
        who = client()
        form_token = request.form.get("csrf", "")
        cookie_token = request.cookies.get(CSRF_COOKIE, "")
        if not same_origin() or not cookie_token or not hmac.compare_digest(form_token, cookie_token):
            return login_form("Your login form expired; please try again.", 400)
        if throttle.blocked(who):
            return login_form("Too many failed attempts; wait a few minutes.", 429)
        password = request.form.get("password", "")
        ok = verify(password, cfg.password_hash) or tokens.check(password)
        if not ok:
            throttle.failed(who)
            log.warning("dashboard: failed login from %s", who)
            return login_form("Wrong password.", 401)
        throttle.succeeded(who)
        token = sessions.create()
        resp = redirect("/", 303)
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=secure(), path="/",
                        max_age=int(cfg.session_hours * 3600))
        resp.delete_cookie(CSRF_COOKIE, path="/login")
        return resp

    @app.post("/logout")
    def logout() -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        if token and sessions.valid(token) and same_origin() and hmac.compare_digest(
            request.form.get("csrf", ""), sessions.csrf_for(token)
        ):
            sessions.drop(token)
        resp = redirect("/login", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.get("/")
    def index() -> Response:
        if not logged_in():
            return redirect("/login", 303)
        token = request.cookies.get(SESSION_COOKIE) or ""
        csrf = sessions.csrf_for(token) if token else ""
        return Response(render_template("index.html", csrf=csrf, source=source.describe(),
                                        refresh_ms=int(cfg.refresh_seconds * 1000), fleet=fleet))

    @app.get("/api/status")
    def api_status() -> Response:
        if not logged_in():
            return _json_error("login required", 401)
        try:
            data = source.status()
        except Exception as exc:
            log.warning("dashboard: cannot read %s: %s", source.describe(), type(exc).__name__)
            return _json_error(f"cannot read the database ({type(exc).__name__}); retrying", 503)
        data["stale_factor"] = cfg.stale_factor
        return jsonify(data)

    @app.get("/api/failures")
    def api_failures() -> Response:
        if not logged_in():
            return _json_error("login required", 401)
        try:
            return jsonify(source.failures_page(request.args.get("before")))
        except Exception as exc:
            log.warning("dashboard: cannot read failures: %s", type(exc).__name__)
            return _json_error("cannot read the database; retrying", 503)

    fleet = register_fleet(app, cfg, logged_in)  # jobs and workers of a fleet (jobs_dsn): skynet/dashboard/fleet.py

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    return app


def _json_error(message: str, status: int) -> Response:
    resp = jsonify({"error": message})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="skynet"'
    return resp


def allowed_hosts(cfg: Any) -> list[str]:
    """The host names the dashboard answers to: `cfg.allowed_hosts` if set,
    else the listen address and localhost (any port)."""
    configured = list(getattr(cfg, "allowed_hosts", None) or [])
    return configured or [cfg.host, "localhost"]


def _split_host(value: str) -> tuple[str, str]:
    """("name", "port") of a Host header or allow-list entry; port "" if none.
    Names are compared case-insensitively and without a final dot."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:  # a name, or a bare IPv6 address
        name, port = value, ""
    return name.rstrip("."), port


class HostAllowList:
    """Host header check. An entry without a port allows the name on any
    port; "name:port" allows that port only."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._entries = [_split_host(e) for e in entries if e.strip()]

    def allows(self, host: str) -> bool:
        name, port = _split_host(host)
        return any(name == n and (not p or p == port) for n, p in self._entries)


_FORWARDED = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
              "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX", "HTTP_X_FORWARDED_BY")


class TrustedProxies:
    """WSGI middleware: X-Forwarded-For and -Proto (the last hop, as one
    proxy appends it) from a trusted proxy address replace the client
    address and scheme; from anybody else every forwarding header is
    dropped, so no client can pick the address it is throttled under."""

    def __init__(self, app: Callable, trusted: Iterable[str]) -> None:
        self._plain = app
        self._fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=0, x_port=0, x_prefix=0)
        self._nets = [parse_proxy(t) for t in trusted]

    def _trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self._nets)

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if self._nets and self._trusted(environ.get("REMOTE_ADDR", "")):
            return self._fixed(environ, start_response)
        for key in _FORWARDED:
            environ.pop(key, None)
        return self._plain(environ, start_response)


def parse_proxy(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or network (10.0.0.0/8); ValueError names the bad one."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"trusted proxy {text!r} is not an IP address or network") from None
