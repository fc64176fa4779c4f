"""Secrets at rest and in the log (issue 18, item 8): a DSN is described from
what libpq parses, never by editing its text; config files are written
through a fresh temporary file (a link planted at the old fixed `.tmp` name is
not followed) and end 0600; a config holding secrets that others may read
gets one warning line with the fix."""
from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from skynet.reporting.notifier import Notifier, redact_dsn
from tests.harness import Daemon, run_main, write_config
from tests.servers import free_port

SECRET_DSNS = [
    # (dsn, the secret part that must not appear, what must be shown)
    (r"host=db.example user=bob password=Hunter\ 2secret dbname=sky", "2secret", "postgresql://bob:***@db.example/sky"),
    ("host=db.example password='a b c' dbname=sky", "b c", "postgresql://:***@db.example/sky"),
    (r"host=db.example password='it\'s x' dbname=sky", "s x", "postgresql://:***@db.example/sky"),
    ("postgresql://bob:pa%20ss%40word@db.example:5433/sky", "ss", "postgresql://bob:***@db.example:5433/sky"),
    ("postgresql://bob:plainpw@db.example/sky", "plainpw", "postgresql://bob:***@db.example/sky"),
    ("postgresql://u:p@h/db?password=xSecretQ", "xSecretQ", "postgresql://u:***@h/db"),
    ("postgresql://u@h/db?password=x%20SecretQ&sslmode=require", "SecretQ", "postgresql://u:***@h/db?sslmode=require"),
]


@pytest.mark.parametrize("dsn,secret,shown", SECRET_DSNS)
def test_redact_dsn_describes_the_parsed_dsn(dsn, secret, shown):
    out = redact_dsn(dsn)
    assert secret not in out
    assert out == shown


def test_a_dsn_that_cannot_be_parsed_is_not_echoed():
    out = redact_dsn("host=db password=Hunter2 = broken")
    assert "Hunter2" not in out and "could not be parsed" in out
    assert redact_dsn("postgresql://db/sky") == "postgresql://db/sky"  # nothing secret: shown as is


def test_the_dashboard_names_its_database_without_the_password():
    from skynet.dashboard.data import PgSource

    src = PgSource(r"host=127.0.0.1 port=1 user=bob password=Hunter\ 2secret dbname=sky")  # no connection yet
    try:
        assert src.describe() == "postgresql://bob:***@127.0.0.1:1/sky"
    finally:
        src.close()


def test_the_notifier_never_logs_an_escaped_password(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    dsn = rf"host=127.0.0.1 port={free_port()} user=bob password=Hunter\ 2secret dbname=sky"
    n = Notifier(dsn, host="h", service="local", daemon_id="h/local/x", spool_dir=str(tmp_path / "spool"),
                 version="t", backoff_initial=0.05, backoff_cap=0.1)
    try:
        n.event("m", "queued", "send", "a")
        deadline = time.monotonic() + 30
        while "unreachable" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    finally:
        n.close(2)
    assert "2secret" not in caplog.text and "Hunter" not in caplog.text
    assert "bob:***@127.0.0.1" in caplog.text


# -- writing files ----------------------------------------------------------------------------
def test_write_atomic_never_follows_a_link_and_leaves_0600(tmp_path):
    from skynet.state.atomicfile import write_atomic

    outside = tmp_path / "outside.txt"
    outside.write_text("theirs\n")
    target = tmp_path / "conf.ini"
    (tmp_path / "conf.ini.tmp").symlink_to(outside)
    old = os.umask(0)
    try:
        write_atomic(str(target), "[skynet]\nsecret = 1\n")
        write_atomic(str(target), b"[skynet]\nsecret = 2\n")
    finally:
        os.umask(old)
    assert outside.read_text() == "theirs\n"
    assert target.read_text() == "[skynet]\nsecret = 2\n" and not target.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.ini", "conf.ini.tmp", "outside.txt"]  # no leftovers


def test_the_wizard_does_not_follow_a_link_planted_at_the_temp_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    outside = tmp_path / "victim.txt"
    outside.write_text("not yours\n")
    path = tmp_path / "local.ini"
    path.write_text("")
    path.chmod(0o644)
    (tmp_path / "local.ini.tmp").symlink_to(outside)
    res = run_main("--config", "local", "--config-file", str(path), "--non-interactive",
                   "--set", f"mapping.docs.source={src}", "--set", f"mapping.docs.target={tmp_path / 'dst'}",
                   "--set", f"skynet.state_dir={tmp_path / 'state'}")
    assert res.returncode == 0, res.stderr
    assert outside.read_text() == "not yours\n"
    assert (tmp_path / "local.ini.tmp").is_symlink()  # left alone, not written through
    assert "[mapping docs]" in path.read_text() and not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- the warning ---------------------------------------------------------------------------------
def _config(tmp_path: Path, name: str, mode: int, extra: dict[str, str]) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    cfg = write_config(tmp_path / name, "local", {"m": {"source": str(src), "target": str(tmp_path / "dst")}},
                       tmp_path / "state", extra=extra)
    cfg.chmod(mode)
    return cfg


DSN_WITH_PASSWORD = {"notify_dsn": "postgresql://bob:S3cretPw@127.0.0.1:1/sky"}


def test_a_readable_config_with_secrets_gets_one_warning(tmp_path):
    cfg = _config(tmp_path, "open.ini", 0o644, DSN_WITH_PASSWORD)
    res = run_main("--status", "--config-file", str(cfg))
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, res.stderr
    assert f"chmod 600 {cfg}" in warnings[0] and "notify_dsn" in warnings[0] and "S3cretPw" not in res.stderr


def test_no_warning_for_a_private_config_or_one_without_secrets(tmp_path):
    private = _config(tmp_path, "private.ini", 0o600, DSN_WITH_PASSWORD)
    plain = _config(tmp_path, "plain.ini", 0o644, {"notify_dsn": "postgresql://bob@127.0.0.1:1/sky"})
    for cfg in (private, plain):
        res = run_main("--status", "--config-file", str(cfg))
        assert res.returncode == 0 and "warning" not in res.stderr and "chmod" not in res.stderr, res.stderr


def test_the_daemon_warns_at_start(tmp_path):
    from tests.test_dashboard import hashes

    cfg = _config(tmp_path, "daemon.ini", 0o640, {"dashboard_password_hash": hashes()[0]})
    with Daemon(cfg) as d:
        text = d.log_text()
    assert f"chmod 600 {cfg}" in text and "dashboard_password_hash" in text and "readable by group" in text
