"""Logging: one line per event, to stderr or to a rotating skynet.log.

Under systemd (JOURNAL_STREAM is set) stderr lines carry no timestamp: the
journal adds its own. Paths are logged with repr() so a name holding a newline
or odd bytes stays on one line. Secrets are never passed to the logger.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup(level: str = "INFO", log_file: str = "", fmt: str = "text") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if log_file:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=10 << 20, backupCount=5, encoding="utf-8"
        )
        stamp = True
    else:
        handler = logging.StreamHandler(sys.stderr)
        stamp = "JOURNAL_STREAM" not in os.environ
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        pattern = "%(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(("%(asctime)s " if stamp else "") + pattern))
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter stays out unless debugging.
    for noisy in ("botocore", "boto3", "urllib3", "asyncssh", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING)
                                          if level != "DEBUG" else logging.INFO)
