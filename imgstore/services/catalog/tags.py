"""System and user tags on resources, and the system tags imgstore understands."""
from __future__ import annotations

import ipaddress
from datetime import datetime

from sqlalchemy import Select, case, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore.crypto import new_uuid
from imgstore.db import query as q
from imgstore.db.models import BackupStorage, CephBackupStorage, SystemTag, Tag, UserTag, Zone
from imgstore.errors import OPERATION_ERROR, ApiError, invalid_argument, not_found
from imgstore.services.catalog import queries
from imgstore.services.node.locking import locked_row
from imgstore.services.node.runtime import Runtime
from imgstore.wire.query import QuerySpec

SYSTEM, USER = "system", "user"
DATA_NETWORK_CIDR = "backupStorage::data::network::cidr::"
PREDEFINED_POOL = "ceph::predefinedPool"
MAX_TAG_LENGTH = 2048
# facts imgstore records itself: created inherent, never by hand, never removed by hand
INHERENT_SYSTEM_TAGS = frozenset({PREDEFINED_POOL})
# ZStack's resourceType of a tag (the VO class name) → the table the resource lives in;
# a resource type imgstore serves is an entry here
RESOURCE_TYPES: dict[str, type] = {
    "BackupStorageVO": BackupStorage,
    "CephBackupStorageVO": CephBackupStorage,
    "ZoneVO": Zone,
}


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
    made: list[Tag] = [
        SystemTag(uuid=new_uuid(), resource_uuid=resource_uuid, resource_type=resource_type, tag=t,
                  inherent=t in INHERENT_SYSTEM_TAGS)
        for t in dict.fromkeys(system_tags)
    ]
    made += [
        UserTag(uuid=new_uuid(), resource_uuid=resource_uuid, resource_type=resource_type, tag=t)
        for t in dict.fromkeys(user_tags)
    ]
    return made


async def tags_of(db: AsyncSession, resource_uuid: str, kind: str) -> list[str]:
    rows = await db.scalars(
        select(Tag.tag).where(Tag.resource_uuid == resource_uuid, Tag.kind == kind).order_by(Tag.create_date)
    )
    return list(rows)


async def delete_tags_of(db: AsyncSession, resource_uuid: str) -> None:
    await db.execute(delete(Tag).where(Tag.resource_uuid == resource_uuid))


# ---------------------------------------------------------------- the tag APIs


def tag_rows(kind: str) -> Select[str, str]:
    """``(resource uuid, tag)`` rows of ``"systemTag"`` or ``"userTag"``: what
    ``q=__systemTag__=...`` / ``q=__userTag__=...`` match on any resource's query."""
    entity = SystemTag if kind == "systemTag" else UserTag
    return select(entity.resource_uuid, entity.tag)


def _tag_query(entity: type[Tag], name: str) -> q.Queryable:
    fields: dict[str, q.Field | q.ListField] = {
        "uuid": q.Field(entity.uuid),
        "resourceUuid": q.Field(entity.resource_uuid),
        "resourceType": q.Field(entity.resource_type),
        "tag": q.Field(entity.tag),
        # an expression, not a constant: PostgreSQL refuses ORDER BY '<constant>'
        "type": q.Field(case((entity.kind == SYSTEM, "System"), else_="User")),
        "createDate": q.Field(entity.create_date, datetime),
        "lastOpDate": q.Field(entity.last_op_date, datetime),
    }
    if entity is SystemTag:
        fields["inherent"] = q.Field(entity.inherent, bool)
    return q.Queryable(entity=entity, name=name, fields=fields, default_sort="createDate")


SYSTEM_TAG_QUERY = _tag_query(SystemTag, "SystemTagInventory")
USER_TAG_QUERY = _tag_query(UserTag, "UserTagInventory")


async def query(rt: Runtime, spec: QuerySpec, kind: str) -> tuple[list[Tag], int | None]:
    """QuerySystemTag / QueryUserTag: the page and, when asked, the total."""
    queryable = SYSTEM_TAG_QUERY if kind == SYSTEM else USER_TAG_QUERY
    return await queries.run(rt, queryable, spec)


def _entity_of(resource_type: str) -> type:
    entity = RESOURCE_TYPES.get(resource_type)
    if entity is None:
        raise invalid_argument(
            f"no resource type[{resource_type}] found in tag system; "
            f"valid resource types are [{', '.join(RESOURCE_TYPES)}]"
        )
    return entity


def _check_tag_text(kind: str, tag: str) -> None:
    if kind == SYSTEM:
        check_tags([tag], [])
        if tag in INHERENT_SYSTEM_TAGS:
            raise invalid_argument(f"system tag[{tag}] is recorded by imgstore and cannot be set by hand")
    else:
        check_tags([], [tag])


def _is_inherent(row: Tag) -> bool:
    return row.kind == SYSTEM and (row.inherent or row.tag in INHERENT_SYSTEM_TAGS)


async def _check_one_cidr(db: AsyncSession, resource_uuid: str, tag: str, tag_uuid: str | None = None) -> None:
    """At most one data-network cidr per resource, counting the tags it already has."""
    if not tag.startswith(DATA_NETWORK_CIDR):
        return
    other = await db.scalar(
        select(SystemTag.tag).where(
            SystemTag.resource_uuid == resource_uuid,
            SystemTag.tag.startswith(DATA_NETWORK_CIDR, autoescape=True),
            SystemTag.uuid != (tag_uuid or ""),
        )
    )
    if other is not None:
        raise invalid_argument(
            f"only one system tag {DATA_NETWORK_CIDR}{{cidr}} is allowed on a resource, and "
            f"resource[uuid:{resource_uuid}] already has [{other}]"
        )


async def create(rt: Runtime, kind: str, resource_type: str, resource_uuid: str, tag: str) -> Tag:
    """CreateSystemTag / CreateUserTag on an existing resource.

    The resource's row is locked meanwhile, so two creates cannot both pass the checks.
    A user tag the resource already has is SYS.1006 "Duplicated Tag[...]" as in ZStack; a
    system tag it already has is answered with the existing tag (ZStack answers no
    inventory at all).
    """
    entity = _entity_of(resource_type)
    _check_tag_text(kind, tag)
    async with locked_row(rt, entity, resource_uuid) as (db, resource):
        if resource is None:
            raise not_found(resource_type, resource_uuid, field="resourceUuid")
        cls = SystemTag if kind == SYSTEM else UserTag
        existing = await db.scalar(select(cls).where(cls.resource_uuid == resource_uuid, cls.tag == tag))
        if existing is not None:
            if kind == SYSTEM:
                return existing
            raise ApiError(
                OPERATION_ERROR,
                f"Duplicated Tag[tag:{tag}, type:User, resourceType:{resource_type}, "
                f"resourceUuid:{resource_uuid}]",
            )
        if kind == SYSTEM:
            await _check_one_cidr(db, resource_uuid, tag)
        [row] = new_tags(resource_uuid, resource_type, *(([tag], []) if kind == SYSTEM else ([], [tag])))
        db.add(row)
        await db.commit()
        return row


async def update_system_tag(rt: Runtime, uuid: str, tag: str) -> Tag:
    """UpdateSystemTag: new text for a system tag a client made (not an inherent one)."""
    _check_tag_text(SYSTEM, tag)
    async with rt.db() as db:
        found = await db.get(SystemTag, uuid)
        if found is None:
            raise not_found("SystemTagVO", uuid)
        resource_uuid, resource_type = found.resource_uuid, found.resource_type
    entity = RESOURCE_TYPES.get(resource_type, SystemTag)
    key = resource_uuid if entity is not SystemTag else uuid
    async with locked_row(rt, entity, key) as (db, _):
        row = await db.get(SystemTag, uuid)
        if row is None:
            raise not_found("SystemTagVO", uuid)
        if _is_inherent(row):
            raise ApiError(OPERATION_ERROR, f"tag[uuid:{uuid}] is an inherent system tag, can not be updated")
        if row.tag == tag:
            return row
        duplicate = await db.scalar(
            select(SystemTag.uuid).where(SystemTag.resource_uuid == row.resource_uuid, SystemTag.tag == tag)
        )
        if duplicate is not None:
            raise ApiError(
                OPERATION_ERROR,
                f"Duplicated Tag[tag:{tag}, type:System, resourceType:{row.resource_type}, "
                f"resourceUuid:{row.resource_uuid}]",
            )
        await _check_one_cidr(db, row.resource_uuid, tag, tag_uuid=uuid)
        row.tag = tag
        await db.commit()
    async with rt.db() as db:
        fresh = await db.get(SystemTag, uuid)
        if fresh is None:
            raise not_found("SystemTagVO", uuid)
        return fresh


async def delete_tag(rt: Runtime, uuid: str) -> None:
    """DeleteTag: a system or user tag by uuid. An unknown uuid succeeds, as in ZStack;
    an inherent system tag is refused (SYS.1006)."""
    async with rt.db() as db:
        row = await db.get(Tag, uuid)
        if row is None:
            return
        if _is_inherent(row):
            raise ApiError(OPERATION_ERROR, f"tag[uuid:{uuid}] is an inherent system tag, can not be removed")
        await db.delete(row)
        await db.commit()
