"""importImages: adopting the images already in a storage's pool.

Run by AddCephBackupStorage with ``importImages=true``, in the background once the add
answered, as in ZStack. It reads ``bs_ceph_info.json`` from the pool ZStack reads it
from, ``bak-t-<last '-' token of poolName>`` (ZStack's quirk), and from the storage's
own pool, where imgstore writes it. Each Ready line whose RBD image exists becomes a
Ready image (an image row of that uuid is revived). An RBD image the metadata does not
name is adopted only with the system tag ``importImages::all``, as a raw image named by
its uuid.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from imgstore import ceph
from imgstore.db.models import Image, ImageBackupStorageRef
from imgstore.errors import ApiError
from imgstore.services.catalog import tags
from imgstore.services.images.metadata.follow import rewrite
from imgstore.services.images.metadata.lines import (
    CEPH_SCHEME,
    DOWNLOADING,
    METADATA_OBJECT,
    READY,
    UUID,
    install_path_of,
    parse_metadata,
    ref_on,
    zstack_metadata_pool,
)
from imgstore.services.images.metadata.pool import image_size, reason, storage_and_cluster
from imgstore.services.node.locking import locked_row
from imgstore.services.node.runtime import Runtime
from imgstore.wire.dates import parse_zstack_date
from imgstore.wire.enums import MediaType, State
from imgstore.wire.masking import without_credentials

log = logging.getLogger(__name__)

# AddCephBackupStorage(importImages=true) with this system tag adopts, besides the images
# the metadata names, every RBD image of the pool named by an image uuid (without it, an
# image someone else put in the pool is not taken for one of ours)
IMPORT_ALL = "importImages::all"


@dataclass
class Found:
    """An image found in the pool: where its bits are, and its ZStack inventory if any."""

    uuid: str
    install_path: str
    size: int
    inventory: dict[str, Any] | None = None


def import_in_background(rt: Runtime, bs_uuid: str) -> asyncio.Task[list[str]]:
    """Start :func:`import_images` without waiting for it (AddCephBackupStorage has
    answered by then, as in ZStack); its failure is logged, never the add's."""
    return rt.node.imports.start(bs_uuid, _import_logged(rt, bs_uuid), f"import-images-{bs_uuid}")


async def on_storage_added(rt: Runtime, bs_uuid: str, import_images: bool) -> None:
    """A storage was added (services/node/events.py): adopt its pool's images when asked."""
    if import_images:
        import_in_background(rt, bs_uuid)


async def _import_logged(rt: Runtime, bs_uuid: str) -> list[str]:
    try:
        return await import_images(rt, bs_uuid)
    except (ApiError, ceph.CephError) as e:
        log.warning("importing the images of backup storage %s failed: %s", bs_uuid, reason(e))
    except Exception:
        log.exception("importing the images of backup storage %s failed unexpectedly", bs_uuid)
    return []


async def import_images(rt: Runtime, bs_uuid: str) -> list[str]:
    """Adopt the images already in the storage's pool; returns the uuids adopted."""
    target = await storage_and_cluster(rt, bs_uuid)
    if target is None:
        return []
    storage, cluster = target
    pool = storage.pool_name or ""
    inventories = await _read_sources(cluster, pool)
    found = await _found_in_metadata(cluster, pool, inventories) if inventories else []
    source = METADATA_OBJECT
    if await _takes_all(rt, bs_uuid):
        named = {f.uuid for f in found}
        found += [f for f in await _found_by_name(cluster, pool) if f.uuid not in named]
        source += f" and every RBD image named by an image uuid ({IMPORT_ALL})"
    else:
        await _log_unnamed(cluster, pool, {f.uuid for f in found})
    adopted = [f.uuid for f in found if await _adopt(rt, bs_uuid, f)]
    log.info("backup storage %s imported %d image(s) of pool %s from %s: %s",
             bs_uuid, len(adopted), pool, source, ", ".join(adopted) or "none")
    await rewrite(rt, bs_uuid)
    return adopted


async def _takes_all(rt: Runtime, bs_uuid: str) -> bool:
    """Was the storage added with the system tag ``IMPORT_ALL``?"""
    async with rt.db() as db:
        return IMPORT_ALL in await tags.tags_of(db, bs_uuid, tags.SYSTEM)


async def _log_unnamed(cluster: ceph.Cluster, pool: str, named: set[str]) -> None:
    """Say which RBD images were left alone, and how to adopt them."""
    try:
        names = await ceph.list_images(cluster, pool)
    except ceph.CephError:
        return
    unnamed = [n for n in names if UUID.fullmatch(n) and n not in named]
    if unnamed:
        log.warning("import: %d RBD image(s) of pool %s are not named by %s and were not adopted "
                    "(add the storage with systemTag %s to adopt them): %s",
                    len(unnamed), pool, METADATA_OBJECT, IMPORT_ALL, ", ".join(unnamed[:20]))


async def _read_sources(cluster: ceph.Cluster, pool: str) -> dict[str, dict[str, Any]]:
    """The inventories of ``bs_ceph_info.json`` in the storage's pool and in ZStack's
    ``bak-t-<token>`` (the storage's own lines win)."""
    out: dict[str, dict[str, Any]] = {}
    for source in dict.fromkeys([zstack_metadata_pool(pool), pool]):
        try:
            data = await ceph.read_object(cluster, source, METADATA_OBJECT)
        except ceph.PoolNotFound:
            log.info("no pool %s in the cluster: no %s to import there", source, METADATA_OBJECT)
            continue
        except ceph.CephPermissionDenied:
            log.warning("cannot read %s of pool %s: the storage's key may use pool %s only; "
                        "skipped (add the storage with poolName=%s to import it)",
                        METADATA_OBJECT, source, pool, source)
            continue
        if data:
            out.update(parse_metadata(data))
    return out


async def _found_in_metadata(cluster: ceph.Cluster, pool: str,
                             inventories: dict[str, dict[str, Any]]) -> list[Found]:
    """The Ready inventories whose RBD image exists (ZStack keeps only those)."""
    found = []
    for uuid, inventory in inventories.items():
        if inventory.get("status") != READY:
            log.info("import: image %s is %s in %s, not Ready: skipped", uuid, inventory.get("status"), METADATA_OBJECT)
            continue
        path = install_path_of(inventory, pool)
        if path is None:
            log.info("import: image %s has no ceph:// installPath in %s: skipped", uuid, METADATA_OBJECT)
            continue
        size = await image_size(cluster, path)
        if size is not None:
            found.append(Found(uuid, path, size, inventory))
    return found


async def _found_by_name(cluster: ceph.Cluster, pool: str) -> list[Found]:
    """No metadata: the RBD images of the pool named by an image uuid."""
    found = []
    for name in await ceph.list_images(cluster, pool):
        if not UUID.fullmatch(name):
            continue
        try:
            size = await ceph.image_size(cluster, pool, name)
        except ceph.ImageNotFound:  # removed meanwhile
            continue
        found.append(Found(name, f"{CEPH_SCHEME}{pool}/{name}", size))
    return found


async def _adopt(rt: Runtime, bs_uuid: str, found: Found) -> bool:
    """The image Ready with a ref on the storage: a new row, or the row of that uuid
    revived (ZStack revives a deleted image). An image being added now is left alone."""
    async with locked_row(rt, Image, found.uuid) as (db, image):
        if image is None:
            image = _new_image(found)
            db.add(image)
        elif image.status == DOWNLOADING:
            log.warning("import: image %s is being added right now: not adopted", found.uuid)
            return False
        else:
            image.status, image.status_reason, image.deleted_date = READY, None, None
        ref = ref_on(image, bs_uuid)
        if ref is None:
            ref = ImageBackupStorageRef(image_uuid=found.uuid, backup_storage_uuid=bs_uuid)
            image.backup_storage_refs.append(ref)
        ref.install_path, ref.status = found.install_path, READY
        ref.export_url = ref.export_token = None
        for r in (found.inventory or {}).get("backupStorageRefs") or []:
            if isinstance(r, dict) and r.get("installPath") == found.install_path and r.get("exportMd5Sum"):
                ref.export_md5_sum = _text(r, "exportMd5Sum", 255)
        await db.commit()
    return True


def _new_image(found: Found) -> Image:
    inv = found.inventory or {}
    image = Image(
        uuid=found.uuid,
        name=_text(inv, "name", 255) or found.uuid,
        description=_text(inv, "description", 2048),
        state=inv.get("state") if inv.get("state") in tuple(State) else State.ENABLED,
        status=READY,
        size=found.size,
        actual_size=_int(inv, "actualSize") or found.size,
        md5_sum=_text(inv, "md5Sum", 255),
        sha512_sum=_text(inv, "sha512Sum", 128),
        url=without_credentials(_text(inv, "url", 2048) or found.install_path),
        media_type=_text(inv, "mediaType", 64) or MediaType.ROOT_VOLUME_TEMPLATE,
        guest_os_type=_text(inv, "guestOsType", 255),
        type=_text(inv, "type", 64) or "zstack",
        platform=_text(inv, "platform", 64),
        architecture=_text(inv, "architecture", 32),
        format=_text(inv, "format", 32) or "raw",
        system=inv.get("system") is True,
        virtio=inv.get("virtio") is not False,
        backup_storage_refs=[],
    )
    created = parse_zstack_date(inv.get("createDate"))
    if created is not None:
        image.create_date = created
    return image


def _text(inv: dict[str, Any], key: str, limit: int) -> str | None:
    value = inv.get(key)
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)[:limit]


def _int(inv: dict[str, Any], key: str) -> int | None:
    value = inv.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

