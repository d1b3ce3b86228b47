"""Keeping ``bs_ceph_info.json`` in the storage's own pool current: a line added when an
image turns Ready on the storage, removed when its bits leave it, the whole object
rewritten on reconnect and after an import. Updates take the object's RADOS advisory
lock, so nodes do not lose each other's lines; a failure is logged, never raised.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import select

from imgstore import ceph
from imgstore.db.models import Image, ImageBackupStorageRef
from imgstore.errors import ApiError
from imgstore.services.images.metadata.lines import (
    METADATA_OBJECT,
    READY,
    inventory_line,
    join_lines,
    line_names,
    parse_metadata,
    ref_on,
)
from imgstore.services.images.metadata.pool import bits_exist, reason, storage_and_cluster
from imgstore.services.node.runtime import Runtime

log = logging.getLogger(__name__)


async def image_ready(rt: Runtime, image_uuid: str, bs_uuid: str) -> None:
    """The image turned Ready on the storage: add (or replace) its line. Never raises."""

    async def line() -> str | None:
        async with rt.db() as db:
            image = await db.get(Image, image_uuid, populate_existing=True)
            ref = ref_on(image, bs_uuid) if image is not None else None
            if image is None or ref is None or image.status != READY or ref.status != READY:
                return None
            return inventory_line(image, ref)

    await _update_line(rt, image_uuid, bs_uuid, "Ready", line)


async def image_expunged(rt: Runtime, image_uuid: str, bs_uuid: str) -> None:
    """The image's bits left the storage: remove its line. Never raises."""
    await _update_line(rt, image_uuid, bs_uuid, "expunged", None)


async def _update_line(rt: Runtime, image_uuid: str, bs_uuid: str, event: str,
                       line_of: Callable[[], Awaitable[str | None]] | None) -> None:
    """Under the object's lock, the image's line replaced by the one ``line_of`` gives
    (appended when the object has none; nothing done when it gives None), or removed
    when there is no ``line_of``. A failure is logged with ``event``. Never raises."""
    try:
        target = await storage_and_cluster(rt, bs_uuid)
        if target is None:
            return
        storage, cluster = target
        line = await line_of() if line_of is not None else None
        if line_of is not None and line is None:
            return
        pool = storage.pool_name or ""
        if line is None:  # a removal: no lock taken when the object does not name the image
            current = await ceph.read_object(cluster, pool, METADATA_OBJECT)
            if not current or image_uuid.encode() not in current:
                return
        async with ceph.object_lock(cluster, pool, METADATA_OBJECT):
            current = (await ceph.read_object(cluster, pool, METADATA_OBJECT)) or b""
            lines = current.decode("utf-8", errors="replace").splitlines()
            if line is not None and not any(line_names(x, image_uuid) for x in lines):
                glue = b"\n" if current and not current.endswith(b"\n") else b""
                await ceph.append_object(cluster, pool, METADATA_OBJECT, glue + join_lines([line]))
                return
            kept = [x for x in lines if x.strip() and not line_names(x, image_uuid)]
            await ceph.write_object(cluster, pool, METADATA_OBJECT,
                                    join_lines(kept if line is None else [*kept, line]))
    except (ApiError, ceph.CephError) as e:
        log.warning("%s of backup storage %s not updated for image %s (%s): %s",
                    METADATA_OBJECT, bs_uuid, image_uuid, event, reason(e))


async def rewrite(rt: Runtime, bs_uuid: str) -> int | None:
    """Write the whole object from the database: a line per image Ready on the storage.

    Lines of images the storage does not know (written by ZStack, say) stay while their
    RBD image exists, so a pool added without ``importImages`` keeps what ZStack recorded.
    Returns the number of lines written, None when it could not (logged). Never raises.
    """
    try:
        target = await storage_and_cluster(rt, bs_uuid)
        if target is None:
            return None
        storage, cluster = target
        pool = storage.pool_name or ""
        async with ceph.object_lock(cluster, pool, METADATA_OBJECT):
            known, lines = await _ready_lines(rt, bs_uuid)
            current = await ceph.read_object(cluster, pool, METADATA_OBJECT)
            foreign = parse_metadata(current or b"")
            for uuid, inventory in foreign.items():
                if uuid not in known and await bits_exist(cluster, inventory, pool):
                    lines.append(json.dumps(inventory, separators=(",", ":"), ensure_ascii=False))
            await ceph.write_object(cluster, pool, METADATA_OBJECT, join_lines(lines))
        return len(lines)
    except (ApiError, ceph.CephError) as e:
        log.warning("%s of backup storage %s not rewritten: %s", METADATA_OBJECT, bs_uuid, reason(e))
        return None


async def _ready_lines(rt: Runtime, bs_uuid: str) -> tuple[set[str], list[str]]:
    """Uuids of every image with a ref on the storage, and the lines of the Ready ones."""
    async with rt.db() as db:
        rows = await db.scalars(
            select(Image).join(ImageBackupStorageRef, ImageBackupStorageRef.image_uuid == Image.uuid)
            .where(ImageBackupStorageRef.backup_storage_uuid == bs_uuid)
            .order_by(Image.create_date, Image.uuid)
        )
        known, lines = set(), []
        for image in rows:
            known.add(image.uuid)
            ref = ref_on(image, bs_uuid)
            if ref is not None and image.status == READY and ref.status == READY:
                lines.append(inventory_line(image, ref))
    return known, lines


async def on_storage_reconnected(rt: Runtime, bs_uuid: str) -> None:
    """A Reconnect succeeded: write the object afresh, as ZStack's reconnect does."""
    await rewrite(rt, bs_uuid)
