"""What ZStack keeps about an image as system tags: its boot mode, its guest agent, its
security level (SetImageBootMode, SetImageQga / GetImageQga, SetImageSecurityLevel).

ZStack writes these as system tags on the ImageVO (``ImageSystemTags``: ``bootMode::{mode}``
created with ``recreate``, i.e. replacing the old one; ``qemuga`` present or absent), so
QuerySystemTag and ``q=__systemTag__=bootMode::UEFI`` see them; imgstore keeps them the same
way. Each change locks the image's row, so two changes of one image cannot interleave.
"""
from __future__ import annotations

from sqlalchemy import delete, select

from imgstore.db.models import Image, SystemTag
from imgstore.errors import invalid_argument, not_found
from imgstore.services.catalog import tags
from imgstore.services.images.manage import RESOURCE_TYPE
from imgstore.services.node.locking import locked_row
from imgstore.services.node.runtime import Runtime

BOOT_MODES = ("Legacy", "UEFI", "UEFI_WITH_CSM")
BOOT_MODE = "bootMode::"  # ImageSystemTags.BOOT_MODE
QGA = "qemuga"  # ImageSystemTags.IMAGE_INJECT_QEMUGA
SECURITY_LEVEL = "securityLevel::"


async def set_boot_mode(rt: Runtime, uuid: str, mode: str) -> None:
    """SetImageBootMode; Legacy on an aarch64 image is refused, as ZStack's interceptor does."""
    await _set(rt, uuid, BOOT_MODE, f"{BOOT_MODE}{mode}", refuse_legacy=mode == "Legacy")


async def set_security_level(rt: Runtime, uuid: str, level: str | None) -> None:
    """SetImageSecurityLevel: the level replaces the last one; none given removes it."""
    await _set(rt, uuid, SECURITY_LEVEL, f"{SECURITY_LEVEL}{level}" if level else None)


async def set_qga(rt: Runtime, uuid: str, enable: bool) -> None:
    """SetImageQga: the ``qemuga`` tag, there or not."""
    await _set(rt, uuid, QGA, QGA if enable else None, exact=True)


async def get_qga(rt: Runtime, uuid: str) -> bool:
    """GetImageQga: whether the image has the ``qemuga`` tag."""
    async with rt.db() as db:
        if await db.get(Image, uuid) is None:
            raise not_found(RESOURCE_TYPE, uuid)
        found = await db.scalar(select(SystemTag.uuid).where(SystemTag.resource_uuid == uuid,
                                                             SystemTag.tag == QGA))
    return found is not None


async def _set(rt: Runtime, uuid: str, prefix: str, tag: str | None, *, exact: bool = False,
               refuse_legacy: bool = False) -> None:
    """Replace the image's tags starting with ``prefix`` (equal to it when ``exact``) by
    ``tag`` (none when None)."""
    async with locked_row(rt, Image, uuid) as (db, image):
        if image is None:
            raise not_found(RESOURCE_TYPE, uuid)
        if refuse_legacy and image.architecture == "aarch64":
            raise invalid_argument("The aarch64 architecture does not support legacy.")
        same = SystemTag.tag == prefix if exact else SystemTag.tag.startswith(prefix, autoescape=True)
        await db.execute(delete(SystemTag).where(SystemTag.resource_uuid == uuid, same))
        if tag is not None:
            db.add_all(tags.new_tags(uuid, RESOURCE_TYPE, [tag], []))
        await db.commit()
