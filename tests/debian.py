"""Debian packages the test servers need, installed with apt-get when missing.

One helper for every server module (sshd, PostgreSQL, nginx...): the same
non-interactive install that does not let a package start a system service
of its own, retried once after `apt-get update` (a new machine's package lists
are empty or stale).
"""
from __future__ import annotations

import os
import subprocess

from tests.servers import machine_lock


class PackageUnavailable(RuntimeError):
    """A Debian package is missing and cannot be installed here."""


def ensure_package(package: str, path: str) -> None:
    """Install `package` unless `path` (a file it ships) exists; root only. One install at a
    time on the machine (machine_lock): pytest-xdist workers share dpkg's lock."""
    if os.path.exists(path):
        return
    with machine_lock("apt-get"):
        _install(package, path)


def _install(package: str, path: str) -> None:
    if os.path.exists(path):  # another worker installed it while we waited
        return
    if os.geteuid() != 0:
        raise PackageUnavailable(f"{path} missing and not root: apt-get install -y {package}")
    # RUNLEVEL=1 (and the image's policy-rc.d) keep the package's scripts from starting a service.
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", RUNLEVEL="1")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    r = subprocess.run(install, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        r = subprocess.run(install, env=env, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(path):
        raise PackageUnavailable(f"apt-get install {package} failed: {r.stderr[-500:]}")
