"""From a clean copy of the tree: build a wheel, install it into a NEW venv, run the
installed `skynet` (--version, --help, and the daemon on a local folder).

    .venv/bin/python -m tests.install_check              # what ./dev install-check runs:
                                                         # the wheel with every extra, from PyPI
    .venv/bin/python -m tests.install_check --offline    # what tests/test_packaging.py runs

--offline installs the wheel alone (--no-deps) and lends the new venv this
interpreter's site-packages through a .pth file, so it needs no network; the full
install resolves the wheel's own dependency ranges (pyproject.toml), which is what
a newcomer's `pip install '.[all]'` gets.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
#: what a clone does not have (or a build must not pick up)
_NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".demo",
                                         ".pytest_cache", ".hypothesis", "out")


def clean_copy(dest: Path) -> Path:
    """The tree as a fresh clone has it: the wheel is built from here, never from the
    checkout itself (a build writes build/ and *.egg-info next to its sources)."""
    shutil.copytree(REPO, dest, ignore=_NOT_IN_A_CLONE)
    return dest


def build_wheel(src: Path, out: Path, offline: bool) -> Path:
    """`pip wheel`: offline with this interpreter's setuptools (no build isolation), else
    as `pip install .` does it (the build backend pyproject.toml names, fetched anew)."""
    how = ["--no-build-isolation", "--no-index"] if offline else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *how, "-w", str(out), str(src)],
                   check=True, cwd=str(out.parent))
    (wheel,) = out.glob("skynet_sync-*.whl")
    return wheel


def new_venv(where: Path, with_pip: bool) -> Path:
    """A new, empty virtual environment; its python."""
    subprocess.run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(where)], check=True)
    return where / "bin" / "python"


def lend_site_packages(python: Path) -> None:
    """Let `python`'s venv import this interpreter's packages (appended to sys.path,
    after its own site-packages, so the installed skynet comes first)."""
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(purelib, "skynet-test-deps.pth").write_text("".join(f"{p}\n" for p in ours))


def install(python: Path, wheel: Path, offline: bool) -> None:
    if offline:
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                        "--no-index", str(wheel)], check=True)
        lend_site_packages(python)
    else:
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"{wheel}[all]"], check=True)


def clean_env() -> dict[str, str]:
    """The environment without anything that would lead Python back to the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=str(cwd), env=clean_env(), capture_output=True, text=True, timeout=120)


def wait_for(what: str, done: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Poll `done()` until true; fail early, with the log, if the daemon exits."""
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def daemon_round_trip(skynet: Path, work: Path) -> int:
    """Run `skynet --run-with local` on a new config: a file created in the watched
    folder must appear in the target; SIGTERM must stop it. Returns its exit code."""
    src, dst = work / "source", work / "target"
    src.mkdir()
    dst.mkdir()
    cfg = work / "local.ini"
    cfg.write_text(f"[skynet]\nservice = local\nstate_dir = {work / 'state'}\nlog_level = INFO\n"
                   f"settle_seconds = 0.2\n\n[mapping demo]\nsource = {src}\ntarget = {dst}\n")
    log = work / "daemon.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([str(skynet), "--run-with", "local", "--config-file", str(cfg)], cwd=str(work),
                                env=clean_env(), stdout=logf, stderr=subprocess.STDOUT)
        try:
            wait_for("'watching' in its log", lambda: "watching" in log.read_text(errors="replace"), proc, log)
            (src / "hello.txt").write_bytes(b"hello from the installed skynet\n")
            target = dst / "hello.txt"
            wait_for(f"{target}", lambda: target.is_file() and target.read_bytes() ==
                     b"hello from the installed skynet\n", proc, log)
            proc.send_signal(signal.SIGTERM)
            return proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def check(work: Path, offline: bool) -> dict[str, str]:
    """The whole round: returns what the installed command printed, for the caller to judge."""
    wheel = build_wheel(clean_copy(work / "clone"), work / "wheels", offline)
    python = new_venv(work / "venv", with_pip=not offline)
    install(python, wheel, offline)
    skynet = python.parent / "skynet"
    out = {
        "wheel": wheel.name,
        "where": run([str(python), "-c", "import skynet, connections, importlib.metadata as m; "
                      "print(skynet.__file__, connections.__file__, m.version('skynet-sync'))"], work).stdout,
        "version": run([str(skynet), "--version"], work).stdout,
        "help": run([str(skynet), "--help"], work).stdout,
    }
    daemon = work / "daemon"
    daemon.mkdir()
    out["daemon_rc"] = str(daemon_round_trip(skynet, daemon))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--offline", action="store_true", help="install the wheel alone; borrow this venv's packages")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="skynet-install-check-") as d:
        out = check(Path(d), args.offline)
    print(f"built {out['wheel']}, installed into a new venv ({'offline' if args.offline else 'with every extra'})")
    print(f"  import: {out['where'].strip()}")
    print(f"  skynet --version: {out['version'].strip()}")
    print(f"  skynet --help: {len(out['help'].splitlines())} lines")
    print(f"  skynet --run-with local: a new file reached the target; SIGTERM -> exit {out['daemon_rc']}")
    return 0 if out["daemon_rc"] == "0" and out["version"].strip() else 1


if __name__ == "__main__":
    sys.exit(main())
