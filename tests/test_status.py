"""`--status`: the local daemon's queue, uploads in flight, failures and connection."""
from __future__ import annotations

import json
import os
import time

from tests.harness import Daemon, run_main, tree, wait_converged, write_config


def test_status_shows_an_upload_in_progress(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "big.bin").write_bytes(os.urandom(12 * 1024**2))
    cfg = write_config(tmp_path / "c.ini", "local", {"m": {"source": str(src), "target": str(dst)}}, tmp_path / "state",
                       extra={"bwlimit": "2M"})  # slow enough to look at it
    res = run_main("--status", "--json", "--config-file", str(cfg))
    doc = json.loads(res.stdout)
    assert doc["mappings"][0]["running"] is False
    with Daemon(cfg) as d:
        seen = None
        deadline = time.time() + 20
        while time.time() < deadline:
            doc = json.loads(run_main("--status", "--json", "--config-file", str(cfg)).stdout)
            m = doc["mappings"][0]
            if m["in_flight"] and m["in_flight"][0]["done"] > 0:
                seen = m
                break
            time.sleep(0.3)
        assert seen, doc
        assert seen["running"] and seen["connected"] is True and seen["queue_depth"] >= 1 and seen["failed"] == 0
        assert seen["in_flight"][0]["path"] == "big.bin" and seen["in_flight"][0]["total"] == 12 * 1024**2
        text = run_main("--status", "--config-file", str(cfg)).stdout
        assert "uploading 'big.bin'" in text and "connected" in text
        wait_converged(src, lambda: tree(dst), exact=True, daemon=d, timeout=30)
        time.sleep(1.5)
        doc = json.loads(run_main("--status", "--json", "--config-file", str(cfg)).stdout)
        assert doc["mappings"][0]["in_flight"] == [] and doc["mappings"][0]["queue_depth"] == 0
