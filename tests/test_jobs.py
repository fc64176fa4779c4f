"""Issue 21, the job core: [job] config, the item table, streamed intake, the
runner (retries, windows, host back-off), crash safety of `job run` and its CLI.
The transfer of one item is a fake here (tests/jobs_fake.py); tests/test_jobs_e2e.py
runs the real one against real servers."""
from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from skynet.config import settings
from skynet.config.settings import ConfigError, JobConfig
from skynet.jobs.intake import BadLine, Intake, ListChanged, ListFormat, parse_line, split_fields
from skynet.jobs.item import Item
from skynet.jobs.runner import EXIT_DONE, EXIT_FAILED, Runner
from skynet.jobs.table import ItemTable
from skynet.transfer.throttle import Window
from tests.harness import REPO, run_main
from tests.jobs_fake import FakeTransfer

MONDAY_10 = time.mktime((2026, 12, 7, 10, 0, 0, 0, 0, -1))  # a Monday, 10:00 local time


class FakeClock:
    """Time that moves only when a test says so; the runner wakes often to look."""

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def max_wait(self) -> float:
        return 0.005


def wait_for(cond, timeout: float = 30.0, what: str = "condition", every: float = 0.005) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def row(table: ItemTable, dest: str) -> dict:
    """An item's row; an empty one while intake has not added it yet."""
    return table.item(dest) or {"status": None, "attempts": 0, "next_at": 0, "resume": None}


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def job_for(tmp_path: Path, lines: list[str] | None = None, **kw) -> JobConfig:
    lst = write_list(tmp_path / "list.txt", lines or [])
    opts = dict(workers=1, max_attempts=3, retry_after=[30.0, 300.0])
    opts.update(kw)
    return JobConfig("j", f"urls:{lst}", str(tmp_path / "target"), **opts)


def run_in_thread(runner: Runner) -> tuple[threading.Thread, dict]:
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("code", runner.run()), daemon=True)
    t.start()
    return t, box


def make(tmp_path: Path, job: JobConfig, fake: FakeTransfer, clock=None, reload: bool = False):
    table = ItemTable(str(tmp_path / "state" / "j.sqlite"))
    intake = Intake(job, table, reload=reload, batch=3)
    intake.prepare()
    return table, Runner(job, table, fake, intake=intake, clock=clock)


# -- config -------------------------------------------------------------------------


def config_file(tmp_path: Path, job: str, extra: str = "") -> Path:
    p = tmp_path / "local.ini"
    (tmp_path / "t").mkdir(exist_ok=True)
    p.write_text(f"[skynet]\nservice = local\nstate_dir = {tmp_path / 'state'}\n{extra}\n[job {job}]\n")
    return p


def test_job_section_is_read_with_its_defaults(tmp_path):
    p = config_file(tmp_path, "m")
    p.write_text(p.read_text() + f"source = urls:{tmp_path}/l.txt\ntarget = {tmp_path}/t\nwindow = Mon-Fri 20:00-06:00 Sat,Sun 00:00-24:00\n")
    cfg = settings.load(str(p))
    (j,) = cfg.jobs
    assert (j.source, j.max_attempts, j.retry_after, j.on_existing, j.verify) == (
        f"urls:{tmp_path}/l.txt", 3, [30.0, 300.0, 600.0, 1800.0, 3600.0], "skip", True)
    assert cfg.mappings == []


@pytest.mark.parametrize("key,value,message", [
    ("retry_after", "30s,soon", "expected durations"),
    ("window", "Mon-Fri 20:00", "bad window entry"),
    ("window", "Mon-Fri 25:00-06:00", "bad time"),
    ("on_existing", "merge", "expected one of skip, overwrite"),
    ("source", "gopher:x", "expected urls:PATH"),
    ("max_attempts", "0", "expected a whole number from 1"),
    ("colour", "red", "unknown key"),
])
def test_bad_job_key_names_file_section_and_key(tmp_path, key, value, message):
    p = config_file(tmp_path, "m")
    source = "" if key == "source" else f"source = urls:{tmp_path}/l.txt\n"
    p.write_text(p.read_text() + f"{source}target = {tmp_path}/t\n{key} = {value}\n")
    with pytest.raises(ConfigError) as err:
        settings.load(str(p))
    assert str(err.value).startswith(f"{p}: [job m] {key}: ") and message in str(err.value)


def test_job_run_exits_2_for_a_bad_config(tmp_path):
    p = config_file(tmp_path, "m")
    p.write_text(p.read_text() + f"source = urls:{tmp_path}/l.txt\ntarget = {tmp_path}/t\nretry_after = never\n")
    res = run_main("job", "run", "m", "--config-file", str(p))
    assert res.returncode == 2, res.stderr
    assert f"[job m] retry_after: expected durations" in res.stderr and "Traceback" not in res.stderr
    res = run_main("job", "run", "other", "--config-file", str(p))
    assert res.returncode == 2


def test_daemon_refuses_a_config_of_jobs_only(tmp_path):
    p = config_file(tmp_path, "m")
    p.write_text(p.read_text() + f"source = urls:{tmp_path}/l.txt\ntarget = {tmp_path}/t\n")
    with pytest.raises(ConfigError, match="skynet job run NAME"):
        settings.check_folders(settings.load(str(p)))


def test_window_syntax():
    w = Window("Mon-Fri 20:00-06:00 Sat,Sun 00:00-24:00")
    at = lambda d, h, m=0: time.mktime((2026, 12, 7 + d, h, m, 0, 0, 0, -1))  # d=0: Monday
    assert not w.is_open(at(0, 12)) and w.is_open(at(0, 21)) and w.is_open(at(1, 5, 59)) and not w.is_open(at(1, 6))
    assert w.is_open(at(5, 12)) and w.is_open(at(6, 23, 59)) and not w.is_open(at(0, 0, 30))  # Sun ends at 24:00
    assert w.is_open(at(5, 5))  # Friday 20:00-06:00 runs into Saturday
    assert w.next_change(at(0, 12)) == at(0, 20)
    assert Window("20:00,on 06:00,off").is_open(at(0, 23)) and not Window("20:00,on 06:00,off").is_open(at(0, 7))
    assert Window("").is_open(at(0, 12))


# -- intake -------------------------------------------------------------------------


def test_bad_lines_are_reported_with_their_line_number_and_the_rest_runs(tmp_path):
    job = job_for(tmp_path, ["http://h/a/1.txt", "not a url", "", "# a comment", "gopher://h/2.txt",
                             "http://h/dir/", "http://h/a/1.txt", "http://h/%2e%2e/x", "http://h/a/3.txt"])
    fake = FakeTransfer()
    table, runner = make(tmp_path, job, fake)
    assert runner.run() == EXIT_FAILED
    assert sorted(s for s, _ in fake.calls) == ["http://h/a/1.txt", "http://h/a/3.txt"]
    assert [(line, kind) for line, kind, _ in table.problems()] == [(2, "malformed"), (6, "malformed"),
                                                                   (7, "duplicate"), (8, "malformed")]
    texts = {line: text for line, _, text in table.problems()}
    assert "already that of line 1" in texts[7] and "not a clean relative path" in texts[8]
    gopher = table.item("2.txt")
    assert (gopher["status"], gopher["error_class"], gopher["attempts"]) == ("failed", "other", 0)
    assert "unsupported scheme 'gopher'" in gopher["error"]


@pytest.mark.parametrize("sep", [",", "\t"])
@pytest.mark.parametrize("text", ["", ",", "a,b", 'a,"b,c"', '"a\tb"\tc', "a\x00b", " a , b ", "a,,", "\t", 'x"y,z',
                                  "a;b", "http://h/x?a=1,in/x.bin,12"])
def test_fields_of_a_line_are_csvs_reading(text, sep):
    """split_fields (a line without quotes is split at once) reads every line as csv.reader does."""
    assert split_fields(text, sep) == next(csv.reader([text], delimiter=sep), [])


@pytest.mark.parametrize("url", ["http://h/x", "HTTPS://H.example:8443/a?b#c", "ftp://u:p@h/x", "gopher://h/x",
                                 "http://[::1]:80/x", "http://[::1/x", "http://bücher.de/x", "mailto:someone",
                                 "http:/x", "not a url", "http:///x", "1http://h/x"])
def test_a_line_with_a_path_reads_its_url_as_one_without(url):
    """With a path column, intake reads only the URL's scheme and host (no urlsplit per
    line): the same item, refusal or unsupported scheme as a list that takes the
    destination from the URL's path."""
    def read(line: str, fmt: ListFormat) -> tuple:
        try:
            row = parse_line(line, fmt, 7)
        except BadLine as exc:
            return ("bad", str(exc))
        return (row.item.source, row.status, row.error_class, row.error)

    with_path = read(f"{url},d/x.bin", ListFormat(",", ("url", "path")))
    without = read(url, ListFormat(",", ("url",)))
    if without[0] == "bad" and "file name" in without[1]:  # only the path column could name it
        assert with_path[0] != "bad"
    else:
        assert with_path == without


def test_csv_and_tsv_lists_give_path_size_and_md5(tmp_path):
    md5 = "0123456789abcdef0123456789ABCDEF"
    for name, sep in (("csv", ","), ("tsv", "\t")):
        lst = write_list(tmp_path / f"l.{name}", [sep.join(["md5", "url", "path", "size"]),
                                                  sep.join([md5, "http://h/x?id=1", "in/one.bin", "12"]),
                                                  sep.join(["", "ftp://h/y", "", ""]),
                                                  sep.join(["", "http://h/z", "z", "twelve"]),
                                                  sep.join(["http://h/short"])])
        table = ItemTable(str(tmp_path / name / "t.sqlite"))
        intake = Intake(JobConfig("j", f"urls:{lst}", "t"), table)
        intake.prepare()
        intake.run()
        one = table.item("in/one.bin")
        assert (one["source"], one["size"], one["md5"], one["line"]) == ("http://h/x?id=1", 12, md5.lower(), 2)
        assert table.item("y")["source"] == "ftp://h/y"
        assert [(line, kind) for line, kind, _ in table.problems()] == [(4, "malformed"), (5, "malformed")]


def test_intake_killed_between_batches_continues_at_the_next_line(tmp_path):
    """The offset is committed with each batch: a new intake reads no line twice
    (a re-read line would look like its own duplicate) and misses none."""
    lines = [f"http://h/f/{i}" for i in range(10)]
    job = job_for(tmp_path, lines)
    table = ItemTable(str(tmp_path / "t.sqlite"))
    first = Intake(job, table, batch=3)
    first.prepare()
    stop = threading.Event()
    first.on_added = lambda n: stop.set()  # "killed" after its first batch
    first.run(stop)
    assert not first.finished.is_set() and first.state["line"] == 3
    table.close()
    table = ItemTable(str(tmp_path / "t.sqlite"))
    second = Intake(job, table, batch=3)
    second.prepare()
    second.run()
    assert second.finished.is_set() and list(table.problems()) == []
    assert [r[1] for r in table.rows()] == lines


def test_a_changed_list_stops_the_job_unless_reload(tmp_path):
    job = job_for(tmp_path, ["http://h/a", "http://h/b", "http://h/missing-c"])
    fake = FakeTransfer()
    table, runner = make(tmp_path, job, fake)
    assert runner.run() == EXIT_FAILED  # missing-c: 404
    table.close()
    lst = Path(job.source_path)
    os.utime(lst)  # touched, same bytes: recognised by its hash
    table, runner = make(tmp_path, job, fake)
    table.close()
    write_list(lst, ["http://h/b", "http://h/d", "http://h/e"])  # a and missing-c removed; d, e new
    table = ItemTable(str(tmp_path / "state" / "j.sqlite"))
    with pytest.raises(ListChanged, match=r"changed since job j first read it .*--reload"):
        Intake(job, table).prepare()
    calls = len(fake.calls)
    table, runner = make(tmp_path, job, fake, reload=True)
    assert runner.run() == EXIT_DONE
    assert sorted(s for s, _ in fake.calls[calls:]) == ["http://h/d", "http://h/e"]  # b finished: not again
    rows = {r[2]: r[3] for r in table.rows()}
    assert rows == {"a": "done", "b": "done", "d": "done", "e": "done"}  # a finished: kept; missing-c dropped


def test_job_run_says_the_list_changed_in_one_line_and_exits_2(tmp_path):
    lst = write_list(tmp_path / "l.txt", ["http://h/a"])
    p = config_file(tmp_path, "m")
    p.write_text(p.read_text() + f"source = urls:{lst}\ntarget = {tmp_path}/t\n")
    log = tmp_path / "fetch.log"
    res = subprocess.run([sys.executable, "-m", "tests.jobs_fake", str(p), "m", str(log), "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    write_list(lst, ["http://h/a", "http://h/b"])
    res = run_main("job", "run", "m", "--config-file", str(p))
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "changed since job m first read it" in errors[0] and "--reload" in errors[0]


# -- the runner ---------------------------------------------------------------------


def test_retries_follow_retry_after_and_permanent_errors_fail_at_once(tmp_path):
    clock = FakeClock(MONDAY_10)
    job = job_for(tmp_path, ["http://a/flaky-2", "http://b/flaky-9", "http://c/missing"])
    fake = FakeTransfer(now=clock.now)
    table, runner = make(tmp_path, job, fake, clock=clock)
    t, box = run_in_thread(runner)
    row = lambda dest: globals()["row"](table, dest)
    wait_for(lambda: row("missing")["status"] == "failed" and row("flaky-9")["attempts"] == 1
             and row("flaky-2")["attempts"] == 1 and row("flaky-9")["status"] == "queued", what="first attempts")
    assert row("missing")["attempts"] == 1 and row("missing")["error_class"] == "not_found"
    assert row("flaky-2")["next_at"] == MONDAY_10 + 30
    clock.t += 30
    wait_for(lambda: row("flaky-2")["attempts"] == 2 and row("flaky-9")["attempts"] == 2
             and row("flaky-9")["status"] == "queued", what="second attempts")
    assert row("flaky-2")["next_at"] == MONDAY_10 + 30 + 300
    clock.t += 299
    time.sleep(0.05)  # a moment of the loop with nothing due: nothing runs early
    assert row("flaky-2")["attempts"] == 2
    clock.t += 1
    t.join(30)
    assert box["code"] == EXIT_FAILED
    assert (row("flaky-2")["status"], row("flaky-2")["attempts"]) == ("done", 3)
    f9 = row("flaky-9")
    assert (f9["status"], f9["attempts"], f9["error_class"], f9["status_code"]) == ("failed", 3, "other", 503)
    times = sorted(at for s, at in fake.calls if s == "http://a/flaky-2")
    assert times == [MONDAY_10, MONDAY_10 + 30, MONDAY_10 + 330]


def test_a_window_pauses_a_transfer_at_a_chunk_boundary_and_it_continues_when_it_opens(tmp_path):
    clock = FakeClock(MONDAY_10)
    job = job_for(tmp_path, ["http://h/big-10", "http://h/small-1", "http://h/small-2"], window="10:00-12:00")
    fake = FakeTransfer(now=clock.now)

    def close_after_chunk_3(item, i, ctx):
        if "big" in item.source and i == 3 and clock.t == MONDAY_10:
            clock.t = MONDAY_10 + 2 * 3600  # 12:00: the window closes
            assert ctx.stop.wait(30), "the runner did not ask the transfer to stop"

    fake.on_chunk = close_after_chunk_3
    table, runner = make(tmp_path, job, fake, clock=clock)
    t, box = run_in_thread(runner)
    wait_for(lambda: row(table, "big-10")["status"] == "queued" and row(table, "big-10")["resume"], what="pause")
    big = table.item("big-10")
    assert json.loads(big["resume"]) == {"done": 4} and big["attempts"] == 0  # not charged
    assert [s for s, _ in fake.calls] == ["http://h/big-10"]  # nothing started while closed
    clock.t = MONDAY_10 + 86400  # Tuesday 10:00: open again
    t.join(30)
    assert box["code"] == EXIT_DONE
    assert fake.chunks["http://h/big-10"] == 10  # no chunk sent twice
    assert all(Window(job.window).is_open(at) for _, at in fake.calls)
    assert table.item("big-10")["attempts"] == 1 and table.item("big-10")["resume"] is None


def test_an_unreachable_host_costs_one_connection_per_back_off(tmp_path):
    """A host that refuses: one connection, then its other items fail with it
    without a request each (an attempt, retried no earlier than the host is due);
    after max_attempts rounds every item has failed for good."""
    clock = FakeClock(MONDAY_10)
    job = job_for(tmp_path, [f"http://dead/down-{i}" for i in range(20)] + ["http://alive/ok"], max_attempts=2,
                  retry_after=[0.0])
    fake = FakeTransfer(now=clock.now)
    table, runner = make(tmp_path, job, fake, clock=clock)
    t, box = run_in_thread(runner)
    wait_for(lambda: row(table, "ok")["status"] == "done" and row(table, "down-19")["attempts"] == 1,
             what="the dead host's first round")
    dead = [table.item(f"down-{i}") for i in range(20)]
    assert len([s for s, _ in fake.calls if "dead" in s]) == 1  # one connection for the 20 items
    until = dead[0]["next_at"]
    assert MONDAY_10 + 1 <= until <= MONDAY_10 + 2 and all(d["next_at"] == until for d in dead)
    assert all(d["error_class"] == "refused" for d in dead) and "backing off" in dead[5]["error"]
    clock.t = until
    t.join(30)
    assert box["code"] == EXIT_FAILED
    assert len([s for s, _ in fake.calls if "dead" in s]) == 2  # one more in the second round
    assert all((table.item(f"down-{i}")["status"], table.item(f"down-{i}")["attempts"]) == ("failed", 2)
               for i in range(20))


def test_a_running_row_left_by_a_crash_is_queued_again_uncharged(tmp_path):
    job = job_for(tmp_path, ["http://h/a", "http://h/b"])
    table = ItemTable(str(tmp_path / "state" / "j.sqlite"))
    intake = Intake(job, table)
    intake.prepare()
    intake.run()
    table.claim(1, time.time())  # a run that died with it in hand
    assert table.item("a")["status"] == "running"
    table.close()
    fake = FakeTransfer()
    table, runner = make(tmp_path, job, fake)
    assert runner.run() == EXIT_DONE
    assert table.item("a")["attempts"] == 1 and sorted(s for s, _ in fake.calls) == ["http://h/a", "http://h/b"]


# -- job run as a process: kill -9 and run again --------------------------------------


def test_kill_9_of_job_run_three_times_then_again_fetches_no_finished_item_twice(tmp_path):
    """Killed with -9 three times at random moments and run again: after each
    kill, no item whose row said done is fetched again; in the end every item
    is in its right state, the big one sent chunk by chunk without repeats."""
    n = 3000
    lst = write_list(tmp_path / "l.txt", ["http://h/big-40"] + [f"http://h/d{i % 7}/f{i}" for i in range(n)]
                     + ["http://h/missing-1"])
    p = config_file(tmp_path, "m")
    p.write_text(p.read_text() + f"source = urls:{lst}\ntarget = {tmp_path}/t\nworkers = 8\n")
    log = tmp_path / "fetch.log"
    cmd = [sys.executable, "-m", "tests.jobs_fake", str(p), "m", str(log), "0.001"]
    rng = random.Random()
    done_sets: list[tuple[set[str], int]] = []
    for kill in range(3):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        goal = rng.randint(200, 700) * (kill + 1)
        wait_for(lambda: log.exists() and log.read_text().count("\n") >= goal, 60, "items fetched")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        table = ItemTable(str(tmp_path / "state" / "jobs" / "m.sqlite"))
        done_sets.append(({r[1] for r in table.rows() if r[3] == "done"}, log.read_text().count("\n")))
        table.close()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == EXIT_FAILED, res.stderr  # missing-1: a 404
    fetched = log.read_text().splitlines()
    for done, at in done_sets:
        assert done and not done & set(fetched[at:])
    assert set(fetched) == {"http://h/big-40"} | {f"http://h/d{i % 7}/f{i}" for i in range(n)}
    table = ItemTable(str(tmp_path / "state" / "jobs" / "m.sqlite"))
    rows = {r[2]: r for r in table.rows()}
    assert sum(1 for r in rows.values() if r[3] == "done") == n + 1
    assert rows["missing-1"][3:5] == ("failed", "not_found")
    assert sorted(os.listdir(tmp_path / "t")) == sorted({f"d{i}" for i in range(7)} | {"big-40"})


# -- the CLI ------------------------------------------------------------------------


def test_status_retry_and_report(tmp_path):
    lst = write_list(tmp_path / "l.txt", ["http://h/a", "http://h/missing-b", "http://h/down-c", "bad line"])
    p = config_file(tmp_path, "m")
    p.write_text(p.read_text() + f"source = urls:{lst}\ntarget = {tmp_path}/t\nmax_attempts = 1\n")
    res = run_main("job", "status", "m", "--config-file", str(p))
    assert res.returncode == 1 and "has not run yet" in res.stderr
    log = tmp_path / "fetch.log"
    res = subprocess.run([sys.executable, "-m", "tests.jobs_fake", str(p), "m", str(log), "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == EXIT_FAILED, res.stderr
    assert "l.txt line 4: a URL has no spaces" in res.stderr
    st = json.loads(run_main("job", "status", "m", "--json", "--config-file", str(p)).stdout)
    assert st["counts"] == {"queued": 0, "running": 0, "done": 1, "failed": 2}
    assert st["errors"] == {"not_found": 1, "refused": 1} and st["rejected"] == {"malformed": 1}
    text = run_main("job", "status", "m", "--config-file", str(p)).stdout
    assert "1 done, 2 failed" in text and "not_found 1, refused 1" in text
    report = list(csv.DictReader(io.StringIO(run_main("job", "report", "m", "--csv", "--config-file", str(p)).stdout)))
    assert [(r["dest"], r["status"], r["error_class"]) for r in report] == [
        ("a", "done", ""), ("missing-b", "failed", "not_found"), ("down-c", "failed", "refused"),
        ("", "rejected", "malformed")]
    assert report[1]["status_code"] == "404" and report[3]["line"] == "4"
    res = run_main("job", "retry", "m", "--class", "refused", "--config-file", str(p))
    assert res.returncode == 0 and "1 failed item(s) queued again" in res.stdout
    st = json.loads(run_main("job", "status", "m", "--json", "--config-file", str(p)).stdout)
    assert st["counts"]["queued"] == 1 and st["counts"]["failed"] == 1
    assert run_main("job", "retry", "m", "--class", "nope", "--config-file", str(p)).returncode == 2


def test_a_job_of_good_items_exits_0(tmp_path):
    lst = write_list(tmp_path / "l.txt", [f"http://h/x/{i}" for i in range(50)])
    p = config_file(tmp_path, "m")
    p.write_text(p.read_text() + f"source = urls:{lst}\ntarget = {tmp_path}/t\n")
    res = subprocess.run([sys.executable, "-m", "tests.jobs_fake", str(p), "m", str(tmp_path / "f.log"), "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == EXIT_DONE, res.stderr
    assert "job m: 50 done" in res.stderr
    assert len(os.listdir(tmp_path / "t" / "x")) == 50
