"""System and user tags on resources, and the system tags imgstore understands."""
from __future__ import annotations

import ipaddress

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore.crypto import new_uuid
from imgstore.db.models import Tag
from imgstore.errors import invalid_argument

SYSTEM, USER = "system", "user"
DATA_NETWORK_CIDR = "backupStorage::data::network::cidr::"
PREDEFINED_POOL = "ceph::predefinedPool"
MAX_TAG_LENGTH = 2048


def check_tags(system_tags: list[str], user_tags: list[str]) -> None:
    """ZStack's tag checks for backup storages: lengths, and at most one canonical cidr."""
    for tag in [*system_tags, *user_tags]:
        if not tag or not tag.strip():
            raise invalid_argument("a tag cannot be an empty string")
        if len(tag) > MAX_TAG_LENGTH:
            raise invalid_argument(f"tag[{tag[:64]}...] is longer than {MAX_TAG_LENGTH} characters")
    cidrs = [t[len(DATA_NETWORK_CIDR):] for t in system_tags if t.startswith(DATA_NETWORK_CIDR)]
    if len(cidrs) > 1:
        raise invalid_argument(
            f"only one system tag {DATA_NETWORK_CIDR}{{cidr}} is allowed, but {len(cidrs)} were given"
        )
    for cidr in cidrs:
        try:
            canonical = str(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise invalid_argument(f"[{cidr}] is not a valid cidr") from None
        if canonical != cidr:
            raise invalid_argument(f"[{cidr}] is not a standard cidr, do you mean [{canonical}]?")


def new_tags(
    resource_uuid: str, resource_type: str, system_tags: list[str], user_tags: list[str]
) -> list[Tag]:
    return [
        Tag(uuid=new_uuid(), resource_uuid=resource_uuid, resource_type=resource_type, tag=t, kind=kind)
        for kind, tags in ((SYSTEM, system_tags), (USER, user_tags))
        for t in dict.fromkeys(tags)
    ]


async def tags_of(db: AsyncSession, resource_uuid: str, kind: str) -> list[str]:
    rows = await db.scalars(
        select(Tag.tag).where(Tag.resource_uuid == resource_uuid, Tag.kind == kind).order_by(Tag.create_date)
    )
    return list(rows)


async def delete_tags_of(db: AsyncSession, resource_uuid: str) -> None:
    await db.execute(delete(Tag).where(Tag.resource_uuid == resource_uuid))
