"""Ceph backup storage: adding one (AddCephBackupStorage) and undoing a failed add.

Onboarding is agentless (DESIGN.md decision 4): SSH to every mon once to read the
cluster's fsid and mon map, make the pool if imgstore owns it, and get a cephx key
limited to that pool; from then on imgstore talks to the cluster with librados only.
Every step that leaves something in the cluster is recorded on the row first, so a
failed add, or a node that dies halfway, can take it all back.
"""
from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore import ceph
from imgstore.ceph import check_pool_name
from imgstore.crypto import new_uuid
from imgstore.db.models import BackupStorage, CephBackupStorage, CephMon, Node
from imgstore.errors import (
    CREATE_RESOURCE_ERROR,
    OPERATION_ERROR,
    ApiError,
    invalid_argument,
    not_found,
)
from imgstore.services.catalog import tags
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.runtime import Runtime

log = logging.getLogger(__name__)

CEPH = "Ceph"
NOT_USED_URL = "not used"
_UUID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class NewCephStorage:
    """What AddCephBackupStorage asks for, already typed by the API layer."""

    name: str
    mon_urls: list[str]
    pool_name: str | None = None
    description: str | None = None
    type: str | None = None
    url: str | None = None
    import_images: bool = False
    resource_uuid: str | None = None
    system_tags: list[str] = field(default_factory=list)
    user_tags: list[str] = field(default_factory=list)


@dataclass
class MonProbe:
    url: ceph.MonUrl
    row: CephMon
    shell: ceph.MonShell | None = None
    facts: ceph.MonFacts | None = None
    key: str | None = None
    error: ApiError | None = None

    @property
    def host_key(self) -> str | None:
        """The host key this mon offered (checked against its pin, if it had one)."""
        return self.shell.host_key_fingerprint if self.shell else None


# ---------------------------------------------------------------- validation


def parse_mon_urls(mon_urls: list[str], password_optional: bool = False) -> list[ceph.MonUrl]:
    """ZStack's interceptor checks, in its order: each url parses, no host twice.
    ``password_optional``: a private key is configured, so a url may carry no password."""
    if not mon_urls:
        raise invalid_argument("field[monUrls] must be a non-empty list of mon urls")
    parsed = []
    for text in mon_urls:
        if not text or not text.strip():
            raise invalid_argument("field[monUrls] cannot contain an empty string")
        try:
            parsed.append(ceph.MonUrl.parse(text, password_optional))
        except ceph.MonUrlError as e:
            raise invalid_argument(str(e)) from None
    seen: set[str] = set()
    for mon in parsed:
        if mon.hostname in seen:
            raise invalid_argument(f"Cannot add same host[{mon.hostname}] in mons")
        seen.add(mon.hostname)
    return parsed


def validate(req: NewCephStorage, password_optional: bool = False) -> list[ceph.MonUrl]:
    if req.pool_name is not None and not req.pool_name.strip():
        raise invalid_argument("poolName can be null but cannot be an empty string")
    if req.pool_name is not None:
        try:
            check_pool_name(req.pool_name)
        except ceph.InvalidName as e:
            raise invalid_argument(f"field[poolName]: {e}") from None
    if req.import_images and req.pool_name is None:
        raise invalid_argument("poolName is required when importImages is true")
    if req.type is not None and req.type != CEPH:
        raise invalid_argument(f"field[type] must be {CEPH} for a ceph backup storage, but {req.type} found")
    if req.resource_uuid is not None and not _UUID.fullmatch(req.resource_uuid):
        raise invalid_argument(
            f"field[resourceUuid] value[{req.resource_uuid}] is not a valid uuid: "
            "32 lowercase hex characters without dashes"
        )
    if not req.name.strip():
        raise invalid_argument("field[name] cannot be an empty string")
    tags.check_tags(req.system_tags, req.user_tags)
    return parse_mon_urls(req.mon_urls, password_optional)


async def _check_free(rt: Runtime, uuid: str, mons: list[ceph.MonUrl]) -> None:
    async with rt.db() as db:
        if await db.get(BackupStorage, uuid):
            raise invalid_argument(f"field[resourceUuid]: a resource with uuid[{uuid}] already exists")
    hosts = await used_hostnames(rt, mons)
    if hosts:
        raise invalid_argument(
            "cannot add ceph backup storage, there has been some ceph backup storage "
            f"using mon[hostnames:{hosts}]"
        )


async def used_hostnames(rt: Runtime, mons: list[ceph.MonUrl]) -> list[str]:
    """Mon hostnames are unique across all Ceph backup storages, as in ZStack."""
    async with rt.db() as db:
        used = await db.scalars(
            select(CephMon.hostname).where(CephMon.hostname.in_([m.hostname for m in mons]))
        )
        return sorted(used)


# ---------------------------------------------------------------- add


async def add(rt: Runtime, req: NewCephStorage) -> CephBackupStorage:
    """AddCephBackupStorage: validate, record as Connecting, onboard, answer Connected.

    A failure at any step removes the row and whatever the add made in the cluster,
    and answers SYS.1002 with the reason as its cause.
    """
    mons = validate(req, rt.settings.ssh_private_key is not None)
    uuid = req.resource_uuid or new_uuid()
    await _check_free(rt, uuid, mons)
    mon_rows = await _record(rt, uuid, req, mons)
    try:
        probes = [MonProbe(url=m, row=r) for m, r in zip(mons, mon_rows)]
        await _onboard(rt, uuid, probes, predefined=req.pool_name is not None)
    except ApiError as e:
        await undo_add(rt, uuid)
        raise ApiError(
            CREATE_RESOURCE_ERROR, f"failed to add ceph backup storage[name:{req.name}]: {e.details}", cause=e
        ) from None
    except BaseException:
        await asyncio.shield(undo_add(rt, uuid))
        raise
    # importImages runs in the background once the add answered, as in ZStack: its
    # failure is not the add's (the images package listens: services/node/events.py)
    await rt.events.tell_added(uuid, req.import_images)
    return await load(rt, uuid)


def new_mon_rows(rt: Runtime, mons: list[ceph.MonUrl]) -> list[CephMon]:
    return [
        CephMon(
            uuid=new_uuid(),
            hostname=m.hostname,
            mon_addr=m.hostname,
            mon_port=m.mon_port,
            ssh_port=m.ssh_port,
            ssh_username=m.username,
            ssh_password=rt.secrets.seal(m.password),
            ssh_host_key_fingerprint=m.host_key,  # the operator's; None: learnt at first contact
            status="Connecting",
        )
        for m in mons
    ]


def mon_url_of(rt: Runtime, mon: CephMon) -> ceph.MonUrl:
    return ceph.MonUrl(
        username=mon.ssh_username,
        password=rt.secrets.open(mon.ssh_password),
        hostname=mon.hostname,
        ssh_port=mon.ssh_port,
        mon_port=mon.mon_port,
        host_key=mon.ssh_host_key_fingerprint,
    )


def shell_for(rt: Runtime, url: ceph.MonUrl) -> ceph.MonShell:
    """An ssh shell to a mon: the url's pinned host key, the configured login key.
    Every ssh to a mon is made here, so none skips the pin."""
    return ceph.MonShell(url, rt.settings.ssh_timeout, rt.settings.ssh_private_key)


async def pin_host_key(rt: Runtime, mon: CephMon, shell: ceph.MonShell) -> None:
    """Record the host key ``shell`` met on a mon that had none pinned (first use)."""
    if mon.ssh_host_key_fingerprint or not shell.host_key_fingerprint:
        return
    async with rt.db() as db:
        row = await db.get(CephMon, mon.uuid)
        if row is not None and row.ssh_host_key_fingerprint is None and row.hostname == mon.hostname:
            row.ssh_host_key_fingerprint = shell.host_key_fingerprint
            await db.commit()
            log.info("mon %s: pinned its ssh host key %s (first contact)", mon.hostname, shell.host_key_fingerprint)


async def _record(
    rt: Runtime, uuid: str, req: NewCephStorage, mons: list[ceph.MonUrl]
) -> list[CephMon]:
    """The Connecting row; the unique mon hostnames make a concurrent add of the same
    mons fail here rather than in the cluster."""
    pool = req.pool_name or f"bak-t-{uuid}"
    mon_rows = new_mon_rows(rt, mons)
    row = CephBackupStorage(
        uuid=uuid,
        name=req.name,
        description=req.description,
        url=NOT_USED_URL,
        state="Enabled",
        status="Connecting",
        pool_name=pool,
        pool_created=False,
        adding_node=rt.node_id,
        mons=mon_rows,
    )
    system_tags = list(req.system_tags)
    if req.pool_name is not None:
        system_tags.append(tags.PREDEFINED_POOL)
    async with rt.db() as db:
        db.add(row)
        db.add_all(tags.new_tags(uuid, "BackupStorageVO", system_tags, req.user_tags))
        try:
            await db.commit()
        except IntegrityError:
            raise invalid_argument(
                "cannot add ceph backup storage: its uuid or one of its mon hostnames "
                f"[{', '.join(m.hostname for m in mons)}] is already in use"
            ) from None
    return mon_rows


async def _onboard(rt: Runtime, uuid: str, mons: list[MonProbe], predefined: bool) -> None:
    """SSH to the mons (the first also makes the key meanwhile: two ceph CLI calls in
    parallel cost little more than one), then librados for everything else."""
    client = f"imgstore.{uuid}"
    row = await load(rt, uuid)

    async def key_requested() -> None:  # recorded before the key exists: undo needs it
        await _save(rt, uuid, ceph_client=client)

    async with AsyncExitStack() as stack:
        await probe_mons(rt, stack, mons, key_for=(client, row.pool_name, key_requested))
        good = [m for m in mons if m.facts]
        if not good:
            raise _all_mons_failed(uuid, mons)
        fsid = await _claim_fsid(rt, uuid, good)
        key = next((m.key for m in good if m.key), None)
        if key is None:
            await key_requested()
            key = await _make_key(good[0], client, row.pool_name)
        sealed = rt.secrets.seal(key)
        await _save(rt, uuid, ceph_key=sealed)
        mon_host = ",".join(m.facts.mon_host for m in good if m.facts)
        cluster = ceph.Cluster(mon_host, client, key, rt.settings.ceph_timeout)
        try:
            await cluster.connect()
            await _ensure_pool(rt, row, cluster, good[0], fsid, predefined)
            capacity = await cluster.capacity(row.pool_name)
        except BaseException as e:
            await cluster.close()
            if isinstance(e, ceph.CephError):
                raise ceph_error(e) from None
            raise
        await _connected(rt, uuid, good, [m for m in mons if not m.facts], capacity)
        await rt.clusters.adopt(uuid, (mon_host, sealed), cluster)


async def _make_key(mon: MonProbe, client: str, pool: str) -> str:
    assert mon.shell is not None
    try:
        return await mon.shell.get_or_create_key(client, pool)
    except ceph.CephError as e:
        raise ceph_error(e, mon.url.hostname) from None


KeyRequest = tuple[str, str, Callable[[], Awaitable[None]]]  # client, pool, called just before


async def probe_mons(
    rt: Runtime, stack: AsyncExitStack, mons: list[MonProbe], key_for: KeyRequest | None = None
) -> None:
    """SSH to every mon at once and read its facts; the shells stay open on ``stack``.
    With ``key_for`` = (client, pool, before), the first mon, once logged in, also gets or
    creates that key (``before`` records that it may exist)."""
    await asyncio.gather(*(_probe(rt, stack, m, key_for if i == 0 else None) for i, m in enumerate(mons)))


async def _probe(rt: Runtime, stack: AsyncExitStack, mon: MonProbe, key_for: KeyRequest | None) -> None:
    """SSH to one mon and read its facts; a failure is kept on the mon, not raised."""
    try:
        shell = shell_for(rt, mon.url)
        mon.shell = await stack.enter_async_context(shell)
        if key_for is None:
            mon.facts = await mon.shell.facts()
            return
        client, pool, before = key_for
        await before()
        facts, key = await asyncio.gather(
            mon.shell.facts(), mon.shell.get_or_create_key(client, pool), return_exceptions=True
        )
        for outcome in (facts, key):
            if isinstance(outcome, BaseException):
                raise outcome
        mon.facts, mon.key = facts, key  # type: ignore[assignment]
    except ceph.CephError as e:
        mon.error = ceph_error(e, f"{mon.url.hostname}:{mon.url.ssh_port}")
        log.warning("mon %s of backup storage failed to connect: %s", mon.url.hostname, e)


def _all_mons_failed(uuid: str, mons: list[MonProbe]) -> ApiError:
    return mons_failed(
        mons,
        f"unable to connect to the ceph backup storage[uuid:{uuid}], failed to connect all ceph monitors",
    )


def mons_failed(mons: list[MonProbe], what: str) -> ApiError:
    """One error for the mons that failed: each one's reason, by host, as a cause."""
    causes = [m.error for m in mons if m.error]
    statuses = {c.status for c in causes}
    reasons = "; ".join(c.details for c in causes)
    return ApiError(
        OPERATION_ERROR,
        f"{what}: {reasons}",
        cause=causes[0] if len(causes) == 1 else None,
        causes=causes if len(causes) > 1 else None,
        status=statuses.pop() if len(statuses) == 1 else 503,
    )


async def _claim_fsid(rt: Runtime, uuid: str, good: list[MonProbe]) -> str:
    """All mons must agree, and no other storage may have this cluster: the unique
    fsid column makes the second of two concurrent adds lose here."""
    fsids = {m.facts.fsid for m in good if m.facts}
    if len(fsids) > 1:
        lines = ", ".join(f"{m.facts.mon_addr} --> {m.facts.fsid}" for m in good if m.facts)
        raise ApiError(
            OPERATION_ERROR,
            "the fsid returned by mons are mismatching, it seems the mons belong to different "
            f"ceph clusters: {lines}",
        )
    fsid = fsids.pop()
    async with rt.db() as db:
        other = await db.scalar(
            select(CephBackupStorage).where(CephBackupStorage.fsid == fsid, CephBackupStorage.uuid != uuid)
        )
        if other is None:
            row = await db.get(CephBackupStorage, uuid)
            assert row is not None
            row.fsid = fsid
            try:
                await db.commit()
                return fsid
            except IntegrityError:
                await db.rollback()
                other = await db.scalar(select(CephBackupStorage).where(CephBackupStorage.fsid == fsid))
    name, other_uuid = (other.name, other.uuid) if other else ("?", "?")
    raise ApiError(
        OPERATION_ERROR,
        f"there is another CEPH backup storage[name:{name}, uuid:{other_uuid}] with the same "
        f"FSID[{fsid}], you cannot add the same CEPH setup as two different backup storage",
    )


async def _ensure_pool(
    rt: Runtime, row: CephBackupStorage, cluster: ceph.Cluster, mon: MonProbe, fsid: str, predefined: bool
) -> None:
    """A pool the user named must exist (``ceph::predefinedPool``); otherwise imgstore
    makes ``bak-t-<uuid>`` over SSH and remembers that it did, so a failed add removes it."""
    if await cluster.pool_exists(row.pool_name):
        return
    if predefined:
        raise ApiError(
            OPERATION_ERROR,
            f"cannot find pool[{row.pool_name}] in the ceph cluster[fsid:{fsid}]; a pool given as "
            "poolName must exist: create it, or leave poolName out to let imgstore create one",
            status=400,
        )
    await _save(rt, row.uuid, pool_created=True)
    assert mon.shell is not None
    await mon.shell.create_pool(row.pool_name)


async def _connected(
    rt: Runtime, uuid: str, good: list[MonProbe], failed: list[MonProbe], capacity: ceph.Capacity
) -> None:
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid)
        assert row is not None
        by_uuid = {m.row.uuid: m for m in good}
        for mon in list(row.mons):
            probe = by_uuid.get(mon.uuid)
            if probe is None or probe.facts is None:
                row.mons.remove(mon)  # ZStack drops the mons that failed on a new add
                continue
            mon.status = "Connected"
            mon.mon_addr = probe.facts.mon_addr
            mon.mon_host = probe.facts.mon_host
            mon.ssh_host_key_fingerprint = probe.host_key
        apply_capacity(row, capacity)
        row.status = "Connected"
        row.adding_node = None
        await db.commit()
    for m in failed:
        log.warning("backup storage %s added without mon %s: %s", uuid, m.url.hostname, m.error)


def apply_capacity(row: CephBackupStorage, capacity: ceph.Capacity) -> None:
    for name, value in capacity_columns(capacity).items():
        setattr(row, name, value)


def capacity_columns(capacity: ceph.Capacity) -> dict[str, object]:
    """The storage's columns that a capacity reading sets."""
    return {
        "total_capacity": capacity.total,
        "available_capacity": capacity.available,
        "pool_available_capacity": capacity.pool_available,
        "pool_used_capacity": capacity.pool_used,
        "pool_replicated_size": capacity.pool_replicated_size,
        "pool_disk_utilization": capacity.pool_disk_utilization,
        "pool_security_policy": capacity.pool_security_policy,
    }


async def _save(rt: Runtime, uuid: str, **values: object) -> None:
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid)
        assert row is not None
        for k, v in values.items():
            setattr(row, k, v)
        await db.commit()


async def load(rt: Runtime, uuid: str) -> CephBackupStorage:
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid, populate_existing=True)
        if row is None:
            raise not_found("CephBackupStorageVO", uuid)
        return row


# ---------------------------------------------------------------- undo and delete


async def undo_add(rt: Runtime, uuid: str) -> None:
    """Remove what a failed or interrupted add made: the key, the pool it created, the row."""
    await rt.clusters.forget(uuid)
    async with rt.db() as db:
        row = await db.get(CephBackupStorage, uuid)
        if row is None:
            return
        await release_cluster_resources(rt, row, drop_pool=bool(row.pool_created))
        await tags.delete_tags_of(db, uuid)
        await db.delete(row)
        await db.commit()


async def release_cluster_resources(rt: Runtime, row: CephBackupStorage, drop_pool: bool) -> str | None:
    """Delete the storage's cephx key (and its pool when asked) through any mon that
    answers; None when done, else why no mon did, by host (the caller decides whether
    that blocks a delete). The reasons name no secret (``ceph.exceptions``)."""
    if not row.ceph_client and not drop_pool:
        return None
    errors = []
    for mon in row.mons:
        try:
            async with shell_for(rt, mon_url_of(rt, mon)) as shell:
                await pin_host_key(rt, mon, shell)
                if row.ceph_client:
                    await shell.delete_key(row.ceph_client)
                if drop_pool and row.pool_name:
                    await shell.delete_pool(row.pool_name)
            return None
        except ceph.CephError as e:
            errors.append(f"{mon.hostname}: {e}")
    log.warning(
        "could not remove cephx key %s%s of backup storage %s: %s",
        row.ceph_client,
        f" and pool {row.pool_name}" if drop_pool else "",
        row.uuid,
        "; ".join(errors) or "no mon",
    )
    return "; ".join(errors) or "no mon"


async def renew_key(rt: Runtime, row: CephBackupStorage) -> None:
    """Get (or re-create) the storage's cephx key through the first mon that answers."""
    errors = []
    for mon in row.mons:
        try:
            async with shell_for(rt, mon_url_of(rt, mon)) as shell:
                await pin_host_key(rt, mon, shell)
                key = await shell.get_or_create_key(row.ceph_client or f"imgstore.{row.uuid}", row.pool_name)
        except ceph.CephError as e:
            errors.append(ceph_error(e, mon.hostname))
            continue
        await _save(rt, row.uuid, ceph_key=rt.secrets.seal(key), ceph_client=row.ceph_client or f"imgstore.{row.uuid}")
        await rt.clusters.forget(row.uuid)
        return
    raise ApiError(
        OPERATION_ERROR,
        f"cannot renew the cephx key of backup storage[uuid:{row.uuid}]: no mon answered over SSH: "
        + "; ".join(e.details for e in errors),
        causes=errors or None,
        status=503,
    )


async def clean_up_interrupted_adds(rt: Runtime) -> None:
    """At start: an add this node had not finished died with it; undo it so nothing
    half-made stays (no row stuck in Connecting, no orphan pool or key)."""
    async with rt.db() as db:
        stale = list(
            await db.scalars(
                select(CephBackupStorage.uuid).where(CephBackupStorage.adding_node == rt.node_id)
            )
        )
    for uuid in stale:
        log.warning("undoing the add of backup storage %s interrupted by a restart", uuid)
        await undo_add(rt, uuid)


async def orphan_adds(db: AsyncSession) -> list[tuple[str, str]]:
    """Adds whose node is gone from the ``node`` table: ``(uuid, that node)``."""
    rows = await db.execute(
        select(CephBackupStorage.uuid, CephBackupStorage.adding_node).where(
            CephBackupStorage.adding_node.is_not(None),
            CephBackupStorage.adding_node.not_in(select(Node.id)),
        )
    )
    return [(uuid, node) for uuid, node in rows]


async def claim_orphan_add(db: AsyncSession, uuid: str, dead: str, me: str) -> bool:
    """Compare-and-set the add's node from the dead one to this one: only one survivor
    undoes it, and if this one dies too, the add is again a dead node's."""
    result = await db.execute(
        update(CephBackupStorage)
        .where(CephBackupStorage.uuid == uuid, CephBackupStorage.adding_node == dead)
        .values(adding_node=me)
    )
    await db.commit()
    return bool(result.rowcount)


async def load_many(rt: Runtime, uuids: list[str]) -> list[CephBackupStorage]:
    """The storages of ``uuids`` (with their mons); missing ones are left out."""
    async with rt.db() as db:
        return await rows_of(db, uuids)


async def versions_of(rt: Runtime, uuids: list[str]) -> dict[str, tuple[object, ...]]:
    """For each storage of ``uuids`` that exists, a value that changes whenever it or its
    mons do (its lastOpDate, its mons' number and latest lastOpDate): a reader that kept
    a row reloads it only when this moved. One plain statement, no rows built."""
    bs, mon = CephBackupStorage, CephMon
    versions: dict[str, tuple[object, ...]] = {}
    async with rt.db() as db:
        for i in range(0, len(uuids), 500):
            stmt = (
                select(bs.uuid, bs.last_op_date, func.count(mon.uuid), func.max(mon.last_op_date))
                .outerjoin(mon, mon.backup_storage_uuid == bs.uuid)
                .where(bs.uuid.in_(uuids[i : i + 500]))
                .group_by(bs.uuid, bs.last_op_date)
            )
            for uuid, *version in await db.execute(stmt):
                versions[uuid] = tuple(version)
    return versions


async def rows_of(db: AsyncSession, uuids: list[str]) -> list[CephBackupStorage]:
    """The storages of ``uuids`` in ``db``, a query per 500 (SQLite's bound-parameter limit)."""
    rows: list[CephBackupStorage] = []
    for i in range(0, len(uuids), 500):
        rows += await db.scalars(select(CephBackupStorage).where(CephBackupStorage.uuid.in_(uuids[i : i + 500])))
    return rows
