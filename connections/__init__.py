"""Connections (XCon implementations), one subpackage per service: connections/<service>/con.py.

Each con.py provides:
  KEYS: dict[key, (default, doc)]   the settings of its [service] config section
  build(options, target) -> XCon    a connection for one mapping (no network yet)
and may provide validate(options, target), which raises ValueError("key: problem").
"""
from __future__ import annotations

import importlib
from types import ModuleType

from skynet.extras import EXTRAS, require

SERVICES = ("local", "s3", "sftp")


def service_module(service: str) -> ModuleType:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r} (expected one of {', '.join(SERVICES)})")
    if service in EXTRAS:  # s3 and sftp: their libraries are the 's3' and 'sftp' extras
        require(service, f"the {service} service")
    mod = importlib.import_module(f"connections.{service}.con")
    if not hasattr(mod, "validate"):
        def validate(options: dict[str, str], target: str, _build=mod.build) -> None:
            _build(options, target).close()
        mod.validate = validate
    return mod
