"""A scripted HTTP server for tests of our own HTTP clients (fault injection: the replies
a real server seldom gives, on cue): connections/s3/rest.py's, connections/s3/wholegets.py's."""
from __future__ import annotations

import socket
import threading
import time

SILENT = 30.0  # seconds a "silent" reply holds its connection without answering


class Scripted:
    """Accepts connections on 127.0.0.1 and answers each request with the next scripted
    reply, or, `replies` given as a dict, with the reply for the last part of the request's
    path (requests sent at once from several connections come in any order): bytes (sent
    in `split`-byte pieces), "close" (hang up without answering) or "silent" (answer
    nothing, keep the connection: a server that stopped answering). Records every
    request as (request line, headers, body)."""

    def __init__(self, replies: list | dict, split: int = 0) -> None:
        self.replies = replies if isinstance(replies, dict) else list(replies)
        self.split = split
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                self.requests.append((lines[0], headers, body))
                reply = self._reply_to(lines[0])
                if reply == "close":
                    return
                if reply == "silent":
                    time.sleep(SILENT)
                    return
                if self.split:
                    for i in range(0, len(reply), self.split):
                        conn.sendall(reply[i : i + self.split])
                else:
                    conn.sendall(reply)
                if b"connection: close" in reply.lower() or b"HTTP/1.0" in reply[:9]:
                    return

    def _reply_to(self, request_line: str) -> bytes | str:
        if isinstance(self.replies, dict):
            return self.replies[request_line.split(" ")[1].rsplit("/", 1)[1]]
        return self.replies.pop(0) if self.replies else b"HTTP/1.1 500 Out of script\r\nContent-Length: 0\r\n\r\n"

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def ok(body: bytes = b"", extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body
