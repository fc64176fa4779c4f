"""store_for(): the VersionStore of one mapping's remote."""
from __future__ import annotations

from connections.contract.xcon import Versions, XCon
from skynet.versions.area import AreaStore
from skynet.versions.model import VersionStore
from skynet.versions.native import NativeStore


class VersionsOff(ValueError):
    """The mapping keeps no versions (versions = no): only its current files exist."""


def store_for(con: XCon, mapping_cfg) -> VersionStore:
    """The store reading `con`'s versions: the bucket's own on an S3 bucket with
    versioning on, else the versions area. `con` must be connected (S3 is
    asked whether its versioning is on). VersionsOff for a mapping without
    versions."""
    if not mapping_cfg.versions:
        raise VersionsOff(f"mapping {mapping_cfg.name!r} keeps no versions (versions = no)")
    if isinstance(con, Versions) and con.versioning_on():
        return NativeStore(con)
    return AreaStore(con)
