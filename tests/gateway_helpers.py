"""What the gateway tests share: a config, `python main.py serve` as a subprocess, a small tus client.

The client here speaks tus with `requests` where a test needs to do what a tus client
library does not let it (a chunk with a wrong checksum, a body that stops half-way);
the uploads themselves are also made with tuspy (the tus project's Python client)
and with curl in the tests.
"""
from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import requests

from skynet.dashboard.auth import new_token
from tests.harness import REPO
from tests.servers import free_port

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
MiB = 1 << 20


def write_config(path: Path, targets: dict[str, dict[str, str]], log_level: str = "DEBUG", **gateway: Any) -> str:
    """A gateway config (mode 0600) with `targets` ([target NAME] keys) all in [gateway]
    targets; returns the client's token (only its hash is in the file)."""
    token, digest = new_token()
    lines = ["[skynet]", f"state_dir = {path.parent / 'state'}", f"log_level = {log_level}", ""]
    for name, keys in targets.items():
        lines += [f"[target {name}]", *(f"{k} = {v}" for k, v in keys.items()), ""]
    g = {"targets": ", ".join(targets), "token_hash": digest, "retry_interval": "0.5", **gateway}
    lines += ["[gateway]", *(f"{k} = {v}" for k, v in g.items()), ""]
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return token


class Gateway:
    """One `python main.py serve` process on a fixed port (a restart keeps upload URLs valid)."""

    def __init__(self, config: Path, token: str, port: int | None = None) -> None:
        self.config = config
        self.token = token
        self.port = port or free_port()
        self.log = config.with_suffix(".log")
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **TUS}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> "Gateway":
        seen = self.log_text().count("gateway: listening on")
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "main.py"), "serve", "--config-file", str(self.config),
                 "--port", str(self.port)], cwd=str(REPO), stdout=logf, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        finally:
            logf.close()
        self.wait_log("gateway: listening on", count=seen + 1)
        return self

    def wait_log(self, needle: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.log_text().count(needle) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} in the gateway log:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- a small tus client (requests) -----------------------------------------
    def create(self, name: str, length: int, body: bytes | None = None, md5: str | None = None,
               headers: dict[str, str] | None = None) -> requests.Response:
        meta = f"filename {b64(name.encode())}" + (f",md5 {b64(md5.encode())}" if md5 else "")
        h = {**self.auth, "Upload-Length": str(length), "Upload-Metadata": meta, **(headers or {})}
        if body is not None:
            h["Content-Type"] = OCTETS
        return requests.post(f"{self.url}/uploads", headers=h, data=body, timeout=120)

    def location(self, resp: requests.Response) -> str:
        assert resp.status_code == 201, (resp.status_code, resp.text)
        return self.url + resp.headers["Location"]

    def patch(self, url: str, offset: int, data: bytes | Iterable[bytes], checksum: str | None = None,
              timeout: float = 300) -> requests.Response:
        h = {**self.auth, "Upload-Offset": str(offset), "Content-Type": OCTETS}
        if checksum:
            h["Upload-Checksum"] = checksum
        return requests.patch(url, headers=h, data=data, timeout=timeout)

    def head(self, url: str) -> requests.Response:
        return requests.head(url, headers=self.auth, timeout=60)

    def upload(self, name: str, data: bytes, chunk: int = 4 * MiB) -> requests.Response:
        """A whole upload in chunks with md5 checksums; the last PATCH's answer."""
        url = self.location(self.create(name, len(data)))
        resp = None
        for off in range(0, len(data), chunk) or [0]:
            piece = data[off:off + chunk]
            resp = self.patch(url, off, piece, checksum=f"md5 {b64(hashlib.md5(piece).digest())}")
            assert resp.status_code == 204, (resp.status_code, resp.text)
        assert resp is not None
        return resp

    def get(self, path: str, rng: str | None = None, version: int | None = None) -> requests.Response:
        h = {"Authorization": f"Bearer {self.token}"}
        if rng:
            h["Range"] = rng
        params = {"version": str(version)} if version is not None else None
        return requests.get(f"{self.url}/files/{path}", headers=h, params=params, timeout=120)

    def versions(self, prefix: str = "") -> dict:
        r = requests.get(f"{self.url}/versions/{prefix}", headers={"Authorization": f"Bearer {self.token}"},
                         timeout=60)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def md5_header(data: bytes) -> str:
    return f"md5 {b64(hashlib.md5(data).digest())}"


def staged(state: Path) -> list[str]:
    """The bytes the gateway's staging folder holds (under the config's state_dir): uploads and
    their deliveries' resume state. (The record of a delivered upload stays until expire_after.)"""
    folder = state / "gateway" / "uploads"
    return sorted(n for n in os.listdir(folder) if not n.endswith(".json")) if folder.exists() else []


def records(state: Path) -> list[str]:
    folder = state / "gateway" / "uploads"
    return sorted(n for n in os.listdir(folder) if n.endswith(".json")) if folder.exists() else []


def wait_for(cond, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
