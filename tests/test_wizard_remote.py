"""The setup wizard for S3 and SFTP, driven through its prompts against the real test servers."""
from __future__ import annotations

import os
import stat

from click.testing import CliRunner

from skynet.config import settings as configmod
from skynet.cli.main import main


def run(args, answers):
    return CliRunner().invoke(main, args, input="\n".join(answers) + "\n")


def test_s3_wizard_wrong_bucket_then_right_one(tmp_path, servers):
    s3 = servers.get("s3")
    bucket = s3.new_bucket("wiz")
    src = tmp_path / "src"
    src.mkdir()
    path = tmp_path / "s3.ini"
    answers = [
        # first round: a bucket that does not exist
        "no-such-bucket-here", s3.endpoint_url, "us-east-1", "path", "", "", "none", "y", s3.access_key, s3.secret_key,
        # second round, after the error: the right bucket (Enter keeps the rest)
        bucket, "", "", "", "", "", "", "y", "", "",
        # mapping and daemon settings
        str(src), "photos", "yes", "", "", "", "", "", str(tmp_path / "state"),
    ]
    res = run(["--config", "s3", "--config-file", str(path)], answers)
    assert res.exit_code == 0, res.output
    assert "no-such-bucket-here" in res.output and "try again" in res.output
    assert s3.secret_key not in res.output  # never echoed
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cfg = configmod.load(str(path), "s3")
    assert cfg.service_options["bucket"] == bucket and cfg.mappings[0].target == "photos"
    # the probe object was written and removed: the bucket is empty
    assert s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    # a re-run edits: change only the workers
    res = run(["--config", "s3", "--config-file", str(path)],
              ["", "", "", "", "", "", "", "y", "", "", "", "", "", "", "12", "", "", "", ""])
    assert res.exit_code == 0, res.output
    cfg2 = configmod.load(str(path), "s3")
    assert cfg2.workers == 12 and cfg2.service_options["secret_access_key"] == s3.secret_key


def test_s3_wizard_non_interactive_bad_bucket_fails_clearly(tmp_path, servers):
    s3 = servers.get("s3")
    src = tmp_path / "src"
    src.mkdir()
    args = ["--config", "s3", "--config-file", str(tmp_path / "s3.ini"), "--non-interactive",
            "--set", "s3.bucket=nope-nope", "--set", f"s3.endpoint_url={s3.endpoint_url}",
            "--set", "s3.addressing_style=path", "--set", "s3.use_keys=yes",
            "--set", f"s3.access_key_id={s3.access_key}", "--set", f"s3.secret_access_key={s3.secret_key}",
            "--set", f"mapping.main.source={src}"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert "nope-nope" in res.output and not (tmp_path / "s3.ini").exists()
    assert s3.secret_key not in res.output


def sftp_answers(srv, known_hosts, trust: str, src, tmp_path):
    return [srv.host, str(srv.port), srv.user, str(known_hosts), trust,
            srv.key_file, "", "no",  # key file, passphrase, agent
            str(src), srv.fresh_folder("wiz"), "no", "", "", "", "", "", str(tmp_path / "state")]


def test_sftp_wizard_unknown_host_key_declined_then_accepted(tmp_path, servers):
    srv = servers.get("sftp")
    src = tmp_path / "src"
    src.mkdir()
    known = tmp_path / "known_hosts"  # empty: the server's key is unknown
    path = tmp_path / "sftp.ini"
    res = run(["--config", "sftp", "--config-file", str(path)], sftp_answers(srv, known, "n", src, tmp_path))
    assert res.exit_code == 2, res.output
    assert "SHA256:" in res.output and "not trusted" in res.output
    assert not path.exists() and (not known.exists() or known.read_text() == "")
    res = run(["--config", "sftp", "--config-file", str(path)], sftp_answers(srv, known, "y", src, tmp_path))
    assert res.exit_code == 0, res.output
    assert f"[{srv.host}]:{srv.port}" in known.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cfg = configmod.load(str(path), "sftp")
    assert cfg.service_options["known_hosts"] == str(known)
    # running it again: the key is known now, nothing is asked about it
    res = run(["--config", "sftp", "--config-file", str(path)], [""] * 3 + ["", "", "", ""] + [""] * 9)
    assert res.exit_code == 0, res.output
    assert "already trusted" in res.output


def test_sftp_wizard_refuses_a_changed_host_key(tmp_path, servers):
    srv = servers.get("sftp")
    src = tmp_path / "src"
    src.mkdir()
    known = tmp_path / "known_hosts"
    other = srv.known_hosts_line().split()
    # the same host and key type, another key: what a man-in-the-middle looks like
    known.write_text(f"[{srv.host}]:{srv.port} {other[1]} AAAAC3NzaC1lZDI1NTE5AAAAIE5vdEFSZWFsS2V5Tm90QVJlYWxLZXlOb3RBUmVhbEs=\n")
    res = run(["--config", "sftp", "--config-file", str(tmp_path / "s.ini")], sftp_answers(srv, known, "y", src, tmp_path))
    assert res.exit_code == 2, res.output
    assert "CHANGED" in res.output
