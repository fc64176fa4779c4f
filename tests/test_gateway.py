"""`skynet serve`, the tus upload gateway, end to end: `python main.py serve` as a subprocess on
127.0.0.1 with two local destinations, driven by curl, tuspy and requests."""
from __future__ import annotations

import hashlib
import os
import random
import subprocess
import threading

import pytest
import requests

from tests.gateway_helpers import (
    OCTETS,
    MiB,
    Gateway,
    b64,
    md5_header,
    records,
    staged,
    wait_for,
    write_config,
)


@pytest.fixture
def two_local(tmp_path):
    """(config path, token, [root a, root b]) for a gateway landing in two local folders."""
    roots = [tmp_path / "a", tmp_path / "b"]
    for r in roots:
        r.mkdir()
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"a": {"service": "local", "root": str(roots[0])},
                               "b": {"service": "local", "root": str(roots[1])}})
    return cfg, token, roots


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def curl(*args: str) -> str:
    """curl -s -i ...: the response, headers first (an interim 100 Continue left out)."""
    out = subprocess.run(["curl", "-s", "-i", *args], capture_output=True, check=True, timeout=120).stdout.decode(
        "latin-1")
    while out.startswith("HTTP/1.1 100"):
        out = out.split("\r\n\r\n", 1)[1]
    return out


def header(resp: str, name: str) -> str:
    for line in resp.splitlines():
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {resp!r}")


def test_curl_walkthrough(two_local, tmp_path):
    """The README's walk-through: create, PATCH two chunks (one refused for its checksum),
    HEAD to resume, a Range download, the versions listing; OPTIONS says what is supported."""
    cfg, token, roots = two_local
    data = _rand(3 * MiB + 5, 1)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    (tmp_path / "c1").write_bytes(data[:2 * MiB])
    (tmp_path / "c2").write_bytes(data[2 * MiB:])
    with Gateway(cfg, token) as gw:
        auth = ["-H", f"Authorization: Bearer {token}", "-H", "Tus-Resumable: 1.0.0"]
        opts = curl("-X", "OPTIONS", f"{gw.url}/uploads")
        assert " 204 " in opts.splitlines()[0]
        assert header(opts, "Tus-Extension") == "creation,creation-with-upload,checksum,termination,expiration"
        assert header(opts, "Tus-Checksum-Algorithm") == "md5,sha1"
        made = curl("-X", "POST", f"{gw.url}/uploads", *auth, "-H", f"Upload-Length: {len(data)}",
                    "-H", f"Upload-Metadata: filename {b64(b'docs/report.bin')}")
        assert " 201 " in made.splitlines()[0]
        url = gw.url + header(made, "Location")
        assert header(made, "Upload-Expires").endswith("GMT")
        patch = ["-X", "PATCH", url, *auth, "-H", f"Content-Type: {OCTETS}"]
        first = curl(*patch, "-H", "Upload-Offset: 0", "-H", f"Upload-Checksum: {md5_header(data[:2 * MiB])}",
                     "--data-binary", f"@{tmp_path / 'c1'}")
        assert header(first, "Upload-Offset") == str(2 * MiB)
        bad = curl(*patch, "-H", f"Upload-Offset: {2 * MiB}", "-H", f"Upload-Checksum: {md5_header(b'other')}",
                   "--data-binary", f"@{tmp_path / 'c2'}")
        assert " 460 " in bad.splitlines()[0], bad
        head = curl("-I", url, *auth)
        assert header(head, "Upload-Offset") == str(2 * MiB)  # the refused chunk left nothing
        last = curl(*patch, "-H", f"Upload-Offset: {header(head, 'Upload-Offset')}", "--data-binary",
                    f"@{tmp_path / 'c2'}")
        assert " 204 " in last.splitlines()[0]
        assert header(last, "Skynet-Landed") == "a, b"
        for r in roots:
            assert (r / "docs" / "report.bin").read_bytes() == data
        # a client whose answer to the last chunk was lost asks again: every byte is in
        assert header(curl("-I", url, *auth), "Upload-Offset") == str(len(data))
        got = curl("-H", f"Authorization: Bearer {token}", "-r", "100-1048675", f"{gw.url}/files/docs/report.bin")
        assert " 206 " in got.splitlines()[0]
        assert header(got, "Content-Range") == f"bytes 100-1048675/{len(data)}"
        assert got.encode("latin-1").split(b"\r\n\r\n", 1)[1] == data[100:1048676]
        listing = gw.versions()
        assert [f["path"] for f in listing["files"]] == ["docs/report.bin"]
        assert [v["version"] for v in listing["files"][0]["versions"]] == [1]
    assert staged(tmp_path / "state") == []  # landed everywhere: nothing kept on the gateway


def _tuspy_client(gw: Gateway):
    from tusclient import client

    return client.TusClient(f"{gw.url}/uploads", headers={"Authorization": f"Bearer {gw.token}"})


def kill_resume(tmp_path, cfg, token, roots, size: int, chunk: int, how: str) -> None:
    """Upload `size` bytes in `chunk`s, kill -9 the server while the chunk after the half-way
    point is in flight, restart it, resume from the offset HEAD reports; the file lands byte
    for byte, and the bytes sent twice are at most that one chunk."""
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        rnd = random.Random(7)
        for _ in range(size // MiB):
            f.write(rnd.randbytes(MiB))
    md5 = hashlib.md5(src.read_bytes()).hexdigest() if size <= 64 * MiB else None  # checked at the end (re-read)
    gw = Gateway(cfg, token).start()
    try:
        sent = 0
        half = (size // chunk // 2) * chunk
        if how == "tuspy":
            meta = {"filename": "big.bin", **({"md5": md5} if md5 else {})}
            uploader = _tuspy_client(gw).uploader(str(src), chunk_size=chunk, metadata=meta, store_url=False)
            while uploader.offset < half:
                uploader.upload_chunk()
                sent += chunk
            url = uploader.url
        else:
            url = gw.location(gw.create("big.bin", size, md5=md5))
            with open(src, "rb") as f:
                for off in range(0, half, chunk):
                    f.seek(off)
                    assert gw.patch(url, off, f.read(chunk)).status_code == 204
                    sent += chunk
        # the next chunk: half of it on the wire, then the server dies (-9)
        flowing, killed = threading.Event(), threading.Event()

        def body():
            with open(src, "rb") as f:
                f.seek(half)
                yield f.read(chunk // 2)
                flowing.set()
                killed.wait(60)  # the rest comes only once the server is dead: it never gets there
                yield f.read(chunk - chunk // 2)

        result: list = []
        t = threading.Thread(target=lambda: result.append(_quiet(lambda: gw.patch(url, half, body(), timeout=90))))
        t.start()
        assert flowing.wait(60)
        gw.kill9()
        killed.set()
        sent += chunk // 2
        t.join(120)
        gw.start()  # same port, same staging folder
        offset = int(gw.head(url).headers["Upload-Offset"])
        assert offset == half  # durable: every accepted chunk, and nothing of the one cut
        if how == "tuspy":
            uploader = _tuspy_client(gw).uploader(str(src), chunk_size=chunk, url=url)
            assert uploader.offset == offset
            while uploader.offset < size:
                uploader.upload_chunk()
                sent += chunk
        else:
            script = (f'set -e; off={offset}; while [ "$off" -lt {size} ]; do '
                      f'tail -c +$((off+1)) {src} | head -c {chunk} > {tmp_path}/chunk; '
                      f'off=$(curl -s -f -X PATCH -H "Authorization: Bearer {token}" -H "Tus-Resumable: 1.0.0" '
                      f'-H "Content-Type: {OCTETS}" -H "Upload-Offset: $off" --data-binary @{tmp_path}/chunk '
                      f'-D - -o /dev/null {url} | tr -d "\\r" | sed -n "s/^Upload-Offset: //Ip"); done')
            subprocess.run(["bash", "-c", script], check=True, timeout=3600)
            sent += size - offset
        assert sent - size <= chunk, f"{sent - size} bytes sent twice"
        wait_for(lambda: all((r / "big.bin").exists() for r in roots), "the file in both destinations")
        for r in roots:
            assert (r / "big.bin").stat().st_size == size
            if md5:
                assert hashlib.md5((r / "big.bin").read_bytes()).hexdigest() == md5
            else:
                assert subprocess.run(["cmp", str(src), str(r / "big.bin")]).returncode == 0
    finally:
        gw.stop()


def _quiet(fn):
    try:
        return fn()
    except requests.RequestException as exc:
        return exc


@pytest.mark.parametrize("how", ["tuspy", "curl"])
def test_kill9_resume_64mib(two_local, tmp_path, how):
    cfg, token, roots = two_local
    kill_resume(tmp_path, cfg, token, roots, 64 * MiB, 8 * MiB, how)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["tuspy", "curl"])
def test_kill9_resume_1gib(two_local, tmp_path, how):
    cfg, token, roots = two_local
    kill_resume(tmp_path, cfg, token, roots, 1024 * MiB, 8 * MiB, how)


def test_checksums_and_final_md5(two_local, tmp_path):
    """md5 and sha1 chunk checksums; a mismatching chunk is refused (460) and nothing of it is
    kept; a final MD5 (metadata) that does not match drops the upload before anything lands."""
    cfg, token, roots = two_local
    data = _rand(2 * MiB, 2)
    with Gateway(cfg, token) as gw:
        url = gw.location(gw.create("c.bin", len(data)))
        part = tmp_path / "state" / "gateway" / "uploads" / (url.rsplit("/", 1)[1] + ".part")
        r = gw.patch(url, 0, data[:MiB], checksum=f"sha1 {b64(hashlib.sha1(data[:MiB]).digest())}")
        assert r.status_code == 204
        corrupted = bytearray(data[MiB:])
        corrupted[5] ^= 1
        r = gw.patch(url, MiB, bytes(corrupted), checksum=md5_header(data[MiB:]))
        assert r.status_code == 460, r.text
        assert part.stat().st_size == MiB
        assert gw.head(url).headers["Upload-Offset"] == str(MiB)
        r = gw.patch(url, MiB, data[MiB:], checksum="crc32 AAAA")
        assert r.status_code == 400
        assert gw.patch(url, MiB, data[MiB:], checksum=md5_header(data[MiB:])).status_code == 204
        assert (roots[0] / "c.bin").read_bytes() == data
        # the whole file's MD5 given as metadata, and a chunk that differs from it
        url = gw.location(gw.create("d.bin", len(data), md5=hashlib.md5(data).hexdigest()))
        r = gw.patch(url, 0, bytes(corrupted) + data[:MiB])
        assert r.status_code == 460 and "verification" in r.text
        assert gw.head(url).status_code == 404
        assert not (roots[0] / "d.bin").exists() and not (roots[1] / "d.bin").exists()
        url = gw.location(gw.create("d.bin", len(data), md5=hashlib.md5(data).hexdigest()))
        assert gw.patch(url, 0, data).status_code == 204
        assert (roots[1] / "d.bin").read_bytes() == data


def test_second_upload_is_version_2(two_local):
    """The same name uploaded twice: version 2 is current, version 1 is kept, both
    download byte for byte, whole and by ranges."""
    cfg, token, roots = two_local
    v1, v2 = _rand(3 * MiB + 1, 3), _rand(2 * MiB + 7, 4)
    with Gateway(cfg, token) as gw:
        gw.upload("photos/x.raw", v1)
        gw.upload("photos/x.raw", v2)
        listing = gw.versions("photos")
        (entry,) = listing["files"]
        assert entry["path"] == "photos/x.raw"
        assert [(v["version"], v["size"], v["current"]) for v in entry["versions"]] == [
            (2, len(v2), True), (1, len(v1), False)]
        assert gw.get("photos/x.raw").content == v2
        assert gw.get("photos/x.raw", version=1).content == v1
        assert gw.get("photos/x.raw", version=2).content == v2
        for version, data in ((1, v1), (2, v2)):
            for start, end in ((0, 0), (5, 1 << 20), (len(data) - 10, len(data) - 1)):
                r = gw.get("photos/x.raw", rng=f"bytes={start}-{end}", version=version)
                assert r.status_code == 206
                assert r.content == data[start:end + 1]
            r = gw.get("photos/x.raw", rng="bytes=-100", version=version)
            assert r.content == data[-100:]
        assert gw.get("photos/x.raw", version=3).status_code == 404
        h = requests.head(f"{gw.url}/files/photos/x.raw", headers={"Authorization": f"Bearer {token}"})
        assert h.status_code == 200 and int(h.headers["Content-Length"]) == len(v2) and h.headers["ETag"]
        assert gw.get("photos/x.raw", rng=f"bytes={len(v2)}-").status_code == 416
        # concurrent ranged readers
        results: list[bytes] = [b""] * 8
        def read(i: int) -> None:
            results[i] = gw.get("photos/x.raw", rng=f"bytes={i * 1000}-{i * 1000 + 999999}").content
        threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(results[i] == v2[i * 1000:i * 1000 + 1000000] for i in range(8))


def test_wrong_tokens_refused_and_throttled(two_local):
    cfg, token, _ = two_local
    with Gateway(cfg, token) as gw:
        assert requests.get(f"{gw.url}/versions/", timeout=30).status_code == 401
        for bad in ("x" * 43, token[:-1] + ("A" if token[-1] != "A" else "B")) * 4:
            r = requests.get(f"{gw.url}/versions/", headers={"Authorization": f"Bearer {bad}"}, timeout=30)
            assert r.status_code == 401 and "Bearer" in r.headers["WWW-Authenticate"]
        r = requests.post(f"{gw.url}/uploads", headers={"Authorization": "Bearer nope", "Tus-Resumable": "1.0.0",
                                                        "Upload-Length": "1"}, timeout=30)
        assert r.status_code == 401  # the 10th wrong one
        r = requests.get(f"{gw.url}/versions/", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0  # blocked, even with the right one
        assert token not in gw.log_text() and "nope" not in gw.log_text()


def test_limits(tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"a": {"service": "local", "root": str(root)}}, max_upload_size="4MiB",
                         max_uploads_in_flight="2", max_chunk_size="1MiB")
    with Gateway(cfg, token) as gw:
        u0 = gw.location(gw.create("chunky", 2 * MiB))
        assert gw.patch(u0, 0, b"x" * (MiB + 1)).status_code == 413  # max_chunk_size, before it is read
        assert requests.patch(u0, data=b"x" * (MiB + 1), timeout=30).status_code == 413  # nor without a token
        assert requests.delete(u0, headers=gw.auth, timeout=30).status_code == 204
        r = gw.create("big", 4 * MiB + 1)
        assert r.status_code == 413 and "max_upload_size" in r.text
        u1 = gw.location(gw.create("one", 10))
        gw.location(gw.create("two", 10))
        r = gw.create("three", 10)
        assert r.status_code == 429 and "max_uploads_in_flight" in r.text
        assert gw.patch(u1, 0, b"x" * 11).status_code == 413  # past Upload-Length
        assert gw.patch(u1, 3, b"x").status_code == 409  # not the upload's offset
        assert gw.patch(u1, 0, b"0123456789").status_code == 204  # finished: one slot free again
        assert (root / "one").read_bytes() == b"0123456789"
        assert gw.create("three", 10).status_code == 201
        assert gw.create("four", 10).status_code == 429


def test_termination(two_local, tmp_path):
    cfg, token, roots = two_local
    with Gateway(cfg, token) as gw:
        url = gw.location(gw.create("t.bin", 100))
        assert gw.patch(url, 0, b"a" * 50).status_code == 204
        assert staged(tmp_path / "state")
        r = requests.delete(url, headers=gw.auth, timeout=30)
        assert r.status_code == 204
        assert gw.head(url).status_code == 404
        assert gw.patch(url, 50, b"a" * 50).status_code == 404
        assert staged(tmp_path / "state") == []
        assert not (roots[0] / "t.bin").exists()


def test_two_clients_on_one_upload(two_local):
    """Two PATCHes at the same offset, the first one's body still coming in: the one whose
    chunk is in first is written, the other finds the offset moved (409) and writes nothing.
    (waitress hands a request to the app once its body is all in, so the second one, sent
    whole, is the first in.)"""
    cfg, token, roots = two_local
    with Gateway(cfg, token) as gw:
        url = gw.location(gw.create("one.bin", 4 * MiB))
        flowing, release = threading.Event(), threading.Event()

        def body():
            yield b"a" * MiB
            flowing.set()
            release.wait(60)
            yield b"a" * MiB

        first: list = []
        t = threading.Thread(target=lambda: first.append(gw.patch(url, 0, body())))
        t.start()
        assert flowing.wait(60)
        second = gw.patch(url, 0, b"b" * 2 * MiB)
        assert second.status_code == 204 and second.headers["Upload-Offset"] == str(2 * MiB)
        release.set()
        t.join(60)
        assert first[0].status_code == 409
        assert gw.head(url).headers["Upload-Offset"] == str(2 * MiB)
        assert gw.patch(url, 2 * MiB, b"c" * 2 * MiB).status_code == 204
        assert (roots[0] / "one.bin").read_bytes() == b"b" * 2 * MiB + b"c" * 2 * MiB


def test_creation_with_upload_and_empty_file(two_local, tmp_path):
    cfg, token, roots = two_local
    with Gateway(cfg, token) as gw:
        r = gw.create("w.txt", 11, body=b"hello world")
        assert r.status_code == 201 and r.headers["Upload-Offset"] == "11" and r.headers["Skynet-Landed"] == "a, b"
        assert (roots[0] / "w.txt").read_bytes() == b"hello world"
        r = gw.create("w2.txt", 11, body=b"hello world", headers={"Upload-Checksum": md5_header(b"hello")})
        assert r.status_code == 460 and "Location" not in r.headers
        assert staged(tmp_path / "state") == []  # nothing left that nobody could resume
        assert not (roots[0] / "w2.txt").exists()
        r = gw.create("empty", 0)
        assert r.status_code == 201 and r.headers["Upload-Offset"] == "0"
        assert (roots[1] / "empty").read_bytes() == b""
        assert requests.post(f"{gw.url}/uploads", headers={"Authorization": f"Bearer {token}",
                                                           "Upload-Length": "1"}, timeout=30).status_code == 412


def test_expired_uploads_are_swept(tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"a": {"service": "local", "root": str(root)}}, expire_after="1")
    with Gateway(cfg, token) as gw:
        # the first 10 bytes with the creation: no step of the test has to come within the second
        r = gw.create("slow.bin", 100, body=b"x" * 10)
        url = gw.location(r)
        assert r.headers["Upload-Offset"] == "10" and r.headers["Upload-Expires"].endswith("GMT")
        wait_for(lambda: gw.head(url).status_code in (404, 410), "the upload to expire")
        assert gw.patch(url, 10, b"y").status_code in (404, 410)
        wait_for(lambda: gw.head(url).status_code == 404, "the sweep to remove the idle upload")
        # HEAD says 404 once the record is gone (removed first); its data files follow
        wait_for(lambda: staged(tmp_path / "state") == [], "the sweep to remove the upload's files")
        gw.wait_log("expired at offset 10 of 100")
        # a delivered upload's record (HEAD: every byte in) goes after as long
        done = gw.location(gw.create("done.bin", 3, body=b"abc"))
        assert gw.head(done).headers["Upload-Offset"] == "3" or gw.head(done).status_code == 404
        # (a whole upload that landed everywhere at once keeps its record in memory only)
        wait_for(lambda: records(tmp_path / "state") == [] and gw.head(done).status_code == 404,
                 "the delivered upload's record to go")
        assert gw.head(done).status_code == 404 and (root / "done.bin").read_bytes() == b"abc"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a//b", "./a", "a/", "",
                                  ".skynet-versions/a@1.v", "d/.skynet-tmp-1", "a\nb", "tab\there", "x" * 300])
def test_hostile_names_refused(tmp_path, name):
    root = tmp_path / "root" / "a"
    root.mkdir(parents=True)
    cfg = tmp_path / "gw.ini"
    token = write_config(cfg, {"a": {"service": "local", "root": str(root)}})
    with Gateway(cfg, token) as gw:
        r = gw.create(name, 1)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert os.listdir(root) == [] and sorted(os.listdir(tmp_path / "root")) == ["a"]
        r = requests.get(f"{gw.url}/files/..%2f..%2fgw.ini", headers={"Authorization": f"Bearer {token}"},
                         timeout=30)
        assert r.status_code in (400, 404) and b"token_hash" not in r.content


def test_bad_config_is_one_line(tmp_path):
    from tests.harness import run_main

    cfg = tmp_path / "gw.ini"
    write_config(cfg, {"a": {"service": "local", "root": str(tmp_path), "bucket": "x"}})
    res = run_main("serve", "--config-file", str(cfg))
    assert res.returncode == 2
    assert res.stderr.strip() == (f"skynet: error: {cfg}: [target a] bucket: unknown key for a local target "
                                  "(known keys: capacity, fsync, root, service)")
