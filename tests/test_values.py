"""skynet/config/values.py: the one parser of config values, and its one error style.

Every bad value is reported as "KEY: expected <what>, got '<value>'" whether it sits
in [skynet], a [mapping], [local], [s3] or [sftp]: the key and the bad value are
always named.
"""
from __future__ import annotations

import pytest

from connections.local import con as localmod
from connections.s3 import con as s3mod
from connections.sftp import con as sftpmod
from skynet.config import settings as configmod
from skynet.config.values import (
    GiB,
    MiB,
    keyed,
    parse_bool,
    parse_int_range,
    parse_seconds,
    parse_seconds_range,
    parse_size,
    parse_size_range,
)


def test_sizes():
    # moved from tests/test_s3_con.py::test_sizes_and_mtime_format
    assert parse_size("8MiB") == parse_size("8M") == parse_size("8388608") == 8 * MiB
    assert parse_size("1 GiB") == 1 << 30
    with pytest.raises(ValueError, match="^x: "):
        keyed("x", "8MB", parse_size)
    with pytest.raises(ValueError, match="^x: "):
        keyed("x", "lots", parse_size)


@pytest.mark.parametrize("parse, raw, message", [
    (parse_bool, "maybe", "expected yes or no, got 'maybe'"),
    (parse_size, "lots", "expected a size such as 8MiB, got 'lots'"),
    (parse_size, "8MB", "expected a size in binary units such as 8MiB, got '8MB'"),
    (parse_size_range(5 * MiB, 5 * GiB), "1MiB", "expected a size from 5MiB to 5GiB, got '1MiB'"),
    (parse_int_range(1, 64), "many", "expected a whole number, got 'many'"),
    (parse_int_range(1, 64), "0", "expected a whole number from 1 to 64, got '0'"),
    (parse_int_range(1, 64), "2.5", "expected a whole number, got '2.5'"),
    (parse_seconds, "soon", "expected a number of seconds, got 'soon'"),
    (parse_seconds, "-1", "expected a number of seconds of at least 0, got '-1'"),
    (parse_seconds, "nan", "expected a number of seconds of at least 0, got 'nan'"),
    (parse_seconds_range(0.5, 3600), "0.1", "expected a number of seconds from 0.5 to 3600, got '0.1'"),
])
def test_one_message_style_names_the_key_and_the_bad_value(parse, raw, message):
    with pytest.raises(ValueError) as err:
        keyed("some_key", raw, parse)
    assert str(err.value) == f"some_key: {message}"


def test_good_values():
    assert [parse_bool(v) for v in ("yes", " On", "TRUE", "1", "no", "off", "False", "0")] == [True] * 4 + [False] * 4
    assert parse_int_range(1, 64)(" 64 ") == 64
    assert parse_seconds("2.5") == 2.5 and parse_seconds_range(0.5, 3600)("0.5") == 0.5
    assert parse_size_range(5 * MiB, 5 * GiB)("5GiB") == 5 * GiB


def _error(build, *args) -> str:
    with pytest.raises(ValueError) as err:
        build(*args)
    return str(err.value)


def test_every_connection_reports_bad_values_in_the_same_style():
    """The same kind of mistake reads the same in [local], [s3] and [sftp]."""
    sftp_ok = {"host": "h", "known_hosts": "/nonexistent/kh"}
    assert _error(localmod.build, {"fsync": "maybe"}, "/t") == "fsync: expected yes or no, got 'maybe'"
    assert _error(sftpmod.build, {**sftp_ok, "use_agent": "maybe"}, "/t") == "use_agent: expected yes or no, got 'maybe'"
    assert _error(s3mod.build, {"bucket": "bbb", "concurrency": "0"}, "") == \
        "concurrency: expected a whole number from 1 to 64, got '0'"
    assert _error(sftpmod.build, {**sftp_ok, "connections": "0"}, "/t") == \
        "connections: expected a whole number from 1 to 64, got '0'"
    assert _error(sftpmod.build, {**sftp_ok, "port": "ssh"}, "/t") == "port: expected a whole number, got 'ssh'"
    assert _error(sftpmod.build, {**sftp_ok, "timeout": "-1"}, "/t") == \
        "timeout: expected a number of seconds from 0.5 to 3600, got '-1'"
    assert _error(s3mod.build, {"bucket": "bbb", "part_size": "1MiB"}, "") == \
        "part_size: expected a size from 5MiB to 5GiB, got '1MiB'"
    assert _error(s3mod.build, {"bucket": "bbb", "multipart_threshold": "64MB"}, "") == \
        "multipart_threshold: expected a size in binary units such as 64MiB, got '64MB'"


def test_config_file_errors_name_file_section_key_and_value(tmp_path):
    """A bad value in a config file: file, [section], key, and the same message as above."""
    src = tmp_path / "src"
    src.mkdir()
    base = f"[skynet]\nservice = sftp\nstate_dir = {tmp_path / 'state'}\n"
    sftp = "[sftp]\nhost = h\nknown_hosts = /nonexistent/kh\n"
    mapping = f"[mapping m]\nsource = {src}\ntarget = /t\n"
    cases = [
        (base + "workers = 0\n" + sftp + mapping, "[skynet] workers: expected a whole number from 1 to 256, got '0'"),
        (base + "stop_timeout = soon\n" + sftp + mapping, "[skynet] stop_timeout: expected a number of seconds, got 'soon'"),
        (base + sftp + mapping + "follow_symlinks = maybe\n", "[mapping m] follow_symlinks: expected yes or no, got 'maybe'"),
        (base + sftp + "keepalive = often\n" + mapping, "[sftp] keepalive: expected a number of seconds, got 'often'"),
    ]
    for text, expected in cases:
        path = tmp_path / "c.ini"
        path.write_text(text)
        with pytest.raises(configmod.ConfigError) as err:
            configmod.load(str(path))
        assert str(err.value) == f"{path}: {expected}"
