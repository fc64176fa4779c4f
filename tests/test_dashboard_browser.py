"""The dashboard in a real browser: Debian's headless Chromium driven by
Playwright for Python (no `playwright install`: the machines have no internet).

Logs in through the form, sees the daemons, an upload in progress with its
progress bar moving on the next refresh, and a failure with its error; checks
the cookie flags the browser stored; a fresh browser context is sent to the
login page and its fetch of the JSON endpoint gets 401. Saves a screenshot in
the test's tmp folder and copies it to bench/out/dashboard.png.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import tests.server_pg  # noqa: F401  (registers the "postgres" server)
from tests.server_pg import pg_or_skip
from tests.test_dashboard import PASSWORD, running_dashboard, seed_fleet

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parent.parent


def ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} missing and not root (apt-get install chromium)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot install Debian chromium: {r.stderr[-300:]}")


@pytest.fixture
def browser():
    ensure_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-test.txt)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def test_dashboard_in_chromium(servers, tmp_path, browser):
    pg = pg_or_skip(servers)
    dsn = pg.fresh_db("browser")
    notifiers = seed_fleet(dsn, tmp_path)
    alpha, beta = notifiers
    beta.close()  # beta goes silent: after 3 heartbeat intervals it shows as stale
    c = pg.connect(dsn.rsplit("/", 1)[1])
    with c.cursor() as cur:
        cur.execute("UPDATE skynet.daemons SET stopped_at = NULL, last_heartbeat = now() - interval '1 minute'"
                    " WHERE host = %s", ("beta.example",))
    c.close()
    try:
        with running_dashboard(dsn=dsn) as base:
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            errors: list[str] = []
            # Script errors only ("failed to load resource" is the expected 401 of the wrong password).
            page.on("console", lambda m: errors.append(m.text)
                    if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto(base + "/")
            assert page.url.endswith("/login")
            page.fill("#password", "wrong")
            page.click("button[type=submit]")
            assert "Wrong password" in page.inner_text(".error")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(base + "/")

            # Daemons, the upload in progress, the failure.
            page.wait_for_selector("#daemons tbody tr[data-daemon]")
            daemons = page.inner_text("#daemons")
            assert "alpha.example" in daemons and "beta.example" in daemons and "photos" in daemons
            assert "running" in daemons and "stale" in daemons
            assert "(1 stale)" in page.inner_text("#daemon-count")
            page.wait_for_selector("#transfers progress")
            assert "videos/holiday.mp4" in page.inner_text("#transfers")
            assert page.eval_on_selector("#transfers progress", "p => [p.value, p.max]") == [400 * 2**20, 1000 * 2**20]
            assert "40%" in page.inner_text("#transfers")
            failures = page.inner_text("#failures")
            assert "locked/file.txt" in failures and "permission denied" in failures
            assert "report.pdf" in page.inner_text("#recent")
            assert page.locator("#chart svg rect.bar").count() >= 1

            # Live: the upload moves on and the page follows by itself.
            alpha.progress("photos", "videos/holiday.mp4", 750 * 2**20, 1000 * 2**20)
            assert alpha.flush(10)
            page.wait_for_function(
                "() => { const p = document.querySelector('#transfers progress'); return p && p.value >= 750 * 2**20; }",
                timeout=10_000,
            )
            assert "75%" in page.inner_text("#transfers")

            cookies = {c["name"]: c for c in ctx.cookies()}
            sess = cookies["skynet_session"]
            assert sess["httpOnly"] and sess["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # not readable from scripts

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            out = REPO / "bench" / "out"
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, out / "dashboard.png")
            assert not errors, errors

            # A browser without the session: sent to the login page, JSON refused.
            anon = browser.new_context()
            p2 = anon.new_page()
            p2.goto(base + "/")
            assert p2.url.endswith("/login") and "alpha.example" not in p2.content()
            status = p2.evaluate("async () => (await fetch('/api/status')).status")
            assert status == 401
            anon.close()
            ctx.close()
    finally:
        for n in notifiers:
            n.close()
