"""Wire models: ZStack's request bodies and inventories.

Inventories carry ``zstack_class``, the Java class name ZStack's SDKs look up in the
reply's ``schema`` map to decode the object. Dates serialise in
ZStack's US format. Secrets are not fields here, so they cannot leak into a reply.
The image inventories are in :mod:`imgstore.wire.inventories`, shared with the lines of
``bs_ceph_info.json``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from imgstore.api.fields import (
    FINGERPRINT,
    HASH_ALGORITHM,
    HOSTNAME,
    IMAGE_URL,
    MON_URL,
    NON_BLANK,
    POOL_NAME,
    PORT,
    TAGS,
    UUID_PATTERN,
    ZBool,
    doc,
    one_of,
)
from imgstore.services.catalog.tags import MAX_TAG_LENGTH, RESOURCE_TYPES
from imgstore.services.images.manage import ISO_MEDIA
from imgstore.wire.inventories import Inventory, ZDate


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
    status_reason: str | None = None  # imgstore's: why it is Disconnected


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
    # imgstore's: the pinned SHA256 ssh host key fingerprint; null until the first contact
    ssh_host_key_fingerprint: str | None = None


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


def backup_storage_inventory_class(row: Any) -> type[BackupStorageInventory]:
    """The most specific inventory class for a stored backup storage."""
    return CephBackupStorageInventory if row.type == "Ceph" else BackupStorageInventory


def backup_storage_inventory(row: Any) -> BackupStorageInventory:
    """The most specific inventory for a stored backup storage."""
    return backup_storage_inventory_class(row).model_validate(row)


# ---------------------------------------------------------------- request bodies


#: the error type :class:`RequestModel` raises, which ``app._validation_error`` words as it is
NUL_CHARACTER = "nul_character"
NUL_MESSAGE = "field[{field}] holds the character U+0000, which no API accepts"


class RequestModel(BaseModel):
    """A request body, or a part of one. A key no field names is ignored, whatever it
    holds, as ZStack's JSON reading ignores it. A named field's value may not hold
    U+0000: PostgreSQL cannot store it in text, and no name, uuid, URL or tag of ZStack's
    holds one. An object under a named field is the nested model's to check (a
    ``dict[str, Any]`` field, such as ``clientInfo``, is read and dropped)."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _refuse_nul(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                if key in cls.model_fields and not isinstance(value, dict) and holds_nul(value):
                    raise PydanticCustomError(NUL_CHARACTER, NUL_MESSAGE, {"field": key})
        return data


def holds_nul(value: Any) -> bool:
    """Whether a string of ``value`` (a JSON value), or a key of it, holds U+0000."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_nul(v) for v in value)
    return False


class Params(RequestModel):
    """Fields of a ZStack API message. Unknown keys (``requestIp``...) are ignored, as
    ZStack does; strings are trimmed as ZStack's param validator does. Booleans are
    :data:`ZBool`: true, false, "true" or "false"; 0 or "maybe" is refused."""

    model_config = ConfigDict(str_strip_whitespace=True)
    systemTags: list[str] | None = doc(**TAGS)
    userTags: list[str] | None = doc(**TAGS)


class CreateBody(RequestModel):
    """``{"params": {...}, "systemTags": [...], "userTags": [...]}``: tags may sit at the
    top level (ZStack's server reads them there) or inside ``params`` (the SDKs)."""

    systemTags: list[str] | None = doc(**TAGS)
    userTags: list[str] | None = doc(**TAGS)

    def tags(self, params: Params) -> tuple[list[str], list[str]]:
        return (
            [*(self.systemTags or []), *(params.systemTags or [])],
            [*(self.userTags or []), *(params.userTags or [])],
        )


class AddCephBackupStorageParams(Params):
    model_config = ConfigDict(json_schema_extra={  # importImages needs a pool to import from
        "if": {"properties": {"importImages": {"const": True}}, "required": ["importImages"]},
        "then": {"properties": {"poolName": {"type": "string"}}, "required": ["poolName"]}})
    monUrls: list[str] = Field(json_schema_extra={"minItems": 1, "uniqueItems": True,
                                                  "items": {"type": "string", "pattern": MON_URL}})
    poolName: str | None = Field(default=None, max_length=255, json_schema_extra={"pattern": POOL_NAME})
    url: str | None = Field(default=None, max_length=2048)
    name: str = Field(max_length=255, json_schema_extra={"pattern": NON_BLANK})
    description: str | None = Field(default=None, max_length=2048)
    type: str | None = doc(enum=["Ceph", None])
    importImages: ZBool = False
    resourceUuid: str | None = doc(pattern=UUID_PATTERN)


class AddCephBackupStorageBody(CreateBody):
    params: AddCephBackupStorageParams


class LogInByAccountParams(RequestModel):
    accountName: str = Field(max_length=255)
    password: str = Field(max_length=255)
    accountType: str | None = None
    captchaUuid: str | None = None
    verifyCode: str | None = None
    clientInfo: dict[str, Any] | None = None


class LogInByAccountBody(RequestModel):
    logInByAccount: LogInByAccountParams


DeleteMode = Literal["Permissive", "Enforcing"]


# ---------------------------------------------------------------- zones and tags


class ZoneInventory(Inventory):
    zstack_class: ClassVar[str] = "org.zstack.header.zone.ZoneInventory"
    uuid: str
    name: str
    description: str | None = None
    state: str
    type: str | None = None
    is_default: bool = False
    create_date: ZDate
    last_op_date: ZDate


class TagInventory(Inventory):
    """The fields of ZStack's TagInventory, the parent of its two kinds of tag (never
    sent as itself: ``zstack_class`` is the kind's)."""

    uuid: str
    resource_uuid: str
    resource_type: str
    tag: str
    type: str
    create_date: ZDate
    last_op_date: ZDate


class SystemTagInventory(TagInventory):
    zstack_class: ClassVar[str] = "org.zstack.header.tag.SystemTagInventory"
    type: str = "System"
    inherent: bool = False


class UserTagInventory(TagInventory):
    zstack_class: ClassVar[str] = "org.zstack.header.tag.UserTagInventory"
    type: str = "User"


def tag_inventory_class(row: Any) -> type[TagInventory]:
    """The inventory class of a stored tag, by its kind."""
    return SystemTagInventory if row.kind == "system" else UserTagInventory


def tag_inventory(row: Any) -> TagInventory:
    """The inventory of a stored tag, by its kind."""
    return tag_inventory_class(row).model_validate(row)


# ---------------------------------------------------------------- backup-storage actions


class UpdateBackupStorageParams(Params):
    name: str | None = Field(default=None, max_length=255, json_schema_extra={"pattern": NON_BLANK})
    description: str | None = Field(default=None, max_length=2048)


class ChangeStateParams(Params):
    """``changeBackupStorageState`` / ``changeZoneState``; the value is checked by
    ``services.state`` so the error reads like ZStack's."""

    stateEvent: str


# ---------------------------------------------------------------- zone bodies


class CreateZoneParams(Params):
    name: str = Field(max_length=255, json_schema_extra={"pattern": NON_BLANK})
    description: str | None = Field(default=None, max_length=2048)
    resourceUuid: str | None = doc(pattern=UUID_PATTERN)
    isDefault: ZBool | None = None


class CreateZoneBody(CreateBody):
    params: CreateZoneParams


class UpdateZoneParams(Params):
    name: str | None = Field(default=None, max_length=255, json_schema_extra={"pattern": NON_BLANK})
    description: str | None = Field(default=None, max_length=2048)
    isDefault: ZBool | None = None


class AttachBackupStorageToZoneBody(CreateBody):
    """``{"params": {}}``: the SDK sends an empty object; the uuids are in the path."""

    params: Params = Field(default_factory=Params)


# ---------------------------------------------------------------- tag bodies


class CreateTagParams(Params):
    resourceType: str = Field(max_length=64, json_schema_extra={"enum": list(RESOURCE_TYPES)})
    resourceUuid: str = Field(max_length=32)
    tag: str = Field(max_length=MAX_TAG_LENGTH, json_schema_extra={"pattern": NON_BLANK})


class CreateTagBody(CreateBody):
    params: CreateTagParams


class UpdateSystemTagParams(Params):
    tag: str = Field(max_length=MAX_TAG_LENGTH, json_schema_extra={"pattern": NON_BLANK})


class AddMonToCephBackupStorageParams(Params):
    monUrls: list[str] = Field(json_schema_extra={"minItems": 1, "uniqueItems": True,
                                                  "items": {"type": "string", "pattern": MON_URL}})


class AddMonToCephBackupStorageBody(CreateBody):
    params: AddMonToCephBackupStorageParams


class UpdateCephBackupStorageMonParams(Params):
    hostname: str | None = Field(default=None, max_length=255, json_schema_extra={"pattern": HOSTNAME})
    sshUsername: str | None = Field(default=None, max_length=255)
    sshPassword: str | None = Field(default=None, max_length=255)
    sshPort: int | None = doc(**PORT)
    monPort: int | None = doc(**PORT)


class AcceptCephBackupStorageMonHostKeyParams(Params):
    """imgstore's: pin a mon's new ssh host key; without a fingerprint, the one it offers now."""

    sshHostKeyFingerprint: str | None = Field(default=None, max_length=128, json_schema_extra={"pattern": FINGERPRINT})


# ---------------------------------------------------------------- images (AddImage, QueryImage, image actions)


class TaskProgressInventory(Inventory):
    zstack_class: ClassVar[str] = "org.zstack.header.core.progress.TaskProgressInventory"
    task_uuid: str
    task_name: str
    parent_uuid: str | None = None
    type: str
    content: str | None = None
    arguments: str | None = None
    opaque: dict[str, Any] | None = None
    time: int
    sub_tasks: list[TaskProgressInventory] = []


class AddImageParams(Params):
    model_config = ConfigDict(json_schema_extra={"allOf": [
        {"if": {"not": {"properties": {"mediaType": {"const": ISO_MEDIA}}, "required": ["mediaType"]}},
         "then": {"properties": {"format": {"type": "string"}}, "required": ["format"]}},  # unless an ISO
        {"if": {"properties": {"url": {"pattern": "^upload://"}}},
         "then": {"properties": {"backupStorageUuids": {"maxItems": 1}}}},
    ]})
    name: str = Field(max_length=255, json_schema_extra={"pattern": NON_BLANK})
    url: str = Field(max_length=1024, json_schema_extra={"pattern": IMAGE_URL})
    backupStorageUuids: list[str] = Field(
        json_schema_extra={"minItems": 1, "items": {"type": "string", "minLength": 1}})
    description: str | None = Field(default=None, max_length=2048)
    mediaType: str | None = one_of("mediaType")
    format: str | None = one_of("format")
    guestOsType: str | None = Field(default=None, max_length=255)
    platform: str | None = one_of("platform")
    architecture: str | None = one_of("architecture")
    system: ZBool = False
    virtio: ZBool = True
    type: str | None = None
    resourceUuid: str | None = doc(pattern=UUID_PATTERN)


class AddImageBody(CreateBody):
    params: AddImageParams


class ImageBackupStorageUuidsParams(Params):
    """``expungeImage`` / ``recoverImage``: the storages to act on (all when absent)."""

    backupStorageUuids: list[str] | None = None


class CalculateImageHashParams(Params):
    """``calculateImageHash``: the storage whose RBD image is read, and the algorithm."""

    backupStorageUuid: str = Field(min_length=1, max_length=32)
    algorithm: str = Field("MD5", json_schema_extra={"pattern": HASH_ALGORITHM})


class UpdateImageParams(Params):
    name: str | None = Field(default=None, max_length=255, json_schema_extra={"pattern": NON_BLANK})
    description: str | None = Field(default=None, max_length=2048)
    guestOsType: str | None = Field(default=None, max_length=255)
    mediaType: str | None = one_of("mediaType")
    format: str | None = one_of("format")
    system: ZBool | None = None
    platform: str | None = one_of("platform")
    architecture: str | None = one_of("architecture")
    virtio: ZBool | None = None


class SetImageBootModeParams(Params):
    """``setImageBootMode``: ZStack's validValues, compared exactly."""

    bootMode: Literal["Legacy", "UEFI", "UEFI_WITH_CSM"]


class SetImageSecurityLevelParams(Params):
    securityLevel: str | None = Field(default=None, max_length=255)


class SetImageQgaParams(Params):
    enable: ZBool  # the SDK always sends it (a primitive boolean)


class RenewSessionParams(Params):
    """``renewSession``: seconds from now, 1 minute to 365 days (the session timeout when absent)."""

    duration: int | None = Field(default=None, ge=60, le=31536000)


class RenewSessionBody(RequestModel):
    renewSession: RenewSessionParams = Field(default_factory=RenewSessionParams)


class InstallPathRecycleInventory(Inventory):
    """A trash entry of a backup storage (GetTrashOnBackupStorage)."""

    zstack_class: ClassVar[str] = "org.zstack.header.core.trash.InstallPathRecycleInventory"
    trash_id: int
    resource_uuid: str | None = None
    storage_uuid: str
    storage_type: str = "BackupStorageVO"
    resource_type: str
    install_path: str
    is_folder: bool = False
    host_uuid: str | None = None
    hypervisor_type: str | None = None
    size: int | None = None
    trash_type: str
    create_date: ZDate


class CleanUpTrashParams(Params):
    trashId: int | None = None


class BackupStorageMigrateImageParams(Params):
    srcBackupStorageUuid: str
    dstBackupStorageUuid: str


# ---------------------------------------------------------------- image export (ExportImageFromBackupStorage)


class ExportImageFromBackupStorageParams(Params):
    """``exportImageFromBackupStorage``; ``exportFormat`` (raw, qcow2) is checked and, as
    in ZStack for Ceph, ignored: the export is the RBD image as stored."""

    imageUuid: str = Field(max_length=32)
    exportFormat: str | None = one_of("exportFormat")
