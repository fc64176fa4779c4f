"""A local target that overlaps its source through a link (issue 18, item 2).

Names are not locations: a target that is a symlink into the source (or a source
that is a symlink into the target) made the daemon copy the tree into itself
forever. Real locations are compared (device and inode of each level up to "/"),
at start, on reload (SIGHUP) and in the wizard; a refusal is exit code 2 and one line.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from skynet.config.settings import overlap
from tests.harness import Daemon, one_clear_line, run_main, tree, wait_converged, write_config




@pytest.fixture
def src(tmp_path) -> Path:
    """A source with a file and an empty folder (the one links point into)."""
    s = tmp_path / "src"
    (s / "sub").mkdir(parents=True)
    (s / "a.txt").write_text("a")
    return s


def run(tmp_path: Path, source: Path, target: Path):
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(source), "target": str(target)}},
                       tmp_path / "state")
    return run_main("--run-with", "local", "--config-file", str(cfg), timeout=60)


LOOP = "a mirror into its own source would copy itself forever"


def test_target_a_link_into_the_source_is_refused_at_start(tmp_path, src):
    link = tmp_path / "mirror"
    link.symlink_to(src / "sub")
    before = tree(src)
    err = one_clear_line(run(tmp_path, src, link), "[mapping m] target", "is inside the source", "through a link", LOOP)
    assert err.startswith("skynet: error: ")
    assert tree(src) == before and list((src / "sub").iterdir()) == []  # nothing copied


def test_target_not_there_yet_under_a_link_into_the_source(tmp_path, src):
    link = tmp_path / "mirror"
    link.symlink_to(src / "sub")
    one_clear_line(run(tmp_path, src, link / "deeper" / "t"), "is inside the source", LOOP)
    assert list((src / "sub").iterdir()) == []  # the missing target was not made


def test_target_a_dangling_link_into_the_source(tmp_path, src):
    link = tmp_path / "mirror"
    link.symlink_to(src / "not-yet")  # mkdir through it would land in the source
    one_clear_line(run(tmp_path, src, link), "is inside the source", LOOP)
    assert not (src / "not-yet").exists()


def test_source_a_link_whose_real_location_holds_the_target(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.txt").write_text("a")
    source = tmp_path / "source-link"
    source.symlink_to(real)
    one_clear_line(run(tmp_path, source, real / "mirror"), "is inside the source", "through a link", LOOP)
    assert sorted(os.listdir(real)) == ["a.txt"]


def test_source_a_link_into_the_target(tmp_path):
    dst = tmp_path / "dst"
    (dst / "inner").mkdir(parents=True)
    (dst / "inner" / "a.txt").write_text("a")
    source = tmp_path / "source-link"
    source.symlink_to(dst / "inner")
    one_clear_line(run(tmp_path, source, dst), "contains the source", "through a link")
    assert tree(dst) == {b"inner/a.txt": b"a"}


def test_separate_folders_and_links_between_them_are_fine(tmp_path, src):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "t-link").symlink_to(elsewhere)
    (tmp_path / "src2").symlink_to(src)
    assert overlap(str(src), str(tmp_path / "t-link")) is None
    assert overlap(str(src), str(tmp_path / "t-link" / "not-yet")) is None
    assert overlap(str(src), str(tmp_path / "srcx")) is None  # a name that starts like the source
    assert overlap(str(tmp_path / "src2"), str(elsewhere)) is None
    assert "is the source" in overlap(str(src), str(tmp_path / "src2"))


def test_reload_to_a_target_inside_the_source_is_refused(tmp_path, src):
    dst = tmp_path / "dst"
    dst.mkdir()
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, state)
    link = tmp_path / "mirror"
    link.symlink_to(src / "sub")
    with Daemon(cfg) as d:
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
        write_config(cfg, "local", {"m": {"source": str(src), "target": str(link)}}, state)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload refused", timeout=30)
        refused = [ln for ln in d.log_text().splitlines() if "reload refused" in ln]
        assert len(refused) == 1 and "is inside the source" in refused[0] and LOOP in refused[0], refused
        (src / "after.txt").write_text("the old config still runs")
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d)
        assert d.proc.poll() is None
    assert list((src / "sub").iterdir()) == []


def test_wizard_refuses_a_target_inside_the_source_through_a_link(tmp_path, src):
    link = tmp_path / "mirror"
    link.symlink_to(src / "sub")
    path = tmp_path / "w.ini"
    res = run_main("--config", "local", "--config-file", str(path), "--non-interactive",
                   "--set", f"mapping.m.source={src}", "--set", f"mapping.m.target={link}",
                   "--set", f"skynet.state_dir={tmp_path / 'state'}")
    one_clear_line(res, "mapping.m.target", "is inside the source", "through a link", LOOP)
    assert not path.exists()
