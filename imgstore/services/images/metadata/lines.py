"""The format of ``bs_ceph_info.json``: one ZStack ImageInventory JSON per line.

Pure: no I/O. Lines are written as Gson writes them (compact, nulls left out) with the
ref of the one storage whose pool holds the object, so ZStack could adopt a pool written
by imgstore; lines that are not an inventory with an image uuid are skipped on reading.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any

from imgstore.db.models import Image, ImageBackupStorageRef
from imgstore.wire.enums import ImageStatus
from imgstore.wire.inventories import ImageBackupStorageRefInventory, ImageInventory
from imgstore.wire.masking import without_credentials

log = logging.getLogger(__name__)

METADATA_OBJECT = "bs_ceph_info.json"
READY, DOWNLOADING = ImageStatus.READY, ImageStatus.DOWNLOADING
UUID = re.compile(r"^[0-9a-f]{32}$")
CEPH_SCHEME = "ceph://"


def zstack_metadata_pool(pool_name: str) -> str:
    """Where ZStack's agent reads ``bs_ceph_info.json``: ``bak-t-<last '-' token>``."""
    return f"bak-t-{pool_name.rsplit('-', 1)[-1]}"


def split_install_path(install_path: str) -> tuple[str, str] | None:
    """``ceph://<pool>/<image>`` → ``(pool, image)``; None for anything else."""
    if not install_path.startswith(CEPH_SCHEME):
        return None
    pool, _, name = install_path[len(CEPH_SCHEME):].partition("/")
    return (pool, name) if pool and name and "/" not in name else None


#: what a line leaves out of the API's inventory: imgstore's status reason, and on the ref
#: the URLs (the export URL is imgstore's and useless to anyone reading the pool; the upload
#: URL is a credential) and CalculateImageHash's result
_NOT_IN_A_LINE: dict[str, Any] = {
    "status_reason": True,
    "backup_storage_refs": {"__all__": {"export_url", "upload_url", "hash_algorithm", "hash_value"}},
}


def inventory_line(image: Image, ref: ImageBackupStorageRef) -> str:
    """One line of ``bs_ceph_info.json``: the image's ZStack ImageInventory (the API's
    model), as Gson writes it (compact, nulls left out), with the ref of this storage only
    (ZStack's import checks the first ref's installPath). ``sha512Sum`` is kept: Gson
    ignores fields it does not know."""
    inventory = ImageInventory.model_validate(image)
    inventory.url = without_credentials(inventory.url)  # the pool's readers get no user:password@
    inventory.backup_storage_refs = [ImageBackupStorageRefInventory.model_validate(ref)]
    line = inventory.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=_NOT_IN_A_LINE)
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False)


def parse_metadata(data: bytes) -> dict[str, dict[str, Any]]:
    """The inventories of a ``bs_ceph_info.json``, by uuid, in file order (a uuid seen
    twice: the last line wins). Lines that are not an inventory with a uuid are skipped."""
    out: dict[str, dict[str, Any]] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        inventory = parse_line(line)
        if inventory is not None:
            out.pop(inventory["uuid"], None)
            out[inventory["uuid"]] = inventory
    return out


def parse_line(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        inventory = json.loads(line)
    except ValueError:
        log.warning("%s: skipping a line that is not JSON: %.120s", METADATA_OBJECT, line)
        return None
    if not isinstance(inventory, dict) or not UUID.fullmatch(str(inventory.get("uuid", ""))):
        log.warning("%s: skipping a line without an image uuid: %.120s", METADATA_OBJECT, line)
        return None
    return inventory


def line_names(line: str, uuid: str) -> bool:
    """Is this line about image ``uuid``? (ZStack's sed removes any line containing it.)"""
    inventory = parse_line(line) if uuid in line else None
    return (inventory is None and uuid in line) or (inventory is not None and inventory["uuid"] == uuid)


def join_lines(lines: Iterable[str]) -> bytes:
    text = "\n".join(lines)
    return (text + "\n").encode() if text else b""


def ref_on(image: Image, bs_uuid: str) -> ImageBackupStorageRef | None:
    return next((r for r in image.backup_storage_refs if r.backup_storage_uuid == bs_uuid), None)


def install_path_of(inventory: dict[str, Any], pool: str) -> str | None:
    """The installPath of the ref in this pool, else the first ref's (ZStack's choice)."""
    refs = inventory.get("backupStorageRefs")
    paths = [str(r.get("installPath") or "") for r in refs if isinstance(r, dict)] if isinstance(refs, list) else []
    pools = {p: where[0] for p in paths if (where := split_install_path(p)) is not None}
    return next((p for p, in_pool in pools.items() if in_pool == pool), next(iter(pools), None))
