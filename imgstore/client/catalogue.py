"""The catalogue of ZStack APIs imgstore serves (or will serve), for clients.

One :class:`Api` per ZStack API name: its HTTP method and path template (under
``/zstack/v1``), the JSON body key of POST/PUT (``params`` for creates, the lower-camel
action name for ``.../actions``), whether ZStack runs it as a job, where the answer sits
in the reply, and its parameters with the kinds a client must encode differently (lists
repeat in query strings and are JSON arrays in bodies; booleans are ``true``/``false``).

Facts are ZStack's: the CLI learns every path from here and from nowhere else.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["str", "list", "bool", "int"]

#: The query-string parameters of every Query* API besides its ``q`` conditions;
#: ``groupBy``/``filterName`` are passed through as ZStack does.
QUERY_PARAMS: dict[str, Kind] = {
    "limit": "int",
    "start": "int",
    "count": "bool",
    "replyWithCount": "bool",
    "sort": "str",
    "fields": "str",
    "groupBy": "str",
    "filterName": "str",
}

#: ZStack's condition operators, in the order its server scans for them.
OPERATORS: tuple[str, ...] = (
    "!=", ">=", "<=", "!?=", "!~=", "~=", "?=", "=", ">", "<", "is null", "not null",
)

_PATH_VAR = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Param:
    """One field of an API message."""

    name: str
    kind: Kind = "str"
    required: bool = False
    choices: tuple[str, ...] = ()
    secret: bool = False  # never echoed (passwords, monUrls with their passwords)
    help: str = ""


@dataclass(frozen=True)
class Api:
    """How one ZStack API travels over HTTP."""

    name: str
    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    body_key: str | None  # None: parameters go in the query string
    is_async: bool  # ZStack runs it as a job (202 + polling when asked)
    reply_key: str | None  # where the answer is: "inventory", "inventories", "types"...; None = top level
    group: str
    summary: str
    params: tuple[Param, ...] = ()
    query: bool = False  # a Query* API: conditions + QUERY_PARAMS
    session: bool = True  # needs ``Authorization: OAuth <session>``

    @property
    def path_vars(self) -> tuple[str, ...]:
        return path_vars(self.path)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.required)


def path_vars(template: str) -> tuple[str, ...]:
    return tuple(_PATH_VAR.findall(template))


def action_key(api_name: str) -> str:
    """ZStack's action name: the message name without API/Msg, first letter lowered."""
    return api_name[:1].lower() + api_name[1:]


# ------------------------------------------------------------------ parameter sets

_TAGS = (
    Param("systemTags", "list", help="system tags, e.g. backupStorage::data::network::cidr::10.0.0.0/24"),
    Param("userTags", "list", help="user tags"),
)
_CREATE = (
    Param("resourceUuid", help="the new resource's uuid (32 hex characters)"),
    Param("tagUuids", "list", help="tag patterns to attach"),
    *_TAGS,
)
_STATE_EVENT = Param("stateEvent", required=True, choices=("enable", "disable"))
_DELETE_MODE = Param("deleteMode", choices=("Permissive", "Enforcing"), help="default Permissive")
_MON_URLS = Param(
    "monUrls", "list", required=True, secret=True,
    help="sshUsername:sshPassword@hostname[:sshPort][/?monPort=N], comma-separated",
)


_TAG_PARAMS = (
    Param("resourceType", required=True, help="e.g. BackupStorageVO, ImageVO, ZoneVO"),
    Param("resourceUuid", required=True),
    Param("tag", required=True),
)


def _uuid(name: str = "uuid") -> Param:
    return Param(name, required=True)


def _query(name: str, path: str, group: str, summary: str) -> Api:
    return Api(name, "GET", path, None, False, "inventories", group, summary, query=True)


def _action(name: str, path: str, group: str, summary: str, *params: Param,
            reply_key: str | None = "inventory") -> Api:
    return Api(name, "PUT", path, action_key(name), True, reply_key, group, summary, (*params, *_TAGS))


# ------------------------------------------------------------------ the catalogue

_APIS: tuple[Api, ...] = (
    # sessions: no Authorization header, always synchronous
    Api("LogInByAccount", "PUT", "/accounts/login", "logInByAccount", False, "inventory", "session",
        "log in; the password is the SHA-512 hex digest of the account's password",
        (Param("accountName", required=True), Param("password", required=True, secret=True),
         Param("accountType"), Param("captchaUuid"), Param("verifyCode")), session=False),
    Api("LogOut", "DELETE", "/accounts/sessions/{sessionUuid}", None, False, None, "session",
        "end a session", (_uuid("sessionUuid"),), session=False),
    Api("ValidateSession", "GET", "/accounts/sessions/{sessionUuid}/valid", None, False, "valid", "session",
        "whether a session is still valid", (_uuid("sessionUuid"),), session=False),
    Api("RenewSession", "PUT", "/accounts/sessions/{sessionUuid}/renew", "renewSession", True, "inventory",
        "session", "make a session last longer",
        (_uuid("sessionUuid"), Param("duration", "int", help="seconds from now, 60 to 31536000"))),

    # backup storage
    Api("AddCephBackupStorage", "POST", "/backup-storage/ceph", "params", True, "inventory", "backup-storage",
        "add a Ceph backup storage (image storage)",
        (Param("name", required=True), _MON_URLS,
         Param("poolName", help="an existing pool; default bak-t-<uuid>, created"),
         Param("description"), Param("url", help="ignored (stored as 'not used')"), Param("type"),
         Param("importImages", "bool", help="import the images a previous ZStack left in the pool"),
         *_CREATE)),
    _query("QueryBackupStorage", "/backup-storage", "backup-storage", "query backup storages"),
    _query("QueryCephBackupStorage", "/backup-storage/ceph", "backup-storage", "query Ceph backup storages"),
    Api("DeleteBackupStorage", "DELETE", "/backup-storage/{uuid}", None, True, None, "backup-storage",
        "delete a backup storage (its images stay in the pool); an unknown uuid succeeds",
        (_uuid(), _DELETE_MODE)),
    _action("UpdateBackupStorage", "/backup-storage/{uuid}/actions", "backup-storage",
            "rename or describe a backup storage",
            _uuid(), Param("name"), Param("description")),
    _action("ChangeBackupStorageState", "/backup-storage/{uuid}/actions", "backup-storage",
            "enable or disable a backup storage", _uuid(), _STATE_EVENT),
    _action("ReconnectBackupStorage", "/backup-storage/{uuid}/actions", "backup-storage",
            "reconnect a backup storage", _uuid()),
    Api("AttachBackupStorageToZone", "POST", "/zones/{zoneUuid}/backup-storage/{backupStorageUuid}", "params",
        True, "inventory", "backup-storage", "attach a backup storage to a zone",
        (_uuid("zoneUuid"), _uuid("backupStorageUuid"), *_TAGS)),
    Api("DetachBackupStorageFromZone", "DELETE", "/zones/{zoneUuid}/backup-storage/{backupStorageUuid}", None,
        True, "inventory", "backup-storage", "detach a backup storage from a zone",
        (_uuid("zoneUuid"), _uuid("backupStorageUuid"))),
    Api("GetBackupStorageCapacity", "GET", "/backup-storage/capacities", None, False, None, "backup-storage",
        "total and available capacity of backup storages or zones",
        (Param("zoneUuids", "list"), Param("backupStorageUuids", "list"), Param("all", "bool"))),
    Api("GetBackupStorageTypes", "GET", "/backup-storage/types", None, False, "types", "backup-storage",
        "the backup-storage types this server supports"),
    Api("GetTrashOnBackupStorage", "GET", "/backup-storage/trash", None, False, "inventories", "backup-storage",
        "install paths left in a backup storage's trash",
        (_uuid(), Param("resourceUuid"), Param("resourceType"),
         Param("trashType", choices=("MigrateImage", "AddImage")))),
    _action("CleanUpTrashOnBackupStorage", "/backup-storage/{uuid}/trash/actions", "backup-storage",
            "empty a backup storage's trash", _uuid(), Param("trashId", "int"), reply_key=None),

    # Ceph mons
    Api("AddMonToCephBackupStorage", "POST", "/backup-storage/ceph/{uuid}/mons", "params", True, "inventory",
        "ceph", "add mons to a Ceph backup storage", (_uuid(), _MON_URLS, *_TAGS)),
    Api("RemoveMonFromCephBackupStorage", "DELETE", "/backup-storage/ceph/{uuid}/mons", None, True, "inventory",
        "ceph", "remove mons (by hostname) from a Ceph backup storage",
        (_uuid(), Param("monHostnames", "list", required=True))),
    _action("UpdateCephBackupStorageMon", "/backup-storage/ceph/mons/{monUuid}/actions", "ceph",
            "change a mon's address, ports or SSH credentials (no reconnect); a new address needs sshPassword",
            _uuid("monUuid"), Param("hostname"), Param("sshUsername"), Param("sshPassword", secret=True),
            Param("sshPort", "int"), Param("monPort", "int")),
    _action("AcceptCephBackupStorageMonHostKey", "/backup-storage/ceph/mons/{monUuid}/actions", "ceph",
            "pin a mon's new SSH host key (imgstore's; without a fingerprint: the key it offers now)",
            _uuid("monUuid"), Param("sshHostKeyFingerprint", help="SHA256:... as ssh-keygen -lf prints it")),

    # export
    _action("ExportImageFromBackupStorage", "/backup-storage/{backupStorageUuid}/actions", "export",
            "publish an image as a download URL",
            _uuid("backupStorageUuid"), _uuid("imageUuid"), Param("exportFormat", choices=("raw", "qcow2")),
            reply_key=None),
    Api("DeleteExportedImageFromBackupStorage", "DELETE",
        "/backup-storage/{backupStorageUuid}/exported-images/{imageUuid}", None, True, None, "export",
        "withdraw an image's download URL", (_uuid("backupStorageUuid"), _uuid("imageUuid"))),

    # zones
    Api("CreateZone", "POST", "/zones", "params", True, "inventory", "zone", "create a zone",
        (Param("name", required=True), Param("description"), Param("isDefault", "bool"), *_CREATE)),
    Api("GetZone", "GET", "/zones/{uuid}/info", None, False, "inventories", "zone", "one zone", (_uuid(),)),
    _query("QueryZone", "/zones", "zone", "query zones"),
    Api("DeleteZone", "DELETE", "/zones/{uuid}", None, True, None, "zone", "delete a zone",
        (_uuid(), _DELETE_MODE)),
    _action("UpdateZone", "/zones/{uuid}/actions", "zone", "rename or describe a zone",
            _uuid(), Param("name"), Param("description"), Param("isDefault", "bool")),
    _action("ChangeZoneState", "/zones/{uuid}/actions", "zone", "enable or disable a zone", _uuid(), _STATE_EVENT),

    # images
    Api("AddImage", "POST", "/images", "params", True, "inventory", "image",
        "add an image from a URL (http(s), ftp, sftp, file:///, or upload:// to send the bytes)",
        (Param("name", required=True), Param("url", required=True),
         Param("backupStorageUuids", "list", required=True), Param("description"),
         Param("mediaType", choices=("RootVolumeTemplate", "ISO", "DataVolumeTemplate")),
         Param("format", help="qcow2, raw, vmdk or iso"), Param("guestOsType"),
         Param("platform", choices=("Linux", "Windows", "Other", "Paravirtualization", "WindowsVirtio")),
         Param("architecture", choices=("x86_64", "aarch64", "mips64el", "loongarch64")),
         Param("system", "bool"), Param("virtio", "bool"), Param("type"), *_CREATE)),
    _query("QueryImage", "/images", "image", "query images"),
    Api("DeleteImage", "DELETE", "/images/{uuid}", None, True, None, "image",
        "delete an image (kept until expunged); an unknown uuid succeeds",
        (_uuid(), Param("backupStorageUuids", "list"), _DELETE_MODE)),
    _action("ExpungeImage", "/images/{imageUuid}/actions", "image", "remove a deleted image's bits",
            _uuid("imageUuid"), Param("backupStorageUuids", "list"), reply_key=None),
    _action("RecoverImage", "/images/{imageUuid}/actions", "image", "bring a deleted image back",
            _uuid("imageUuid"), Param("backupStorageUuids", "list")),
    _action("ChangeImageState", "/images/{uuid}/actions", "image", "enable or disable an image",
            _uuid(), _STATE_EVENT),
    _action("SyncImageSize", "/images/{uuid}/actions", "image", "re-read an image's size from storage", _uuid()),
    _action("BackupStorageMigrateImage", "/backup-storage/images/{imageUuid}/actions", "image",
            "copy an image's bits to another backup storage (it then has a ref on both)",
            _uuid("imageUuid"), _uuid("srcBackupStorageUuid"), _uuid("dstBackupStorageUuid")),
    Api("GetBackupStorageCandidatesForImageMigration", "GET",
        "/backup-storage/{srcBackupStorageUuid}/migration-candidates", None, False, "inventories", "image",
        "the backup storages an image can be migrated to", (_uuid("srcBackupStorageUuid"),)),
    _action("SetImageBootMode", "/images/{uuid}/actions", "image", "set the firmware an image boots with",
            _uuid(), Param("bootMode", required=True, choices=("Legacy", "UEFI", "UEFI_WITH_CSM")),
            reply_key=None),
    _action("SetImageSecurityLevel", "/images/{uuid}/actions", "image", "set (or, without one, clear) "
            "an image's security level", _uuid(), Param("securityLevel"), reply_key=None),
    _action("SetImageQga", "/images/{uuid}/actions", "image", "whether an image's VMs get the QEMU guest agent",
            _uuid(), Param("enable", "bool", required=True), reply_key=None),
    Api("GetImageQga", "GET", "/images/{uuid}/qga", None, False, "enable", "image",
        "whether an image's VMs get the QEMU guest agent", (_uuid(),)),
    _action("UpdateImage", "/images/{uuid}/actions", "image", "change an image's attributes",
            _uuid(), Param("name"), Param("description"), Param("guestOsType"),
            Param("mediaType", choices=("RootVolumeTemplate", "ISO", "DataVolumeTemplate")),
            Param("format"), Param("system", "bool"),
            Param("platform", choices=("Linux", "Windows", "Other", "Paravirtualization", "WindowsVirtio")),
            Param("architecture", choices=("x86_64", "aarch64", "mips64el", "loongarch64")),
            Param("virtio", "bool")),
    _action("CalculateImageHash", "/images/{uuid}/actions", "image",
            "read an image's bits and fill its md5Sum (or another digest); always a job",
            _uuid(), Param("backupStorageUuid", required=True),
            Param("algorithm", choices=("MD5", "SHA1", "SHA256", "SHA512"), help="default MD5")),
    Api("GetUploadImageJobDetails", "GET", "/images/upload-job/details/{imageId}", None, False,
        "existingJobDetails", "image", "upload URL and offset of an upload:// image", (_uuid("imageId"),)),

    # tags and task progress
    _query("QuerySystemTag", "/system-tags", "tag", "query system tags"),
    _query("QueryUserTag", "/user-tags", "tag", "query user tags"),
    Api("CreateSystemTag", "POST", "/system-tags", "params", True, "inventory", "tag",
        "put a system tag on a resource", _TAG_PARAMS),
    Api("CreateUserTag", "POST", "/user-tags", "params", True, "inventory", "tag",
        "put a user tag on a resource", _TAG_PARAMS),
    _action("UpdateSystemTag", "/system-tags/{uuid}/actions", "tag", "change a system tag's text",
            _uuid(), Param("tag", required=True)),
    Api("DeleteTag", "DELETE", "/tags/{uuid}", None, True, None, "tag", "delete a system or user tag",
        (_uuid(), _DELETE_MODE)),
    Api("GetTaskProgress", "GET", "/task-progresses/{apiId}", None, False, "inventories", "task",
        "progress of a running API (e.g. an AddImage download)", (_uuid("apiId"), Param("all", "bool"))),
)

APIS: dict[str, Api] = {api.name: api for api in _APIS}


class UnknownApi(KeyError):
    """No API of that name; ``suggestions`` are the closest names."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.suggestions = suggestions

    def __str__(self) -> str:
        hint = f"; did you mean {' or '.join(self.suggestions)}?" if self.suggestions else ""
        return f"unknown API '{self.name}'{hint}"


def get(name: str) -> Api:
    """The API called ``name`` (exact, else case-insensitive), or :class:`UnknownApi`."""
    if name in APIS:
        return APIS[name]
    folded = {n.lower(): api for n, api in APIS.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise UnknownApi(name, closest(name))


def closest(name: str, n: int = 2) -> list[str]:
    """The catalogue names nearest to ``name`` (case-insensitively), best first."""
    lowered = {n_.lower(): n_ for n_ in APIS}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)]


def groups() -> dict[str, list[Api]]:
    out: dict[str, list[Api]] = {}
    for api in _APIS:
        out.setdefault(api.group, []).append(api)
    return out


def secret_params() -> frozenset[str]:
    """Names of parameters whose values must never be shown."""
    return frozenset(p.name for api in _APIS for p in api.params if p.secret)


__all__ = [
    "APIS",
    "OPERATORS",
    "QUERY_PARAMS",
    "Api",
    "Kind",
    "Param",
    "UnknownApi",
    "action_key",
    "closest",
    "get",
    "groups",
    "path_vars",
    "secret_params",
]
