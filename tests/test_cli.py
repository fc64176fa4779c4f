"""The CLI surface: help, the local wizard, the docs staying in step."""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from skynet.config import settings as configmod
from skynet.cli.main import main
from tests.harness import REPO, run_main, unprivileged_prefix, world_writable_tmp, write_config


def test_help_lists_entry_points():
    res = run_main("--help")
    assert res.returncode == 0
    for opt in ("--config", "--run-with", "--config-file", "SKYNET_CONFIG"):
        assert opt in res.stdout


def test_config_reference_is_up_to_date():
    from skynet.cli.docs import reference

    assert (REPO / "config" / "README.md").read_text() == reference(), "run: python -m skynet.cli.docs > config/README.md"


def test_example_configs_are_valid(tmp_path):
    cfg = configmod.load(str(REPO / "config" / "local.ini"), "local")
    assert [m.name for m in cfg.mappings] == ["photos", "documents"]
    assert cfg.mappings[0].complete_sync is True and cfg.mappings[1].complete_sync is False
    assert cfg.mappings[0].ignore == ["*.xmp~", "cache/"]
    for service in ("s3", "sftp"):
        other = configmod.load(str(REPO / "config" / f"{service}.ini"), service)
        assert other.service == service and other.mappings


def test_local_wizard_writes_a_0600_config_and_edits_it(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    path = tmp_path / "cfg" / "local.ini"
    answers = "\n".join([str(src), str(dst), "y", "yes", "*.log, build/", "4", "INFO", "", "off", str(tmp_path / "state")]) + "\n"
    res = CliRunner().invoke(main, ["--config", "local", "--config-file", str(path)], input=answers)
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cfg = configmod.load(str(path), "local")
    m = cfg.mappings[0]
    assert (m.source, m.target, m.complete_sync, m.ignore, cfg.workers) == (str(src), str(dst), True, ["*.log", "build/"], 4)
    assert dst.is_dir()
    # run again: Enter keeps every answer, one change (workers) sticks
    answers = "\n".join(["", "", "", "", "6", "", "", "", ""]) + "\n"  # target exists now: no "create it?"
    res = CliRunner().invoke(main, ["--config", "local", "--config-file", str(path)], input=answers)
    assert res.exit_code == 0, res.output
    cfg2 = configmod.load(str(path), "local")
    assert cfg2.workers == 6 and cfg2.mappings[0].ignore == ["*.log", "build/"] and cfg2.mappings[0].complete_sync


def test_wizard_rejects_a_missing_source_then_accepts(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = tmp_path / "local.ini"
    answers = "\n".join([str(tmp_path / "nope"), str(src), str(tmp_path / "dst"), "y", "no", "", "8", "", "", "", ""]) + "\n"
    res = CliRunner().invoke(main, ["--config", "local", "--config-file", str(path)], input=answers)
    assert res.exit_code == 0, res.output
    assert "does not exist" in res.output


def test_non_interactive_setup_from_flags(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = tmp_path / "local.ini"
    args = ["--config", "local", "--config-file", str(path), "--non-interactive",
            "--set", f"mapping.docs.source={src}", "--set", f"mapping.docs.target={tmp_path / 'dst'}",
            "--set", "mapping.docs.complete_sync=yes", "--set", "skynet.workers=3",
            "--set", f"skynet.state_dir={tmp_path / 'state'}"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    cfg = configmod.load(str(path), "local")
    assert cfg.workers == 3 and cfg.mappings[0].name == "docs" and cfg.mappings[0].complete_sync
    # a bad value or a missing required one: one clear line, exit 2, nothing written
    res = run_main("--config", "local", "--config-file", str(tmp_path / "b.ini"), "--non-interactive",
                   "--set", f"mapping.x.source={src}", "--set", "mapping.x.target=" + str(tmp_path / "t"),
                   "--set", "skynet.workers=many")
    assert res.returncode == 2 and "skynet.workers" in res.stderr and "whole number" in res.stderr, res.stderr
    assert not (tmp_path / "b.ini").exists()
    res = run_main("--config", "local", "--config-file", str(tmp_path / "c.ini"), "--non-interactive")
    assert res.returncode == 2 and "mapping.main.source" in res.stderr and "required" in res.stderr, res.stderr


# -- what a new user met setting up skynet@sftp (issue 7) -----------------------------------------
def _as_other_user(blocked: Path) -> list[str]:
    """Make `blocked` impassable for the process we start, and return its command prefix:
    as root the daemon runs as 'nobody' and `blocked` is root's 0700; otherwise mode 0000."""
    prefix = unprivileged_prefix()
    os.chmod(blocked, 0o700 if prefix else 0o000)
    return prefix


def test_source_in_a_private_home_is_named_not_missing(tmp_path):
    base = world_writable_tmp("skynet-home-")
    home = base / "home"
    (home / "Documents").mkdir(parents=True)
    prefix = _as_other_user(home)
    try:
        cfg = write_config(base / "c.ini", "local", {"m": {"source": str(home / "Documents"), "target": str(base / "t")}},
                           base / "state")
        os.chmod(cfg, 0o644)
        res = subprocess.run(prefix + [sys.executable, str(REPO / "main.py"), "--run-with", "local", "--config-file",
                                       str(cfg)], capture_output=True, text=True, timeout=60, cwd=str(REPO))
        assert res.returncode == 2, res.stderr
        err = res.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "does not exist" not in err and "out of reach of user" in err and f"{home} " in err, err
        # the wizard says the same while asking (non-interactive here: it stops with that line)
        res = subprocess.run(prefix + [sys.executable, str(REPO / "main.py"), "--config", "local", "--config-file",
                                       str(base / "w.ini"), "--non-interactive",
                                       "--set", f"mapping.m.source={home / 'Documents'}",
                                       "--set", f"mapping.m.target={base / 't'}"],
                             capture_output=True, text=True, timeout=60, cwd=str(REPO))
        assert res.returncode == 2 and "out of reach of user" in res.stderr, res.stderr
        assert not (base / "w.ini").exists()
    finally:
        os.chmod(home, 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_unusable_state_dir_stops_before_start_with_the_fix(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(tmp_path / "t")}},
                       tmp_path / "a-file" / "state")
    # as under systemd, with the unit's StateDirectory= somewhere else
    res = run_main("--run-with", "local", "--config-file", str(cfg), env={"STATE_DIRECTORY": str(tmp_path / "unit")})
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "[skynet] state_dir" in err and "cannot be used" in err, err
    assert f"state_dir = {tmp_path / 'unit'}" in err and "ReadWritePaths=" in err, err


def test_unreadable_config_says_whose_it_is(tmp_path):
    base = world_writable_tmp("skynet-cfg-")
    try:
        src = base / "src"
        src.mkdir()
        cfg = write_config(base / "sftp.ini", "local", {"m": {"source": str(src), "target": str(base / "t")}}, base / "s")
        os.chmod(cfg, 0o600)
        prefix = unprivileged_prefix()
        if not prefix:
            os.chmod(cfg, 0o000)
        res = subprocess.run(prefix + [sys.executable, str(REPO / "main.py"), "--status", "--config-file", str(cfg)],
                             capture_output=True, text=True, timeout=60, cwd=str(REPO))
        owner = pwd.getpwuid(os.stat(cfg).st_uid).pw_name
        assert res.returncode == 2 and "permission denied" in res.stderr, res.stderr
        assert f"owned by {owner}" in res.stderr and f"sudo -u {owner}" in res.stderr, res.stderr
        # the folder it is in keeps us out (/etc/skynet is 0700): that folder is named
        inner = base / "etc-skynet"
        inner.mkdir()
        os.replace(cfg, inner / "sftp.ini")
        os.chmod(inner, 0o700 if prefix else 0o000)
        res = subprocess.run(prefix + [sys.executable, str(REPO / "main.py"), "--status", "--config-file",
                                       str(inner / "sftp.ini")], capture_output=True, text=True, timeout=60, cwd=str(REPO))
        os.chmod(inner, 0o700)
        assert res.returncode == 2 and f"{inner} is owned by {owner}" in res.stderr, res.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_wizard_offers_the_units_state_folder_for_a_system_config(tmp_path, monkeypatch):
    from skynet.cli import wizard
    etc, var = tmp_path / "etc-skynet", tmp_path / "var-lib-skynet"
    monkeypatch.setattr(wizard, "SYSTEM_CONFIG_DIR", str(etc))
    monkeypatch.setattr(wizard, "SYSTEM_STATE_DIR", str(var))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    path = etc / "local.ini"
    args = ["--config", "local", "--config-file", str(path), "--non-interactive",
            "--set", f"mapping.m.source={src}", "--set", f"mapping.m.target={tmp_path / 'dst'}"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert configmod.load(str(path), "local").state_dir == str(var / "local")
    assert "systemctl enable --now skynet@local" in res.output and "sudo -u skynet" in res.output
    # a config elsewhere keeps the XDG default, and the foreground command as the hint
    assert wizard.suggested_state_dir("local", str(tmp_path / "x.ini")) == configmod.default_state_dir("local")
    assert "systemctl" not in wizard.run_hint("local", str(tmp_path / "x.ini"))
    # another state folder for the unit's config: the wizard says what the unit allows
    res = CliRunner().invoke(main, args + ["--set", f"skynet.state_dir={tmp_path / 'elsewhere'}"])
    assert res.exit_code == 0 and "ReadWritePaths=" in res.output, res.output


def test_a_first_word_naming_a_subcommand_hands_the_line_to_it(monkeypatch):
    """`skynet WORD ...` runs WORD's own command with the rest of the line (how
    restore, versions and job are reached), and the daemon's flags still work."""
    import types

    import skynet.cli.main as climod

    seen: list[tuple[str, ...]] = []

    @click.command()
    @click.argument("rest", nargs=-1)
    def echo(rest: tuple[str, ...]) -> None:
        seen.append(rest)

    fake = types.ModuleType("skynet_test_fake_sub")
    fake.echo = echo
    monkeypatch.setitem(sys.modules, "skynet_test_fake_sub", fake)
    monkeypatch.setitem(climod.SUBCOMMANDS, "echo", "skynet_test_fake_sub:echo")
    result = CliRunner().invoke(main, ["echo", "a", "b"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen == [("a", "b")]
    assert "echo" in CliRunner().invoke(main, ["--help"]).output
    assert CliRunner().invoke(main, ["--version"]).output.startswith("skynet ")
