"""ZStack's image inventories: one model for API replies and for ``bs_ceph_info.json``.

An inventory carries ``zstack_class``, the Java class name ZStack's SDKs look up in the
reply's ``schema`` map to decode the object. Fields are in ZStack's order (Gson writes
them so, and a pool's line keeps it); dates serialise in ZStack's US format. Secrets are
not fields here, so they cannot leak into a reply or a pool.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, PlainSerializer
from pydantic.alias_generators import to_camel

from imgstore.wire.dates import zstack_date

ZDate = Annotated[datetime | None, PlainSerializer(zstack_date, return_type=str | None)]


class Inventory(BaseModel):
    model_config = ConfigDict(from_attributes=True, alias_generator=to_camel, populate_by_name=True)
    zstack_class: ClassVar[str] = ""


class ImageBackupStorageRefInventory(Inventory):
    zstack_class: ClassVar[str] = "org.zstack.header.image.ImageBackupStorageRefInventory"
    id: int | None = None
    image_uuid: str
    backup_storage_uuid: str
    install_path: str
    status: str
    export_url: str | None = None
    export_md5_sum: str | None = None
    create_date: ZDate
    last_op_date: ZDate
    hash_algorithm: str | None = None  # imgstore's: CalculateImageHash's algorithm on this ref
    hash_value: str | None = None  # imgstore's: and its hex digest
    upload_url: str | None = None  # imgstore's: where to PUT an upload:// image's bytes, while it waits


class ImageInventory(Inventory):
    zstack_class: ClassVar[str] = "org.zstack.header.image.ImageInventory"
    uuid: str
    name: str
    description: str | None = None
    state: str
    status: str
    size: int
    actual_size: int
    md5_sum: str | None = None
    url: str
    media_type: str
    guest_os_type: str | None = None
    type: str
    platform: str | None = None
    architecture: str | None = None
    format: str
    system: bool
    virtio: bool
    create_date: ZDate
    last_op_date: ZDate
    backup_storage_refs: list[ImageBackupStorageRefInventory] = []
    sha512_sum: str | None = None  # imgstore's: a verified or calculated sha512, next to ZStack's md5Sum
    status_reason: str | None = None  # imgstore's: why it is Error
