"""Issue 21: migrations between stores with `skynet job run`: the SFTP server's
folder into S3 (killed with -9 on the way, then run again), and an S3 prefix
into a local folder; a source given as another config (`config:FILE`)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from skynet.jobs.table import ItemTable
from tests.harness import REPO, run_main, write_config
from tests.test_jobs import wait_for

MiB = 1 << 20


def files_for(tag: str) -> dict[str, bytes]:
    out = {f"d{i % 4}/f{i}.txt": hashlib.sha256(f"{tag}{i}".encode()).digest() * (i + 1) for i in range(60)}
    out["big/one.bin"] = b"".join(hashlib.sha256(f"{tag}{i}".encode()).digest() * 32768 for i in range(12))  # 12 MiB
    out["name with spaces é.txt"] = b"odd name"
    return out


def write_files(root: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)


def job_ini(path: Path, service: str, options: dict[str, str], state: Path, job: dict[str, str]) -> Path:
    lines = [f"[skynet]\nservice = {service}\nstate_dir = {state}\nlog_level = INFO\n"]
    if options:
        lines.append(f"[{service}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    lines.append("[job mig]\n" + "".join(f"{k} = {v}\n" for k, v in job.items()))
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


def test_sftp_to_s3_killed_and_run_again(servers, tmp_path):
    sftp, s3 = servers.get("sftp"), servers.get("s3")
    folder = sftp.fresh_folder("migsrc")
    files = files_for("sftp")
    write_files(folder, files)
    (tmp_path / "unused").mkdir()
    source = write_config(tmp_path / "sftp.ini", "sftp", {"m": {"source": str(tmp_path / "unused"), "target": folder}},
                          tmp_path / "sftp-state", sftp.service())
    bucket = s3.new_bucket("mig")
    cfg = job_ini(tmp_path / "s3.ini", "s3", {**s3.service_config(bucket), "part_size": "5MiB",
                                             "multipart_threshold": "8MiB", "concurrency": "2"},
                  tmp_path / "state", {"source": f"config:{source}", "target": "dest", "workers": "4",
                                       "bwlimit": "4M"})
    cmd = [sys.executable, str(REPO / "main.py"), "job", "run", "mig", "--config-file", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "state" / "jobs" / "mig.sqlite"

    def some_done() -> bool:
        if not db.exists():
            return False
        t = ItemTable(str(db))
        try:
            return sum(n for (s, _), n in t.counts().items() if s == "done") >= 10
        finally:
            t.close()

    wait_for(lambda: some_done() or proc.poll() is not None, 120, "items done")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    client = s3.client()
    for rel, data in files.items():
        assert client.get_object(Bucket=bucket, Key=f"dest/{rel}")["Body"].read() == data, rel
    keys = [o["Key"] for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in p.get("Contents", [])]
    assert sorted(keys) == sorted(f"dest/{rel}" for rel in files)
    # run again: every item is done already; nothing is listed or sent again
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and f"job mig: {len(files)} done" in res.stderr, res.stderr[-2000:]


def test_s3_to_a_local_folder(servers, tmp_path):
    s3 = servers.get("s3")
    bucket = s3.new_bucket("out")
    files = files_for("s3")
    client = s3.client()
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"src/{rel}", Body=data)
    client.put_object(Bucket=bucket, Key="srcother/not-mine.txt", Body=b"outside the prefix")
    (tmp_path / "unused").mkdir()
    source = write_config(tmp_path / "s3.ini", "s3", {"m": {"source": str(tmp_path / "unused"), "target": "src"}},
                          tmp_path / "s3-state", s3.service_config(bucket))
    target = tmp_path / "target"
    target.mkdir()
    cfg = job_ini(tmp_path / "local.ini", "local", {}, tmp_path / "state",
                  {"source": f"config:{source}", "target": str(target), "workers": "4"})
    res = run_main("job", "run", "mig", "--config-file", str(cfg), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert got == files
    st = run_main("job", "status", "mig", "--json", "--config-file", str(cfg))
    assert '"done": %d' % len(files) in st.stdout
