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
requests get 401. Responses carry a strict Content-Security-Policy (no inline
script, nothing from other origins: the machines have no internet anyway) and
`Cache-Control: no-store`. The app only reads.
"""
from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, redirect, render_template, request

from skynet.dashboard.auth import LoginThrottle, Sessions, TokenCache, verify

log = logging.getLogger(__name__)

SESSION_COOKIE = "skynet_session"
CSRF_COOKIE = "skynet_login_csrf"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def create_app(cfg: Any, source: Any) -> Flask:
    """Build the Flask app for `cfg` (a DashboardConfig) reading from `source`
    (data.PgSource or data.LocalSource)."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(MAX_CONTENT_LENGTH=16 * 1024, JSON_SORT_KEYS=False)
    sessions = Sessions(lifetime=cfg.session_hours * 3600)
    tokens = TokenCache(cfg.token_hash)
    throttle = LoginThrottle()
    secure = bool(cfg.secure_cookie)

    def logged_in() -> bool:
        if sessions.valid(request.cookies.get(SESSION_COOKIE)):
            return True
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and cfg.token_hash:
            return tokens.check(auth[7:].strip())
        return False

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
        resp.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/login")
        return resp

    @app.get("/login")
    def login_get() -> Response:
        if logged_in():
            return redirect("/", 303)
        return login_form()

    @app.post("/login")
    def login_post() -> Response:
        who = request.remote_addr or "?"
        form_token = request.form.get("csrf", "")
        cookie_token = request.cookies.get(CSRF_COOKIE, "")
        if not same_origin() or not cookie_token or not hmac.compare_digest(form_token, cookie_token):
            return login_form("Your login form expired; please try again.", 400)
        if throttle.blocked(who):
            return login_form("Too many failed attempts; wait a few minutes.", 429)
        password = request.form.get("password", "")
        ok = verify(password, cfg.password_hash) or (cfg.token_hash is not None and verify(password, cfg.token_hash))
        if not ok:
            throttle.failed(who)
            log.warning("dashboard: failed login from %s", who)
            return login_form("Wrong password.", 401)
        throttle.succeeded(who)
        token = sessions.create()
        resp = redirect("/", 303)
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/",
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
                                        refresh_ms=int(cfg.refresh_seconds * 1000)))

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
