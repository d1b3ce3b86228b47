"""The database schema: one ORM class per ZStack resource.

Backup storages of every type share one table (single-table inheritance keyed by
``type``): queries over all storages stay one SELECT, and a Ceph row loads as a
``CephBackupStorage`` with its Ceph columns. Uniqueness that ZStack checks in
interceptors (mon hostnames, Ceph fsid) is also a database constraint here, so two
concurrent adds cannot both win.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from imgstore.wire.dates import utcnow


class Base(DeclarativeBase):
    pass


def _name_without_case(table: str) -> tuple[Index, Index]:
    """Indexes for ``name~=prefix%`` (case-insensitive, see db/query.CaseInsensitiveLike):
    SQLite's LIKE walks a NOCASE index of the column, PostgreSQL's a pattern index of
    ``lower(name)``."""
    return (
        Index(f"ix_{table}_name_nocase", text("name COLLATE NOCASE")).ddl_if(dialect="sqlite"),
        Index(f"ix_{table}_name_lower", text("lower(name) text_pattern_ops")).ddl_if(dialect="postgresql"),
    )


class Timestamps:
    create_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_op_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Account(Timestamps, Base):
    __tablename__ = "account"
    uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(32), default="SystemAdmin")


class Session(Base):
    __tablename__ = "session"
    uuid: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the session uuid
    account_uuid: Mapped[str] = mapped_column(ForeignKey("account.uuid", ondelete="CASCADE"))
    user_uuid: Mapped[str] = mapped_column(String(32))
    user_type: Mapped[str] = mapped_column(String(32), default="Account")
    expired_date: Mapped[datetime] = mapped_column(DateTime, index=True)
    create_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class BackupStorage(Timestamps, Base):
    __tablename__ = "backup_storage"
    # a query pages in (createDate, uuid) order (db/query.py): the index walks the page;
    # name~=prefix% is case-insensitive, served by an index of the name without case
    __table_args__ = (
        Index("ix_backup_storage_create_date_uuid", "create_date", "uuid"),
        *_name_without_case("backup_storage"),
    )
    uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    description: Mapped[str | None] = mapped_column(String(2048))
    url: Mapped[str] = mapped_column(String(2048))
    type: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(32), default="Enabled")
    status: Mapped[str] = mapped_column(String(32), default="Connecting")
    total_capacity: Mapped[int] = mapped_column(BigInteger, default=0)
    available_capacity: Mapped[int] = mapped_column(BigInteger, default=0)
    # why the last connect or ping failed; cleared when it is Connected again
    status_reason: Mapped[str | None] = mapped_column(String(2048))

    zone_refs: Mapped[list[BackupStorageZoneRef]] = relationship(
        back_populates="backup_storage", cascade="all, delete-orphan", lazy="selectin"
    )

    # load every subclass column and relationship whatever class a query names: a
    # query over all storages hands back complete Ceph rows
    __mapper_args__ = {
        "polymorphic_on": "type",
        "polymorphic_identity": "BackupStorage",
        "with_polymorphic": "*",
    }

    @property
    def attached_zone_uuids(self) -> list[str]:
        return [ref.zone_uuid for ref in self.zone_refs]


class CephBackupStorage(BackupStorage):
    """Ceph columns live on the shared table, NULL for other types."""

    fsid: Mapped[str | None] = mapped_column(String(64), unique=True)
    pool_name: Mapped[str | None] = mapped_column(String(255))
    pool_created: Mapped[bool | None] = mapped_column(Boolean, default=False)
    pool_available_capacity: Mapped[int | None] = mapped_column(BigInteger)
    pool_used_capacity: Mapped[int | None] = mapped_column(BigInteger)
    pool_replicated_size: Mapped[int | None] = mapped_column(Integer)
    pool_disk_utilization: Mapped[float | None] = mapped_column(Float)
    pool_security_policy: Mapped[str | None] = mapped_column(String(32))
    ceph_client: Mapped[str | None] = mapped_column(String(255))
    ceph_key: Mapped[str | None] = mapped_column(Text)  # sealed by crypto.SecretBox
    # the node running this storage's add, until it is Connected: a restarted node
    # undoes the adds it left half-made
    adding_node: Mapped[str | None] = mapped_column(String(64))

    mons: Mapped[list[CephMon]] = relationship(
        back_populates="backup_storage",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="CephMon.create_date",
    )

    __mapper_args__ = {"polymorphic_identity": "Ceph"}


class CephMon(Timestamps, Base):
    __tablename__ = "ceph_backup_storage_mon"
    uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    backup_storage_uuid: Mapped[str] = mapped_column(
        ForeignKey("backup_storage.uuid", ondelete="CASCADE"), index=True
    )
    hostname: Mapped[str] = mapped_column(String(255), unique=True)
    mon_addr: Mapped[str | None] = mapped_column(String(255))
    mon_port: Mapped[int] = mapped_column(Integer, default=6789)
    ssh_port: Mapped[int] = mapped_column(Integer, default=22)
    ssh_username: Mapped[str] = mapped_column(String(255))
    ssh_password: Mapped[str] = mapped_column(Text)  # sealed by crypto.SecretBox
    mon_host: Mapped[str | None] = mapped_column(String(512))  # librados address of this mon
    # the pinned SHA256 ssh host key fingerprint; None: learnt at the next contact
    ssh_host_key_fingerprint: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="Connecting")
    status_reason: Mapped[str | None] = mapped_column(String(2048))

    backup_storage: Mapped[CephBackupStorage] = relationship(back_populates="mons")

    @property
    def mon_uuid(self) -> str:
        return self.uuid


class Zone(Timestamps, Base):
    __tablename__ = "zone"
    uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(2048))
    state: Mapped[str] = mapped_column(String(32), default="Enabled")
    type: Mapped[str | None] = mapped_column(String(255))
    # ZStack's ZoneVO.isDefault: at most one zone is the default (CreateZone/UpdateZone clear the others)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class BackupStorageZoneRef(Timestamps, Base):
    __tablename__ = "backup_storage_zone_ref"
    __table_args__ = (UniqueConstraint("backup_storage_uuid", "zone_uuid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backup_storage_uuid: Mapped[str] = mapped_column(
        ForeignKey("backup_storage.uuid", ondelete="CASCADE"), index=True
    )
    zone_uuid: Mapped[str] = mapped_column(ForeignKey("zone.uuid", ondelete="CASCADE"), index=True)

    backup_storage: Mapped[BackupStorage] = relationship(back_populates="zone_refs")


class Tag(Timestamps, Base):
    """System and user tags, ZStack's way of hanging strings on any resource."""

    __tablename__ = "tag"
    uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource_uuid: Mapped[str] = mapped_column(String(32), index=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    tag: Mapped[str] = mapped_column(String(2048))
    kind: Mapped[str] = mapped_column(String(8))  # "system" | "user"
    inherent: Mapped[bool] = mapped_column(Boolean, default=False)

    # ZStack keeps SystemTagVO and UserTagVO apart; here one table, a class per kind, so
    # a query of one kind is one SELECT that cannot see the other
    __mapper_args__ = {"polymorphic_on": "kind"}


class SystemTag(Tag):
    """A system tag: imgstore (or a ZStack client) records a fact about a resource."""

    __mapper_args__ = {"polymorphic_identity": "system"}


class UserTag(Tag):
    """A user tag: free text for people; imgstore never interprets it."""

    __mapper_args__ = {"polymorphic_identity": "user"}


class ApiJob(Base):
    """An async API call; lives in the database so any node can answer a poll."""

    __tablename__ = "api_job"
    uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    api_name: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="Processing")  # Processing|Succeeded|Failed
    result: Mapped[str | None] = mapped_column(Text)  # the JSON body of the final answer
    node: Mapped[str | None] = mapped_column(String(64))
    create_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    finish_date: Mapped[datetime | None] = mapped_column(DateTime)


class Image(Timestamps, Base):
    """A VM image (ZStack's ImageVO); its bits live on backup storages, one ref each."""

    __tablename__ = "image"
    __table_args__ = (  # paging and name~=, as for backup storages
        Index("ix_image_create_date_uuid", "create_date", "uuid"),
        *_name_without_case("image"),
    )
    uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    description: Mapped[str | None] = mapped_column(String(2048))
    state: Mapped[str] = mapped_column(String(32), default="Enabled")  # Enabled | Disabled
    # Creating | Downloading | Ready | Error | Deleted | Migrating
    status: Mapped[str] = mapped_column(String(32), default="Downloading", index=True)
    status_reason: Mapped[str | None] = mapped_column(String(2048))  # why it is Error
    size: Mapped[int] = mapped_column(BigInteger, default=0)  # virtual size
    actual_size: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes stored
    md5_sum: Mapped[str | None] = mapped_column(String(255))
    sha512_sum: Mapped[str | None] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(String(2048))
    media_type: Mapped[str] = mapped_column(String(64), default="RootVolumeTemplate")
    guest_os_type: Mapped[str | None] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(64), default="zstack")
    platform: Mapped[str | None] = mapped_column(String(64))
    architecture: Mapped[str | None] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(32), default="raw")
    system: Mapped[bool] = mapped_column(Boolean, default=False)
    virtio: Mapped[bool] = mapped_column(Boolean, default=True)
    deleted_date: Mapped[datetime | None] = mapped_column(DateTime)  # set by a Delay delete

    backup_storage_refs: Mapped[list[ImageBackupStorageRef]] = relationship(
        back_populates="image", cascade="all, delete-orphan", lazy="selectin",
        order_by="ImageBackupStorageRef.id",
    )


class ImageBackupStorageRef(Timestamps, Base):
    """Where one image's bits are: ``ceph://<pool>/<image uuid>`` on one backup storage."""

    __tablename__ = "image_backup_storage_ref"
    __table_args__ = (UniqueConstraint("image_uuid", "backup_storage_uuid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_uuid: Mapped[str] = mapped_column(ForeignKey("image.uuid", ondelete="CASCADE"), index=True)
    # deleting a storage drops its refs (ZStack's DeleteReference); the RBD images stay
    backup_storage_uuid: Mapped[str] = mapped_column(
        ForeignKey("backup_storage.uuid", ondelete="CASCADE"), index=True
    )
    install_path: Mapped[str] = mapped_column(String(2048), default="")
    status: Mapped[str] = mapped_column(String(32), default="Downloading")
    export_url: Mapped[str | None] = mapped_column(Text)  # sealed (crypto.SecretBox): it holds the token
    export_md5_sum: Mapped[str | None] = mapped_column(String(255))
    export_token: Mapped[str | None] = mapped_column(String(255))  # hashed, never returned
    # CalculateImageHash's last result on this ref: MD5 | SHA1 | SHA256 | SHA512, and its hex digest
    hash_algorithm: Mapped[str | None] = mapped_column(String(16))
    hash_value: Mapped[str | None] = mapped_column(String(128))

    image: Mapped[Image] = relationship(back_populates="backup_storage_refs")


class BackupStorageTrash(Base):
    """What imgstore left in a storage's pool and no longer needs (GetTrashOnBackupStorage):
    bits whose removal failed, or a copy under way (``node`` set: the node writing it)
    that its node's restart found unfinished. CleanUpTrashOnBackupStorage removes them."""

    __tablename__ = "backup_storage_trash"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # ZStack's trashId
    backup_storage_uuid: Mapped[str] = mapped_column(
        ForeignKey("backup_storage.uuid", ondelete="CASCADE"), index=True
    )
    resource_uuid: Mapped[str | None] = mapped_column(String(32))
    resource_type: Mapped[str] = mapped_column(String(64))
    trash_type: Mapped[str] = mapped_column(String(32))
    install_path: Mapped[str] = mapped_column(String(2048))
    size: Mapped[int | None] = mapped_column(BigInteger)
    node: Mapped[str | None] = mapped_column(String(64))  # a copy still being written by that node
    create_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ImageUpload(Timestamps, Base):
    """The upload slot of an ``upload://`` image: where its bytes may be PUT, and how far
    they got (ZStack's upload long job, GetUploadImageJobDetails).

    The token is in the upload URL; only its sha256 is looked up, and a sealed copy lets
    the URL be shown again to whoever may query the image.
    """

    __tablename__ = "image_upload"
    image_uuid: Mapped[str] = mapped_column(ForeignKey("image.uuid", ondelete="CASCADE"), primary_key=True)
    backup_storage_uuid: Mapped[str] = mapped_column(
        ForeignKey("backup_storage.uuid", ondelete="CASCADE"), index=True
    )
    api_id: Mapped[str] = mapped_column(String(32))  # the AddImage job: ZStack's longJobUuid
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_sealed: Mapped[str] = mapped_column(Text)  # crypto.SecretBox
    state: Mapped[str] = mapped_column(String(16), default="Waiting")  # Waiting|Running|Succeeded|Failed
    offset: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes received so far
    size: Mapped[int | None] = mapped_column(BigInteger)  # announced by the client, when it did
    node: Mapped[str | None] = mapped_column(String(64))  # the node holding the open writer


class TaskProgress(Base):
    """Progress of a running API (ZStack's TaskProgressVO), read by GetTaskProgress."""

    __tablename__ = "task_progress"
    __table_args__ = (UniqueConstraint("api_id", "task_uuid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    api_id: Mapped[str] = mapped_column(String(32), index=True)
    task_uuid: Mapped[str] = mapped_column(String(32))
    parent_uuid: Mapped[str | None] = mapped_column(String(32))
    task_name: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(16), default="Progress")  # Task | Progress
    content: Mapped[str | None] = mapped_column(String(255))  # percent, as ZStack writes it
    arguments: Mapped[str | None] = mapped_column(Text)
    opaque: Mapped[str | None] = mapped_column(Text)  # JSON object
    time: Mapped[int] = mapped_column(BigInteger)  # epoch ms of the last report


class Node(Base):
    """A running imgstore node. It renews ``expire_date`` every half ping interval; a row
    past it belongs to a dead node, whose leases, jobs and half-made adds others take over
    (services/node/membership.py)."""

    __tablename__ = "node"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    start_date: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_date: Mapped[datetime] = mapped_column(DateTime)
    expire_date: Mapped[datetime] = mapped_column(DateTime, index=True)


class BackupStorageLease(Base):
    """Which node does a storage's tracker work (ping, reconnect), and until when.

    A table of its own rather than columns on backup_storage: renewing a lease every few
    seconds must neither touch the storage's lastOpDate nor wait on its row lock.
    """

    __tablename__ = "backup_storage_lease"
    backup_storage_uuid: Mapped[str] = mapped_column(
        ForeignKey("backup_storage.uuid", ondelete="CASCADE"), primary_key=True
    )
    owner_node: Mapped[str | None] = mapped_column(String(64), index=True)
    expire_date: Mapped[datetime | None] = mapped_column(DateTime)
