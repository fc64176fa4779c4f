"""`skynet versions PATH`: resolving PATH to a mapping, text and JSON output, and the
one clear line (exit 2) for a path never synced or outside every mapping. The store is
a folder-backed fake here; tests/test_prune_e2e.py runs it against the real ones."""
from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import skynet.cli.versions as versions_cli
from skynet.cli.main import main
from tests.fake_versions import FolderVersionStore

NS = 1_000_000_000
T0 = 1_790_000_000 * NS


@pytest.fixture()
def setup(tmp_path: Path, monkeypatch):
    src_a, src_b = tmp_path / "a", tmp_path / "b"
    src_a.mkdir()
    src_b.mkdir()
    cfg = tmp_path / "c.ini"
    cfg.write_text(f"[skynet]\nservice = local\nstate_dir = {tmp_path / 'st'}\n\n"
                   f"[mapping a]\nsource = {src_a}\ntarget = {tmp_path / 'ra'}\nversions = yes\n\n"
                   f"[mapping b]\nsource = {src_b}\ntarget = {tmp_path / 'rb'}\nversions = yes\n")
    stores = {"a": FolderVersionStore(tmp_path / "va"), "b": FolderVersionStore(tmp_path / "vb")}
    monkeypatch.setattr(versions_cli, "open_store", lambda cfg, m: contextlib.nullcontext(stores[m.name]))
    a = stores["a"]
    a.add("docs/report.txt", T0, T0 + 60 * NS, size=1000, etag="aa" * 16)
    a.add("docs/report.txt", T0 + 60 * NS, T0 + 120 * NS, size=2000, etag="bb" * 16)
    a.add("docs/report.txt", T0 + 120 * NS, T0 + 180 * NS, deleted=True)
    a.add("docs/report.txt", T0 + 180 * NS, None, size=3000, etag="cc" * 16)
    a.add("docs/sub/notes.md", T0, None, size=5, etag="dd" * 16)
    a.add("docs.txt", T0, None, size=7, etag="ee" * 16)  # beside docs/, never under it
    stores["b"].add("other.txt", T0, None, size=1)
    return tmp_path, cfg, src_a, stores


def run(*args: str):
    return CliRunner().invoke(main, ["versions", *args], catch_exceptions=False)


def test_every_version_of_a_file_newest_first(setup) -> None:
    tmp, cfg, src, _ = setup
    res = run(str(src / "docs" / "report.txt"), "--config-file", str(cfg))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "docs/report.txt" and len(lines) == 5
    assert lines[1].endswith("current") and "3,000 B" in lines[1] and "cc" * 16 in lines[1]
    assert lines[2].endswith("deleted") and " B " not in lines[2]
    assert "2,000 B" in lines[3] and "1,000 B" in lines[4]
    local = datetime.datetime.fromtimestamp(T0 / NS).astimezone().isoformat(timespec="milliseconds")
    assert lines[4].strip().startswith(local)


def test_a_folder_lists_the_files_under_it_and_not_its_neighbours(setup) -> None:
    tmp, cfg, src, _ = setup
    res = run("docs", "--config-file", str(cfg), "--mapping", "a")
    assert res.exit_code == 0, res.output
    headings = [l for l in res.output.splitlines() if not l.startswith(" ")]
    assert headings == ["docs/report.txt", "docs/sub/notes.md"]
    whole = run(str(src), "--config-file", str(cfg))
    assert [l for l in whole.output.splitlines() if not l.startswith(" ")] == [
        "docs.txt", "docs/report.txt", "docs/sub/notes.md"]


def test_json_records(setup) -> None:
    tmp, cfg, src, _ = setup
    res = run("./docs/../docs/report.txt", "--json", "--config-file", str(cfg), "--mapping", "a")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["size"] for r in rows] == [3000, None, 2000, 1000]
    assert [r["deleted"] for r in rows] == [False, True, False, False]
    assert rows[0]["current"] and rows[0]["until"] is None and not rows[2]["current"]
    assert rows[3]["since_ns"] == T0 and rows[3]["until_ns"] == T0 + 60 * NS and rows[3]["hash"] == "aa" * 16
    assert rows[0]["mapping"] == "a" and rows[0]["path"] == "docs/report.txt"
    assert datetime.datetime.fromisoformat(rows[3]["since"]).timestamp() == T0 / NS


def test_the_mapping_is_found_from_an_absolute_path(setup) -> None:
    tmp, cfg, src, _ = setup
    res = run(str(tmp / "b" / "other.txt"), "--json", "--config-file", str(cfg))
    assert res.exit_code == 0 and json.loads(res.output)[0]["mapping"] == "b"


@pytest.mark.parametrize("args, needle", [
    (["docs/never.txt", "--mapping", "a"], "docs/never.txt: no version of it in mapping 'a' (never synced)"),
    (["/elsewhere/x"], "/elsewhere/x is not under the source folder of any mapping"),
    (["x.txt"], "is relative and"),
    (["../b/other.txt", "--mapping", "a"], "leaves the mapping's source folder"),
    (["x.txt", "--mapping", "nope"], "no mapping 'nope'"),
])
def test_bad_paths_are_one_clear_line_and_exit_2(setup, args: list[str], needle: str) -> None:
    tmp, cfg, src, _ = setup
    res = CliRunner().invoke(main, ["versions", *args, "--config-file", str(cfg)])
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and len(res.stderr.splitlines()) == 1 and needle in res.stderr, res.stderr


def test_listed_in_the_main_help() -> None:
    res = CliRunner().invoke(main, ["--help"])
    assert "versions" in res.output and "Commands" in res.output
