"""ZStack's image metadata object ``bs_ceph_info.json``: adopt a pool's images, keep it current.

ZStack writes the inventory of every Ready image of a Ceph backup storage into the RADOS
object ``bs_ceph_info.json``, one ImageInventory JSON per line (zstack-api.md 7.5), and
``importImages`` on AddCephBackupStorage adopts a pool from it (3.4). imgstore does both:

* :func:`import_images` (run by AddCephBackupStorage with ``importImages=true``, in the
  background once the add answered, as in ZStack) reads the object from the pool ZStack
  reads it from, ``bak-t-<last '-' token of poolName>`` (ZStack's quirk), and from the
  storage's own pool, where imgstore writes it. Each line whose RBD image exists becomes
  a Ready image with its name, format, sizes and md5 (an image row of that uuid is
  revived). Only those: an RBD image the metadata does not name (someone else's, or
  planted) is not adopted, unless the add carried the system tag ``importImages::all``;
  then every RBD image of the pool named by an image uuid is adopted too, as a raw image
  named by its uuid.
* :func:`image_ready`, :func:`image_expunged` and :func:`rewrite` keep the object in the
  storage's own pool current: a line is added when an image turns Ready on the storage,
  removed when its bits are expunged, and the whole object is rewritten on reconnect
  and after an import. Lines are ZStack's format (with ``backupStorageRefs``), so ZStack
  could adopt a pool written by imgstore.

The storage's key is ``profile rbd pool=<its pool>``: it may read and write objects of
its own pool only. When ``bak-t-<token>`` is another pool, reading it is denied (or the
pool does not exist): that source is skipped with a log line, and only the storage's own
pool is looked at.

Updates of the object take its RADOS advisory lock, so nodes do not lose each other's
lines. Failures here never fail the API that triggered them: they are logged.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from imgstore import ceph
from imgstore.wire.dates import zstack_date
from imgstore.db.models import CephBackupStorage, Image, ImageBackupStorageRef
from imgstore.errors import ApiError
from imgstore.wire.enums import ImageStatus, MediaType, State
from imgstore.wire.masking import without_credentials
from imgstore.services.catalog import tags
from imgstore.services.node.locking import locked_row
from imgstore.services.node.runtime import Runtime

log = logging.getLogger(__name__)

METADATA_OBJECT = "bs_ceph_info.json"
READY, DOWNLOADING = ImageStatus.READY, ImageStatus.DOWNLOADING
_UUID = re.compile(r"^[0-9a-f]{32}$")
_CEPH_SCHEME = "ceph://"
# AddCephBackupStorage(importImages=true) with this system tag adopts, besides the images
# the metadata names, every RBD image of the pool named by an image uuid (issue 13 point 10:
# without it, an image someone else put in the pool is not taken for one of ours)
IMPORT_ALL = "importImages::all"


def zstack_metadata_pool(pool_name: str) -> str:
    """Where ZStack's agent reads ``bs_ceph_info.json``: ``bak-t-<last '-' token>``."""
    return f"bak-t-{pool_name.rsplit('-', 1)[-1]}"


def split_install_path(install_path: str) -> tuple[str, str] | None:
    """``ceph://<pool>/<image>`` → ``(pool, image)``; None for anything else."""
    if not install_path.startswith(_CEPH_SCHEME):
        return None
    pool, _, name = install_path[len(_CEPH_SCHEME):].partition("/")
    return (pool, name) if pool and name and "/" not in name else None


# ---------------------------------------------------------------- the file format


def inventory_line(image: Image, ref: ImageBackupStorageRef) -> str:
    """One line of ``bs_ceph_info.json``: the image's ZStack ImageInventory, as Gson
    writes it (compact, nulls left out), with the ref of this storage only (ZStack's
    import checks the first ref's installPath). The export URL is not written: it is
    imgstore's and useless to anyone reading the pool."""
    inventory = {
        "uuid": image.uuid,
        "name": image.name,
        "description": image.description,
        "state": image.state,
        "status": image.status,
        "size": image.size,
        "actualSize": image.actual_size,
        "md5Sum": image.md5_sum,
        "url": without_credentials(image.url),  # the pool's readers get no user:password@
        "mediaType": image.media_type,
        "guestOsType": image.guest_os_type,
        "type": image.type,
        "platform": image.platform,
        "architecture": image.architecture,
        "format": image.format,
        "system": image.system,
        "virtio": image.virtio,
        "createDate": zstack_date(image.create_date),
        "lastOpDate": zstack_date(image.last_op_date),
        "backupStorageRefs": [{
            "id": ref.id,
            "imageUuid": ref.image_uuid,
            "backupStorageUuid": ref.backup_storage_uuid,
            "installPath": ref.install_path,
            "status": ref.status,
            "exportMd5Sum": ref.export_md5_sum,
            "createDate": zstack_date(ref.create_date),
            "lastOpDate": zstack_date(ref.last_op_date),
        }],
        "sha512Sum": image.sha512_sum,  # imgstore's; Gson ignores fields it does not know
    }
    return json.dumps(_without_nulls(inventory), separators=(",", ":"), ensure_ascii=False)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def parse_metadata(data: bytes) -> dict[str, dict[str, Any]]:
    """The inventories of a ``bs_ceph_info.json``, by uuid, in file order (a uuid seen
    twice: the last line wins). Lines that are not an inventory with a uuid are skipped."""
    out: dict[str, dict[str, Any]] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        inventory = _parse_line(line)
        if inventory is not None:
            out.pop(inventory["uuid"], None)
            out[inventory["uuid"]] = inventory
    return out


def _parse_line(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        inventory = json.loads(line)
    except ValueError:
        log.warning("%s: skipping a line that is not JSON: %.120s", METADATA_OBJECT, line)
        return None
    if not isinstance(inventory, dict) or not _UUID.fullmatch(str(inventory.get("uuid", ""))):
        log.warning("%s: skipping a line without an image uuid: %.120s", METADATA_OBJECT, line)
        return None
    return inventory


def _line_names(line: str, uuid: str) -> bool:
    """Is this line about image ``uuid``? (ZStack's sed removes any line containing it.)"""
    inventory = _parse_line(line) if uuid in line else None
    return inventory is None and uuid in line or (inventory is not None and inventory["uuid"] == uuid)


# ---------------------------------------------------------------- keeping it current


async def image_ready(rt: Runtime, image_uuid: str, bs_uuid: str) -> None:
    """The image turned Ready on the storage: add (or replace) its line. Never raises."""
    try:
        target = await _target(rt, bs_uuid)
        if target is None:
            return
        storage, cluster = target
        async with rt.db() as db:
            image = await db.get(Image, image_uuid, populate_existing=True)
            ref = _ref_on(image, bs_uuid) if image is not None else None
            if image is None or ref is None or image.status != READY or ref.status != READY:
                return
            line = inventory_line(image, ref)
        pool = storage.pool_name or ""
        async with ceph.object_lock(cluster, pool, METADATA_OBJECT):
            current = (await ceph.read_object(cluster, pool, METADATA_OBJECT)) or b""
            lines = current.decode("utf-8", errors="replace").splitlines()
            if any(_line_names(x, image_uuid) for x in lines):
                kept = [x for x in lines if x.strip() and not _line_names(x, image_uuid)]
                await ceph.write_object(cluster, pool, METADATA_OBJECT, _join([*kept, line]))
            else:
                glue = b"\n" if current and not current.endswith(b"\n") else b""
                await ceph.append_object(cluster, pool, METADATA_OBJECT, glue + _join([line]))
    except (ApiError, ceph.CephError) as e:
        log.warning("%s of backup storage %s not updated for image %s (Ready): %s",
                    METADATA_OBJECT, bs_uuid, image_uuid, _reason(e))


async def image_expunged(rt: Runtime, image_uuid: str, bs_uuid: str) -> None:
    """The image's bits left the storage: remove its line. Never raises."""
    try:
        target = await _target(rt, bs_uuid)
        if target is None:
            return
        storage, cluster = target
        pool = storage.pool_name or ""
        current = await ceph.read_object(cluster, pool, METADATA_OBJECT)
        if not current or image_uuid.encode() not in current:
            return
        async with ceph.object_lock(cluster, pool, METADATA_OBJECT):
            current = (await ceph.read_object(cluster, pool, METADATA_OBJECT)) or b""
            lines = current.decode("utf-8", errors="replace").splitlines()
            kept = [x for x in lines if x.strip() and not _line_names(x, image_uuid)]
            await ceph.write_object(cluster, pool, METADATA_OBJECT, _join(kept))
    except (ApiError, ceph.CephError) as e:
        log.warning("%s of backup storage %s not updated for image %s (expunged): %s",
                    METADATA_OBJECT, bs_uuid, image_uuid, _reason(e))


async def rewrite(rt: Runtime, bs_uuid: str) -> int | None:
    """Write the whole object from the database: a line per image Ready on the storage.

    Lines of images the storage does not know (written by ZStack, say) stay while their
    RBD image exists, so a pool added without ``importImages`` keeps what ZStack recorded.
    Returns the number of lines written, None when it could not (logged). Never raises.
    """
    try:
        target = await _target(rt, bs_uuid)
        if target is None:
            return None
        storage, cluster = target
        pool = storage.pool_name or ""
        async with ceph.object_lock(cluster, pool, METADATA_OBJECT):
            known, lines = await _ready_lines(rt, bs_uuid)
            current = await ceph.read_object(cluster, pool, METADATA_OBJECT)
            foreign = parse_metadata(current or b"")
            for uuid, inventory in foreign.items():
                if uuid not in known and await _bits_exist(cluster, inventory, pool):
                    lines.append(json.dumps(inventory, separators=(",", ":"), ensure_ascii=False))
            await ceph.write_object(cluster, pool, METADATA_OBJECT, _join(lines))
        return len(lines)
    except (ApiError, ceph.CephError) as e:
        log.warning("%s of backup storage %s not rewritten: %s", METADATA_OBJECT, bs_uuid, _reason(e))
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
            ref = _ref_on(image, bs_uuid)
            if ref is not None and image.status == READY and ref.status == READY:
                lines.append(inventory_line(image, ref))
    return known, lines


def _ref_on(image: Image, bs_uuid: str) -> ImageBackupStorageRef | None:
    return next((r for r in image.backup_storage_refs if r.backup_storage_uuid == bs_uuid), None)


def _join(lines: Iterable[str]) -> bytes:
    text = "\n".join(lines)
    return (text + "\n").encode() if text else b""


# ---------------------------------------------------------------- importImages


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


async def on_storage_reconnected(rt: Runtime, bs_uuid: str) -> None:
    """A Reconnect succeeded: write the object afresh, as ZStack's reconnect does."""
    await rewrite(rt, bs_uuid)


async def _import_logged(rt: Runtime, bs_uuid: str) -> list[str]:
    try:
        return await import_images(rt, bs_uuid)
    except (ApiError, ceph.CephError) as e:
        log.warning("importing the images of backup storage %s failed: %s", bs_uuid, _reason(e))
    except Exception:
        log.exception("importing the images of backup storage %s failed unexpectedly", bs_uuid)
    return []


async def import_images(rt: Runtime, bs_uuid: str) -> list[str]:
    """Adopt the images already in the storage's pool; returns the uuids adopted."""
    target = await _target(rt, bs_uuid)
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
        return IMPORT_ALL in await tags.tags_of(db, bs_uuid, "system")


async def _log_unnamed(cluster: ceph.Cluster, pool: str, named: set[str]) -> None:
    """Say which RBD images were left alone, and how to adopt them."""
    try:
        names = await ceph.list_images(cluster, pool)
    except ceph.CephError:
        return
    unnamed = [n for n in names if _UUID.fullmatch(n) and n not in named]
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
        path = _install_path_of(inventory, pool)
        if path is None:
            log.info("import: image %s has no ceph:// installPath in %s: skipped", uuid, METADATA_OBJECT)
            continue
        size = await _image_size(cluster, path)
        if size is not None:
            found.append(Found(uuid, path, size, inventory))
    return found


def _install_path_of(inventory: dict[str, Any], pool: str) -> str | None:
    """The installPath of the ref in this pool, else the first ref's (ZStack's choice)."""
    refs = inventory.get("backupStorageRefs")
    paths = [str(r.get("installPath") or "") for r in refs if isinstance(r, dict)] if isinstance(refs, list) else []
    paths = [p for p in paths if split_install_path(p)]
    return next((p for p in paths if split_install_path(p)[0] == pool), paths[0] if paths else None)  # type: ignore[index]


async def _image_size(cluster: ceph.Cluster, install_path: str) -> int | None:
    where = split_install_path(install_path)
    if where is None:
        return None
    try:
        return await ceph.image_size(cluster, *where)
    except ceph.ImageNotFound:
        log.info("import: %s has no RBD image: skipped", install_path)
    except (ceph.PoolNotFound, ceph.CephPermissionDenied) as e:
        log.info("import: %s cannot be read with the storage's key: skipped (%s)", install_path, e)
    return None


async def _bits_exist(cluster: ceph.Cluster, inventory: dict[str, Any], pool: str) -> bool:
    path = _install_path_of(inventory, pool)
    if path is None:
        return False
    try:
        return await _image_size(cluster, path) is not None
    except ceph.CephError:  # cannot tell now: keep the line
        return True


async def _found_by_name(cluster: ceph.Cluster, pool: str) -> list[Found]:
    """No metadata: the RBD images of the pool named by an image uuid."""
    found = []
    for name in await ceph.list_images(cluster, pool):
        if not _UUID.fullmatch(name):
            continue
        try:
            size = await ceph.image_size(cluster, pool, name)
        except ceph.ImageNotFound:  # removed meanwhile
            continue
        found.append(Found(name, f"{_CEPH_SCHEME}{pool}/{name}", size))
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
        ref = _ref_on(image, bs_uuid)
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
    created = _zstack_date(inv.get("createDate"))
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


def _zstack_date(value: Any) -> datetime | None:
    """A Gson date (``Jun 7, 2017 9:20:17 PM``, local time) as naive UTC; None if not one."""
    if not isinstance(value, str):
        return None
    try:
        local = datetime.strptime(value.replace("\u202f", " "), "%b %d, %Y %I:%M:%S %p")
    except ValueError:
        return None
    return local.astimezone(timezone.utc).replace(tzinfo=None)


# ---------------------------------------------------------------- plumbing


async def _target(rt: Runtime, bs_uuid: str) -> tuple[CephBackupStorage, ceph.Cluster] | None:
    """The Ceph storage and its handle; None when it is gone or not Ceph."""
    async with rt.db() as db:
        storage = await db.get(CephBackupStorage, bs_uuid, populate_existing=True)
    if storage is None or not storage.pool_name:
        return None
    return storage, await rt.clusters.get(storage)


def _reason(e: Exception) -> str:
    return e.details if isinstance(e, ApiError) else str(e)


__all__ = [
    "METADATA_OBJECT",
    "image_expunged",
    "image_ready",
    "import_images",
    "import_in_background",
    "inventory_line",
    "on_storage_added",
    "on_storage_reconnected",
    "parse_metadata",
    "rewrite",
    "zstack_metadata_pool",
]
