"""systemd integration: the unit files verify, and the daemon speaks sd_notify."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import REPO, Daemon, run_main, tree, wait_converged, world_writable_tmp, write_config


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit, instance", [("skynet@.service", "skynet@s3.service"),
                                            ("skynet-user@.service", "skynet-user@sftp.service"),
                                            ("skynet-worker@.service", "skynet-worker@s3.service")])
def test_unit_files_verify(tmp_path, unit, instance):
    # verify needs the ExecStart binary to exist: point the unit at the skynet command
    # of the venv running the tests (a git worktree may share another checkout's venv)
    venv = Path(sys.executable).parent.parent
    assert (venv / "bin" / "skynet").exists(), "pip install -e . first (./dev setup)"
    text = (REPO / "systemd" / unit).read_text()
    text = text.replace("/opt/skynet/.venv", str(venv)).replace("%h/skynet/.venv", str(venv))
    (tmp_path / instance).write_text(text)
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
        d.proc.send_signal(signal.SIGHUP)  # nothing changed: the log still says the reload happened
        d.wait_log("no change to the running mappings", timeout=10)
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


def unit_service_keys(unit: Path) -> dict[str, list[str]]:
    """The [Service] keys of a unit file, each with its values in order."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def test_system_unit_reads_and_writes_where_the_wizard_and_readme_say():
    from skynet.cli import wizard
    keys = unit_service_keys(REPO / "systemd" / "skynet@.service")
    assert f"--run-with %i --config-file {wizard.SYSTEM_CONFIG_DIR}/%i.ini" in keys["ExecStart"][0]
    assert os.path.join("/var/lib", keys["StateDirectory"][0]) == os.path.join(wizard.SYSTEM_STATE_DIR, "%i")
    assert keys["User"] == ["skynet"] and keys["ProtectSystem"] == ["strict"]
    # exit code 2 (config error, folder out of reach, refused login) is not retried every RestartSec
    assert keys["RestartPreventExitStatus"] == ["2"]
    readme = (REPO / "README.md").read_text()
    for step in ("sudo /opt/skynet/dev setup", "sudo cp /opt/skynet/systemd/skynet@.service /etc/systemd/system/",
                 "--config sftp --config-file /etc/skynet/sftp.ini", "systemctl enable --now skynet@sftp"):
        assert step in readme, step
    assert (REPO / "dev").read_text().count("\nsetup)") == 1


def _hardened(state: Path, writable: list[Path]) -> list[str]:
    """A command prefix doing what skynet@.service's hardening does, without systemd: a private
    mount namespace where everything is read-only (ProtectSystem=strict, ProtectHome=read-only)
    but the StateDirectory= and ReadWritePaths= folders, then User= ('nobody' here) with
    NoNewPrivileges. (PrivateTmp is left out: the test's folders live in /tmp.)"""
    binds = " && ".join(f"mount --bind {p} {p}" for p in [state, *writable])
    setup = f"{binds} && mount -o remount,bind,ro / && exec \"$@\""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", setup, "sh",
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root to make a mount namespace")
def test_daemon_runs_under_the_units_hardening():
    base = world_writable_tmp("skynet-unit-")
    try:
        src, dst, unit_state = base / "src", base / "dst", base / "var-lib-skynet-local"
        for d in (src, dst, unit_state):
            d.mkdir()
            os.chown(d, 65534, 65534)  # systemd chowns StateDirectory= to User=; the target is the service's
        (src / "before.txt").write_text("there before the start")
        os.chmod(src / "before.txt", 0o644)
        sock_path = str(base / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        os.chmod(sock_path, 0o777)
        sock.settimeout(0.2)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path, STATE_DIRECTORY=str(unit_state))

        def start(state_dir: Path) -> subprocess.Popen:
            cfg = write_config(base / "local.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, state_dir)
            os.chown(cfg, 65534, 65534)
            os.chmod(cfg, 0o600)
            return subprocess.Popen(_hardened(unit_state, [dst]) + [sys.executable, str(REPO / "main.py"), "--run-with",
                                    "local", "--config-file", str(cfg)], cwd="/", env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        # the state folder the wizard used to write (the XDG one of whoever ran it): read-only here
        proc = start(base / "home-state")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert "[skynet] state_dir" in err and f"state_dir = {unit_state}" in err and "Traceback" not in err, err
        # the unit's StateDirectory=, as the wizard now offers for /etc/skynet/NAME.ini
        proc = start(unit_state)
        messages: list[str] = []
        try:
            deadline = time.monotonic() + 60
            while not any("READY=1" in m for m in messages) and time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(socket.timeout):
                    messages.append(sock.recv(4096).decode())
            assert any("READY=1" in m for m in messages), (messages, proc.poll())
            (src / "after.txt").write_text("written while it runs")
            os.chmod(src / "after.txt", 0o644)
            wait_converged(src, lambda: tree(dst), exact=True)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sock.close()
        assert (unit_state / "m.db").exists()
        res = run_main("--status", "--config-file", str(base / "local.ini"))
        assert res.returncode == 0 and "not running" in res.stdout, res.stdout + res.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
