"""Property: whatever sequence of file operations happens, the remote converges.

Hypothesis draws random sequences of creates, writes, appends, renames of files
and folders, deletes, atomic saves and moves in and out of the root, and folder
operations (an empty folder made or removed, a folder's mode changed, a file
replaced by a folder of the same name and back); one daemon (complete_sync, a
local target, which has folders) runs through all examples, and after each the
remote must equal the source as `diff -r` sees it: the files byte for byte, and
the same folders (empty ones too) with the same modes.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import Daemon, folders, tree, wait_converged, write_config
from tests.workload import DIR_MODES, DIRS, NAMES, apply

op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(NAMES), st.binary(max_size=3000)),
    st.tuples(st.just("append"), st.sampled_from(NAMES), st.binary(min_size=1, max_size=500)),
    st.tuples(st.just("delete"), st.sampled_from(NAMES)),
    st.tuples(st.just("rename"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(st.just("rename_dir"), st.sampled_from(DIRS), st.sampled_from(DIRS)),
    st.tuples(st.just("rmtree"), st.sampled_from(DIRS)),
    st.tuples(st.just("atomic_save"), st.sampled_from(NAMES), st.binary(max_size=2000)),
    st.tuples(st.just("move_in"), st.sampled_from(NAMES + DIRS), st.binary(max_size=1000)),
    st.tuples(st.just("move_out"), st.sampled_from(NAMES + DIRS)),
    st.tuples(st.just("mkdir"), st.sampled_from(DIRS), st.sampled_from(DIR_MODES)),
    st.tuples(st.just("rmdir"), st.sampled_from(DIRS)),
    st.tuples(st.just("chmod_dir"), st.sampled_from(DIRS), st.sampled_from(DIR_MODES)),
    st.tuples(st.just("file_to_dir"), st.sampled_from(NAMES), st.binary(max_size=500)),
    st.tuples(st.just("dir_to_file"), st.sampled_from(DIRS), st.binary(max_size=500)),
)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    base = tmp_path_factory.mktemp("prop")
    src, dst, outside = base / "src", base / "dst", base / "outside"
    for d in (src, dst, outside):
        d.mkdir()
    cfg = write_config(base / "c.ini", "local", {"p": {"source": str(src), "target": str(dst), "complete_sync": "yes"}},
                       base / "state")
    d = Daemon(cfg).start()
    yield src, dst, outside, d
    assert d.stop() == 0


@settings(max_examples=int(os.environ.get("SKYNET_PROP_EXAMPLES", "30")), deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(op, min_size=1, max_size=25))
def test_any_sequence_converges(running, steps):
    src, dst, outside, d = running
    for n, step in enumerate(steps):
        apply(src, outside, step, n)
    shutil.rmtree(outside)
    outside.mkdir()
    wait_converged(src, lambda: tree(dst), exact=True, timeout=30, daemon=d, fetch_folders=lambda: folders(dst))
