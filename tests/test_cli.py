"""The CLI surface: help, the local wizard, the docs staying in step."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from click.testing import CliRunner

from skynet import config as configmod
from skynet.cli import main
from tests.harness import REPO, run_main


def test_help_lists_entry_points():
    res = run_main("--help")
    assert res.returncode == 0
    for opt in ("--config", "--run-with", "--config-file", "SKYNET_CONFIG"):
        assert opt in res.stdout


def test_config_reference_is_up_to_date():
    from skynet.docs import reference

    assert (REPO / "config" / "README.md").read_text() == reference(), "run: python -m skynet.docs > config/README.md"


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
