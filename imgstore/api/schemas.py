"""Wire models: ZStack's request bodies and inventories.

Inventories carry ``zstack_class``, the Java class name ZStack's SDKs look up in the
reply's ``schema`` map to decode the object (zstack-sdk-wire.md 6.3). Dates serialise in
ZStack's US format. Secrets are not fields here, so they cannot leak into a reply.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from imgstore.dates import zstack_date

ZDate = Annotated[datetime | None, PlainSerializer(zstack_date, return_type=str | None)]


class Inventory(BaseModel):
    model_config = ConfigDict(from_attributes=True, alias_generator=to_camel, populate_by_name=True)
    zstack_class: ClassVar[str] = ""


class SessionInventory(Inventory):
    zstack_class: ClassVar[str] = "org.zstack.header.identity.SessionInventory"
    uuid: str
    account_uuid: str
    user_uuid: str
    user_type: str
    expired_date: ZDate
    create_date: ZDate


class BackupStorageInventory(Inventory):
    zstack_class: ClassVar[str] = "org.zstack.header.storage.backup.BackupStorageInventory"
    uuid: str
    name: str
    url: str
    description: str | None = None
    total_capacity: int
    available_capacity: int
    type: str
    state: str
    status: str
    create_date: ZDate
    last_op_date: ZDate
    attached_zone_uuids: list[str] = []


class CephMonInventory(Inventory):
    zstack_class: ClassVar[str] = "org.zstack.storage.ceph.backup.CephBackupStorageMonInventory"
    mon_uuid: str
    hostname: str
    mon_addr: str | None = None
    mon_port: int
    ssh_port: int
    ssh_username: str
    status: str
    backup_storage_uuid: str
    create_date: ZDate
    last_op_date: ZDate


class CephBackupStorageInventory(BackupStorageInventory):
    zstack_class: ClassVar[str] = "org.zstack.storage.ceph.backup.CephBackupStorageInventory"
    mons: list[CephMonInventory] = []
    fsid: str | None = None
    pool_name: str | None = None
    pool_available_capacity: int | None = None
    pool_used_capacity: int | None = None
    pool_replicated_size: int | None = None
    pool_disk_utilization: float | None = None
    pool_security_policy: str | None = None


def backup_storage_inventory(row: Any) -> BackupStorageInventory:
    """The most specific inventory for a stored backup storage."""
    if row.type == "Ceph":
        return CephBackupStorageInventory.model_validate(row)
    return BackupStorageInventory.model_validate(row)


# ---------------------------------------------------------------- request bodies


class Params(BaseModel):
    """Fields of a ZStack API message. Unknown keys (``requestIp``...) are ignored, as
    ZStack does; strings are trimmed as ZStack's param validator does."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)
    systemTags: list[str] | None = None
    userTags: list[str] | None = None


class CreateBody(BaseModel):
    """``{"params": {...}, "systemTags": [...], "userTags": [...]}``: tags may sit at the
    top level (ZStack's server reads them there) or inside ``params`` (the SDKs)."""

    model_config = ConfigDict(extra="ignore")
    systemTags: list[str] | None = None
    userTags: list[str] | None = None

    def tags(self, params: Params) -> tuple[list[str], list[str]]:
        return (
            [*(self.systemTags or []), *(params.systemTags or [])],
            [*(self.userTags or []), *(params.userTags or [])],
        )


class AddCephBackupStorageParams(Params):
    monUrls: list[str]
    poolName: str | None = Field(default=None, max_length=255)
    url: str | None = Field(default=None, max_length=2048)
    name: str = Field(max_length=255)
    description: str | None = Field(default=None, max_length=2048)
    type: str | None = None
    importImages: bool = False
    resourceUuid: str | None = None


class AddCephBackupStorageBody(CreateBody):
    params: AddCephBackupStorageParams


class LogInByAccountParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    accountName: str = Field(max_length=255)
    password: str = Field(max_length=255)
    accountType: str | None = None
    captchaUuid: str | None = None
    verifyCode: str | None = None
    clientInfo: dict[str, Any] | None = None


class LogInByAccountBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    logInByAccount: LogInByAccountParams


DeleteMode = Literal["Permissive", "Enforcing"]
