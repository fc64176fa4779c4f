"""Host key trust (issue 18, items 8 and 9), against the real test sshd.

- A known_hosts that trusts a key of ANOTHER TYPE for the host: the offered
  key is a changed key (refused, fingerprint shown), never a merely
  "unknown" one to say yes to; both in the daemon's connection and in the
  setup wizard.
- `--non-interactive` trusts a new key only when its fingerprint is given
  (`--set sftp.host_key_fingerprint=SHA256:...`); else it stops with exit 2
  and one line naming the fingerprint and the exact --set to pass.
- known_hosts is rewritten through a fresh temporary name: a link planted at
  the old fixed name is never followed.
"""
from __future__ import annotations

import os
import stat
import subprocess

import asyncssh
import pytest

from connections.sftp.con import HostKeyChanged, build, fetch_host_key, fingerprint, known_hosts_line, trust_host_key
from skynet.state.atomicfile import write_atomic
from tests.harness import run_main
from tests.test_wizard_remote import run, sftp_answers

OTHER_KEYS = {
    "ecdsa": lambda: asyncssh.generate_private_key("ecdsa-sha2-nistp256").convert_to_public(),
    "rsa": lambda: asyncssh.generate_private_key("ssh-rsa", key_size=2048).convert_to_public(),
}


@pytest.fixture
def srv(servers):
    return servers.get("sftp")


def server_fingerprint(srv) -> str:
    """The fingerprint as ssh-keygen prints it (what an operator compares)."""
    out = subprocess.run(["ssh-keygen", "-lf", srv.host_key_file + ".pub"], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def known_with_other_type(srv, path, kind: str) -> asyncssh.SSHKey:
    """known_hosts trusting a key of another type than the server's (ed25519) for host:port."""
    other = OTHER_KEYS[kind]()
    path.write_text(known_hosts_line(srv.host, srv.port, other))
    return other


# -- the daemon's connection ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(OTHER_KEYS))
def test_connection_refuses_a_key_of_another_type_as_changed(srv, tmp_path, kind):
    """A guard: the daemon already did this on the old code (paramiko's
    SSHClient raises BadHostKeyException for a host whose trusted keys are
    all of other types); the wizard did not, and now agrees with it."""
    known = tmp_path / "known_hosts"
    other = known_with_other_type(srv, known, kind)
    con = build(srv.service(known_hosts=str(known)), srv.fresh_folder())
    try:
        with pytest.raises(HostKeyChanged) as ei:
            con.connect()
    finally:
        con.close()
    msg = str(ei.value)
    assert "HOST KEY CHANGED" in msg and server_fingerprint(srv) in msg and fingerprint(other) in msg, msg


def test_connection_accepts_the_known_type_among_several(srv, tmp_path):
    """No false alarm: known_hosts trusting ecdsa AND the server's ed25519 key connects."""
    known = tmp_path / "known_hosts"
    known_with_other_type(srv, known, "ecdsa")
    known.write_text(known.read_text() + srv.known_hosts_line())
    con = build(srv.service(known_hosts=str(known)), srv.fresh_folder())
    try:
        con.connect()
        con.check()
    finally:
        con.close()


def test_fetch_host_key_asks_for_the_known_types_first(srv):
    key = fetch_host_key(srv.host, srv.port, timeout=5, prefer=["ecdsa-sha2-nistp256", "ssh-rsa"])
    assert fingerprint(key) == server_fingerprint(srv)  # the server has only ed25519: that is what it offers


# -- the wizard -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(OTHER_KEYS))
def test_wizard_calls_a_key_of_another_type_changed_not_unknown(srv, tmp_path, kind):
    src = tmp_path / "src"
    src.mkdir()
    known = tmp_path / "known_hosts"
    known_with_other_type(srv, known, kind)
    before = known.read_bytes()
    path = tmp_path / "sftp.ini"
    # "y": what a user asked "trust this unknown key?" would answer
    res = run(["--config", "sftp", "--config-file", str(path)], sftp_answers(srv, known, "y", src, tmp_path))
    assert res.exit_code == 2, res.output
    assert "CHANGED" in res.output and server_fingerprint(srv) in res.output, res.output
    assert "does not know" not in res.output and "Trust this key" not in res.output, res.output
    assert "ssh-keygen -R" in res.output  # how to trust it, once the change is confirmed
    assert known.read_bytes() == before and not path.exists()


def _non_interactive(srv, tmp_path, known, *extra: str) -> subprocess.CompletedProcess:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    sets = [f"sftp.host={srv.host}", f"sftp.port={srv.port}", f"sftp.user={srv.user}", f"sftp.known_hosts={known}",
            f"sftp.key_file={srv.key_file}", "sftp.use_agent=no", f"mapping.main.source={src}",
            f"mapping.main.target={srv.fresh_folder('wiz')}", f"skynet.state_dir={tmp_path / 'state'}", *extra]
    args = ["--config", "sftp", "--config-file", str(tmp_path / "sftp.ini"), "--non-interactive"]
    for item in sets:
        args += ["--set", item]
    return run_main(*args)


@pytest.mark.parametrize("extra", [(), ("sftp.trust_host_key=yes",)], ids=["nothing", "trust_yes_only"])
def test_non_interactive_refuses_a_new_key_without_its_fingerprint(srv, tmp_path, extra):
    known = tmp_path / "known_hosts"
    res = _non_interactive(srv, tmp_path, known, *extra)
    fp = server_fingerprint(srv)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert fp in lines[0] and f"--set sftp.host_key_fingerprint={fp}" in lines[0], lines[0]
    assert not known.exists() and not (tmp_path / "sftp.ini").exists()


def test_non_interactive_trusts_the_key_whose_fingerprint_is_given(srv, tmp_path):
    known = tmp_path / "known_hosts"
    res = _non_interactive(srv, tmp_path, known, f"sftp.host_key_fingerprint={server_fingerprint(srv)}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert known.read_text() == srv.known_hosts_line()
    assert stat.S_IMODE(os.stat(known).st_mode) == 0o600
    assert (tmp_path / "sftp.ini").exists()
    # run again: the key is known now, and the fingerprint still matches
    res = _non_interactive(srv, tmp_path, known, f"sftp.host_key_fingerprint={server_fingerprint(srv)}")
    assert res.returncode == 0 and "already trusted" in res.stdout, res.stdout + res.stderr


def test_non_interactive_refuses_a_wrong_fingerprint(srv, tmp_path):
    known = tmp_path / "known_hosts"
    wrong = fingerprint(asyncssh.generate_private_key("ecdsa-sha2-nistp256").convert_to_public())
    res = _non_interactive(srv, tmp_path, known, f"sftp.host_key_fingerprint={wrong}")
    assert res.returncode == 2, res.stdout + res.stderr
    assert wrong in res.stderr and server_fingerprint(srv) in res.stderr, res.stderr
    assert not known.exists() and not (tmp_path / "sftp.ini").exists()


def test_interactive_wizard_with_the_fingerprint_given_asks_nothing_about_the_key(srv, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    known = tmp_path / "known_hosts"
    path = tmp_path / "sftp.ini"
    answers = sftp_answers(srv, known, "", src, tmp_path)
    del answers[4]  # no "trust this key?" question
    res = run(["--config", "sftp", "--config-file", str(path), "--set",
               f"sftp.host_key_fingerprint={server_fingerprint(srv)}"], answers)
    assert res.exit_code == 0, res.output
    assert "Trust this key" not in res.output and "matches the fingerprint given" in res.output
    assert known.read_text() == srv.known_hosts_line()


# -- known_hosts writes -----------------------------------------------------------------------------
def test_known_hosts_write_never_follows_a_planted_temp_link(srv, tmp_path):
    ssh = tmp_path / "ssh"
    ssh.mkdir()
    known = ssh / "known_hosts"
    known.write_text("otherhost ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDOkr5hFlWcGAxOpGfZbPxjzTy9FqXYFWJaoodqTYWvB\n")
    outside = tmp_path / "precious"
    outside.write_text("not yours\n")
    os.chmod(outside, 0o644)
    planted = [ssh / "known_hosts.skynet-tmp", ssh / "known_hosts.tmp"]  # fixed names, old and obvious
    for link in planted:
        os.symlink(outside, link)
    key = fetch_host_key(srv.host, srv.port, timeout=5)
    trust_host_key(str(known), srv.host, srv.port, key)
    assert outside.read_text() == "not yours\n" and stat.S_IMODE(os.stat(outside).st_mode) == 0o644
    assert not known.is_symlink() and stat.S_IMODE(os.stat(known).st_mode) == 0o600
    assert known.read_text().splitlines()[1] == srv.known_hosts_line().strip()
    assert sorted(os.listdir(ssh)) == sorted(["known_hosts"] + [p.name for p in planted])  # no temp file left


def test_write_atomic_mode_and_no_leftovers(tmp_path):
    target = tmp_path / "f"
    write_atomic(str(target), "one\n")
    assert target.read_text() == "one\n" and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    write_atomic(str(target), b"two\n", 0o640)
    assert target.read_bytes() == b"two\n" and stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert os.listdir(tmp_path) == ["f"]
