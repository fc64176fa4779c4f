"""[target NAME] and [gateway] sections: parsed with the connection modules' own keys and
checks, every error naming the file, the section and the key; their secrets count as secrets."""
from __future__ import annotations

import os

import pytest

from skynet.config import settings
from skynet.config.settings import ConfigError
from skynet.dashboard.auth import new_token

TOKEN_HASH = new_token()[1]


def _load(tmp_path, body: str, mode: int = 0o600) -> settings.Config:
    path = tmp_path / "gw.ini"
    path.write_text(body)
    os.chmod(path, mode)
    return settings.load(str(path))


def _error(tmp_path, body: str) -> str:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, body)
    return str(exc.value)


def test_gateway_only_config(tmp_path):
    cfg = _load(tmp_path, f"""
[skynet]
state_dir = {tmp_path}/state
[target here]
service = local
root = {tmp_path}/a
fsync = yes
[target cloud]
service = s3
root = uploads
bucket = bucket-1
endpoint_url = http://127.0.0.1:9
[gateway]
targets = here, cloud
token_hash = {TOKEN_HASH}
max_upload_size = 1GiB
expire_after = 600
""")
    assert cfg.service == "" and cfg.mappings == []
    assert list(cfg.targets) == ["here", "cloud"]
    assert cfg.targets["here"].options == {"fsync": "yes"} and cfg.targets["cloud"].root == "uploads"
    g = cfg.gateway
    assert g is not None and g.targets == ["here", "cloud"] and g.max_upload_size == 1 << 30
    assert g.expire_after == 600 and g.host == "127.0.0.1" and g.max_uploads_in_flight == 64
    con = cfg.targets["here"].build()
    assert con.service == "local"


@pytest.mark.parametrize("section, problem", [
    ("[target x]\nservice = local\nroot = /tmp/x\nbucket = b", "[target x] bucket: unknown key for a local target"),
    ("[target x]\nservice = ftp\nroot = /tmp/x", "[target x] service: expected one of"),
    ("[target x]\nservice = local", "[target x] root: missing"),
    ("[target x]\nroot = /tmp/x", "[target x] service: missing"),
    ("[target x]\nservice = s3\nbucket = bucket-1\npart_size = 1MiB", "[target x] part_size: "),
    ("[target x]\nservice = s3\nroot = ../up\nbucket = bucket-1", "[target x] root: "),
    ("[target x y]\nservice = local\nroot = /tmp/x", "[target x y]: target names may hold"),
])
def test_bad_target_names_file_section_key(tmp_path, section, problem):
    body = f"[gateway]\ntargets = x\ntoken_hash = {TOKEN_HASH}\n{section}\n"
    msg = _error(tmp_path, body)
    assert msg.startswith(str(tmp_path / "gw.ini") + ": ") and problem in msg, msg


@pytest.mark.parametrize("gateway, problem", [
    ("targets = nowhere", "[gateway] targets: no [target nowhere] section (targets defined: x)"),
    ("targets =", "[gateway] targets: missing"),
    ("targets = x, x", "[gateway] targets: a target is named twice"),
    ("targets = x", "[gateway] token_hash: missing"),
    ("targets = x\nmax_upload_size = 10MB", "[gateway] max_upload_size: expected a size in binary units"),
    ("targets = x\nport = 70000", "[gateway] port: "),
    ("targets = x\nlisten = 1", "[gateway] listen: unknown key"),
])
def test_bad_gateway_keys(tmp_path, gateway, problem):
    token = "" if "token_hash" in problem else f"token_hash = {TOKEN_HASH}\n"
    msg = _error(tmp_path, f"[target x]\nservice = local\nroot = /tmp/x\n[gateway]\n{token}{gateway}\n")
    assert problem in msg, msg


def test_a_mapping_config_still_needs_its_service(tmp_path):
    msg = _error(tmp_path, f"[skynet]\n[mapping m]\nsource = {tmp_path}\ntarget = /tmp/x\n")
    assert "[skynet] service: missing" in msg


def test_target_and_gateway_secrets_are_secrets(tmp_path):
    cfg = _load(tmp_path, f"""
[target cloud]
service = s3
bucket = bucket-1
access_key_id = AK
secret_access_key = SECRET
[gateway]
targets = cloud
token_hash = {TOKEN_HASH}
""", mode=0o644)
    assert settings.secret_keys(cfg) == ["[target cloud] secret_access_key", "[gateway] token_hash"]
    warning = settings.exposed_secrets_warning(cfg)
    assert warning is not None and "[target cloud] secret_access_key" in warning and "chmod 600" in warning
    assert "SECRET" not in warning
