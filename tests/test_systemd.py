"""systemd integration: the unit files verify, and the daemon speaks sd_notify."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.harness import REPO, Daemon, tree, wait_converged, write_config


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit, instance", [("skynet@.service", "skynet@s3.service"),
                                            ("skynet-user@.service", "skynet-user@sftp.service")])
def test_unit_files_verify(tmp_path, unit, instance):
    # verify needs the ExecStart binary to exist: point the unit at this checkout's venv
    text = (REPO / "systemd" / unit).read_text()
    text = text.replace("/opt/skynet", str(REPO)).replace("%h/skynet", str(REPO))
    (tmp_path / instance).write_text(text)
    assert (REPO / ".venv" / "bin" / "skynet").exists() or shutil.which("skynet"), "pip install -e . first"
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / instance)], capture_output=True, text=True,
                         cwd=tmp_path)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines()
                if ln.strip() and "Failed to" not in ln and "bus" not in ln.lower()]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


def test_notify_ready_status_watchdog_stopping(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(300):
        (src / f"{i}.txt").write_text(str(i))
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, tmp_path / "state")
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), "--run-with", "local", "--config-file", str(cfg)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    messages: list[str] = []

    def collect(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                pass

    try:
        collect(4)
        wait_converged(src, lambda: tree(dst), exact=True)
        collect(1.5)
        proc.send_signal(signal.SIGTERM)
        collect(2)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    text = "\n".join(messages)
    assert "READY=1" in text
    assert "WATCHDOG=1" in text
    assert "STOPPING=1" in text
    status = [ln for ln in text.splitlines() if ln.startswith("STATUS=")]
    assert any("queued" in ln and "m:" in ln for ln in status), status
    # READY only after the start-up scan has queued the 300 files
    ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m)
    assert ready_at < next(i for i, m in enumerate(messages) if "STOPPING=1" in m)


def test_sighup_reload_starts_and_stops_mappings(tmp_path):
    a_src, a_dst, b_src, b_dst = (tmp_path / n for n in ("a_src", "a_dst", "b_src", "b_dst"))
    for d in (a_src, a_dst, b_src, b_dst):
        d.mkdir()
    (a_src / "a.txt").write_text("a")
    (b_src / "b.txt").write_text("b")
    state = tmp_path / "state"
    one = {"a": {"source": str(a_src), "target": str(a_dst)}}
    two = dict(one, b={"source": str(b_src), "target": str(b_dst)})
    cfg = write_config(tmp_path / "c.ini", "local", one, state)
    with Daemon(cfg) as d:
        wait_converged(a_src, lambda: tree(a_dst), exact=True, daemon=d)
        write_config(cfg, "local", two, state)
        d.proc.send_signal(signal.SIGHUP)
        wait_converged(b_src, lambda: tree(b_dst), exact=True, daemon=d)
        write_config(cfg, "local", {"b": two["b"]}, state)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload: stopping mapping a", timeout=10)
        (a_src / "after.txt").write_text("not synced: mapping a was removed")
        (b_src / "after.txt").write_text("synced")
        wait_converged(b_src, lambda: tree(b_dst), exact=True, daemon=d)
        assert not (a_dst / "after.txt").exists()
        # a broken config on reload keeps the running one
        cfg.write_text("this is not a config")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload refused", timeout=10)
        (b_src / "still.txt").write_text("still running")
        wait_converged(b_src, lambda: tree(b_dst), exact=True, daemon=d)
