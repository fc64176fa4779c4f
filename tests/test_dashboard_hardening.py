"""The dashboard against a hostile client (issue 18, item 7), over HTTP on a
real waitress server: wrong Bearer tokens are refused, logged (without the
token) and throttled together with wrong passwords; a right token costs no
scrypt; a foreign Host (DNS rebinding) is refused; cookies are Secure when
asked; X-Forwarded-For is believed from a trusted proxy only; and
`main.py --dashboard` plumbs all of it from its options and the config."""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.test_dashboard import PASSWORD, TOKEN, hashes, running_dashboard

LIMIT = 10  # LoginThrottle's default: failures per client address per window


def _local(tmp_path: Path, **kw) -> dict:
    """Local mode (no database): the state folder may be empty; these tests look at the door, not the data."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return dict(state_dirs=[str(state)], **kw)


def _token() -> tuple[str, str]:
    from skynet.dashboard.auth import new_token  # inside: the module must load on code without it, and fail here

    return new_token()


def _bearer(token: str, **extra: str) -> dict:
    return {"Authorization": f"Bearer {token}", **extra}


def _login_code(base: str, password: str, headers: dict | None = None) -> int:
    s = requests.Session()
    form = s.get(base + "/login", headers=headers)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    return s.post(base + "/login", data={"csrf": csrf, "password": password}, headers=headers,
                  allow_redirects=False).status_code


@pytest.mark.parametrize("kind", ["random token (sha256$)", "older scrypt$ token"])
def test_wrong_tokens_are_refused_logged_and_throttled_like_passwords(tmp_path, caplog, kind):
    token, digest = _token() if kind.startswith("random") else (TOKEN, hashes()[1])
    caplog.set_level("INFO")
    wrong = "Wr0ngTokenValue-" + "x" * 27
    with running_dashboard(**_local(tmp_path, token_hash=digest)) as base:
        codes = [requests.get(base + "/api/status", headers=_bearer(wrong)).status_code for _ in range(LIMIT + 2)]
        assert codes == [401] * LIMIT + [429, 429], codes
        # One throttle for both doors: the right token and the right password wait too.
        assert requests.get(base + "/api/status", headers=_bearer(token)).status_code == 429
        assert _login_code(base, PASSWORD) == 429
    lines = [r.getMessage() for r in caplog.records if "wrong Bearer token" in r.getMessage()]
    assert len(lines) == LIMIT and all("127.0.0.1" in line for line in lines), lines
    assert wrong not in caplog.text and token not in caplog.text


def test_a_right_token_is_checked_without_scrypt(tmp_path, monkeypatch):
    """`python -m skynet.dashboard new-token` prints a token and its hash;
    served with that hash, neither a right nor a wrong token runs scrypt."""
    out = subprocess.run([sys.executable, "-m", "skynet.dashboard", "new-token"], capture_output=True, text=True,
                         cwd=str(Path(__file__).resolve().parent.parent), timeout=60)
    assert out.returncode == 0, out.stderr
    token = re.search(r"token .*: (\S+)", out.stdout).group(1)
    digest = re.search(r"dashboard_token_hash = (sha256\$[0-9a-f]{64})", out.stdout).group(1)
    assert len(token) >= 43  # 256 random bits
    calls = []
    real = hashlib.scrypt

    def counting_scrypt(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counting_scrypt)
    with running_dashboard(**_local(tmp_path, token_hash=digest, password_hash=hashes()[0])) as base:
        for _ in range(3):
            r = requests.get(base + "/api/status", headers=_bearer(token))
            assert r.status_code == 200 and r.json()["mode"] == "local"
            assert requests.get(base + "/api/status", headers=_bearer(token + "x")).status_code == 401
    assert calls == []


def test_tokens_stored_as_scrypt_by_earlier_versions_still_work(tmp_path, caplog):
    caplog.set_level("INFO")
    with running_dashboard(**_local(tmp_path)) as base:  # token_hash = hash_secret(TOKEN)
        assert requests.get(base + "/api/status", headers=_bearer(TOKEN)).status_code == 200
    assert "new-token" in caplog.text  # told how to move to a cheap token


def test_a_foreign_host_is_refused(tmp_path, caplog):
    token, digest = TOKEN, hashes()[1]  # (a legacy hash: this test owes nothing to the new token format)
    caplog.set_level("INFO")
    with running_dashboard(**_local(tmp_path, token_hash=digest)) as base:
        port = base.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.2", f"localhost.evil.example:{port}"):
            r = requests.get(base + "/api/status", headers=_bearer(token, Host=host))
            assert r.status_code == 400 and "mode" not in r.text, (host, r.status_code)
            assert requests.get(base + "/login", headers={"Host": host}).status_code == 400
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "LOCALHOST.", "127.0.0.1"):
            r = requests.get(base + "/api/status", headers=_bearer(token, Host=host))
            assert r.status_code == 200, (host, r.status_code)
    assert "evil.example" in caplog.text and "dashboard_hosts" in caplog.text


def test_configured_host_names_replace_the_defaults(tmp_path):
    token, digest = _token()
    with running_dashboard(**_local(tmp_path, token_hash=digest, allowed_hosts=["dash.example.com"])) as base:
        assert requests.get(base + "/api/status", headers=_bearer(token, Host="dash.example.com")).status_code == 200
        assert requests.get(base + "/api/status", headers=_bearer(token)).status_code == 400


def test_cookies_are_secure_when_asked(tmp_path):
    with running_dashboard(**_local(tmp_path, secure_cookie=True)) as base:
        s = requests.Session()
        form = s.get(base + "/login")
        assert "Secure" in form.headers["Set-Cookie"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        # requests keeps Secure cookies off http://: send the CSRF cookie by hand
        r = requests.post(base + "/login", data={"csrf": csrf, "password": PASSWORD}, allow_redirects=False,
                          cookies={"skynet_login_csrf": csrf})
        assert r.status_code == 303 and "skynet_session=" in r.headers["Set-Cookie"]
        assert "Secure" in r.headers["Set-Cookie"]
    with running_dashboard(**_local(tmp_path)) as base:
        assert "Secure" not in requests.get(base + "/login").headers["Set-Cookie"]


def test_forwarded_for_counts_from_a_trusted_proxy_only(tmp_path, caplog):
    token, digest = _token()
    caplog.set_level("INFO")
    with running_dashboard(**_local(tmp_path, token_hash=digest, trusted_proxies=["127.0.0.1"])) as base:
        fwd = {"X-Forwarded-For": "203.0.113.7"}
        codes = [requests.get(base + "/api/status", headers=_bearer("bad", **fwd)).status_code
                 for _ in range(LIMIT + 1)]
        assert codes == [401] * LIMIT + [429]
        # Another client behind the same proxy is not throttled for the first one's failures.
        other = {"X-Forwarded-For": "203.0.113.8"}
        assert requests.get(base + "/api/status", headers=_bearer(token, **other)).status_code == 200
        # X-Forwarded-Proto: https from the proxy makes the cookies Secure.
        assert "Secure" in requests.get(base + "/login", headers={"X-Forwarded-Proto": "https"}).headers["Set-Cookie"]
    assert "wrong Bearer token from 203.0.113.7" in caplog.text
    caplog.clear()
    # From an address that is not a trusted proxy, X-Forwarded-For is ignored: a
    # client cannot pick a fresh address per try to escape the throttle.
    with running_dashboard(**_local(tmp_path, token_hash=digest, trusted_proxies=["10.9.8.7"])) as base:
        codes = [requests.get(base + "/api/status", headers=_bearer("bad", **{"X-Forwarded-For": f"198.51.100.{i}"})
                              ).status_code for i in range(LIMIT + 1)]
        assert codes == [401] * LIMIT + [429]
        assert "Secure" not in requests.get(base + "/login", headers={"X-Forwarded-Proto": "https"}).headers["Set-Cookie"]
    assert "198.51.100." not in caplog.text and "wrong Bearer token from 127.0.0.1" in caplog.text


def test_a_bad_token_hash_or_proxy_is_refused_at_start(tmp_path):
    from skynet.dashboard import DashboardConfig, build

    with pytest.raises(ValueError, match="new-token"):
        build(DashboardConfig(**_local(tmp_path, token_hash="sha256$not-hex")))
    with pytest.raises(ValueError, match="trusted proxy"):
        build(DashboardConfig(**_local(tmp_path, password_hash=hashes()[0], trusted_proxies=["proxy.example"])))


def test_main_py_dashboard_takes_hosts_secure_cookies_and_a_trusted_proxy(tmp_path):
    """The options of `main.py --dashboard` and the dashboard_hosts key reach the server."""
    from skynet.dashboard.auth import new_token
    from tests.harness import REPO, write_config

    token, digest = new_token()
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "state").mkdir()
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(tmp_path / "dst")}},
                       tmp_path / "state", extra={"dashboard_token_hash": digest,
                                                  "dashboard_password_hash": hashes()[0],
                                                  "dashboard_hosts": "dash.example.com, localhost"})
    cfg.chmod(0o600)
    log = tmp_path / "dash.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), "--dashboard", "--config-file", str(cfg),
                                 "--dashboard-port", "0", "--secure-cookies", "--trusted-proxy", "127.0.0.1"],
                                cwd=str(REPO), stdout=logf, stderr=subprocess.STDOUT)
    try:
        port = _wait_for_port(proc, log)
        base = f"http://127.0.0.1:{port}"
        host = {"Host": "dash.example.com"}
        assert requests.get(base + "/api/status", headers=_bearer(token)).status_code == 400  # 127.0.0.1 not listed
        assert requests.get(base + "/api/status", headers=_bearer(token, **host)).status_code == 200
        assert "Secure" in requests.get(base + "/login", headers=host).headers["Set-Cookie"]
        r = requests.get(base + "/api/status", headers=_bearer("bad", **host, **{"X-Forwarded-For": "192.0.2.44"}))
        assert r.status_code == 401
        _wait_for(lambda: "wrong Bearer token from 192.0.2.44" in log.read_text(), proc, log)
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_for(cond, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def _wait_for_port(proc: subprocess.Popen, log: Path) -> int:
    found: list[int] = []

    def listening() -> bool:
        m = re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/", log.read_text())
        if m:
            found.append(int(m.group(1)))
        return bool(m)

    _wait_for(listening, proc, log)
    return found[0]
