"""Node membership: heartbeats, and taking over what a dead node leaves behind.

Every running node has a row in ``node`` whose ``expire_date`` it pushes ahead every
half ping interval, by the database's clock. A row past its ``expire_date``, or no row at
all, means a dead node: it may never come back, so the live nodes take over its work:

* its storage leases expire with its heartbeat and go to the survivors (services/node/leases.py);
* its async jobs still ``Processing`` are failed (their tasks died with it);
* its half-made adds are undone (the key, the pool it created, the row), as a restarted
  node undoes its own (ceph_backup_storage.clean_up_interrupted_adds);
* the uploads it was receiving fail (their writer was in its memory): the partial image
  is removed and the image turns Error, as a restarted node does with its own
  (image_upload.clean_up_interrupted); before, they stayed Downloading for ever.

Each heartbeat does it all, with compare-and-set updates so two survivors never take
the same thing over twice. Take-over time: a lease lasts 1.5 intervals and is renewed
every half interval, so a survivor takes a dead node's storages at most
1.5 + 0.5 = 2 intervals after that node's last heartbeat.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore.db.engine import db_now
from imgstore.db.models import ApiJob, CephBackupStorage, Node
from imgstore.errors import INTERNAL, ApiError
from imgstore.services.storage import add_ceph as ceph_backup_storage
from imgstore.services.images import upload as image_upload
from imgstore.services.node import leases
from imgstore.services.node.jobs import FAILED, PROCESSING
from imgstore.services.node.runtime import Runtime

log = logging.getLogger(__name__)

LEASE_INTERVALS = 1.5  # how long a heartbeat (and a storage lease) lasts, in ping intervals
BEATS_PER_INTERVAL = 2
IDLE_INTERVAL = 60.0  # the heartbeat's pace when the tracker is off (ping interval 0)


def beat_seconds(ping_interval: float) -> float:
    return _base(ping_interval) / BEATS_PER_INTERVAL


def lease_seconds(ping_interval: float) -> float:
    return _base(ping_interval) * LEASE_INTERVALS


def _base(ping_interval: float) -> float:
    return ping_interval if ping_interval > 0 else IDLE_INTERVAL


class Membership:
    """This node's heartbeat: its row in ``node``, its leases, and dead nodes' leftovers."""

    def __init__(self, rt: Runtime, on_taken: Callable[[], None] | None = None) -> None:
        self._rt = rt
        self._claims = rt.settings.ping_interval > 0  # a node that does not ping holds nothing
        self._beat = beat_seconds(rt.settings.ping_interval)
        self._lease = timedelta(seconds=lease_seconds(rt.settings.ping_interval))
        self._on_taken = on_taken
        self._task: asyncio.Task[None] | None = None
        self._undoing: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._lock = asyncio.Lock()  # one beat at a time, and no beat across a hand-over
        self.last_balance: leases.Balance | None = None

    async def join(self) -> None:
        """Announce this node (before it serves: every job and add it makes has a live
        owner) and take its first leases, so its first ping round has work."""
        async with self._rt.db() as db:
            now = await db_now(db)
            await _upsert(db, self._rt.node_id, now, now + self._lease, starting=True)
        await self.beat()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="node-heartbeat")

    async def hand_over(self) -> None:
        """On a clean stop: give every lease back at once (others need not wait for them
        to expire) and take no more. The heartbeat goes on while the node drains its jobs,
        so nobody mistakes it for dead meanwhile."""
        async with self._lock:
            self._claims, self._stopping = False, True
            async with self._rt.db() as db:
                await leases.release_all(db, self._rt.node_id)

    async def leave(self) -> None:
        """The last step of a clean stop: no heartbeat, no row."""
        tasks = [t for t in (self._task,) if t] + list(self._undoing)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        async with self._rt.db() as db:
            await db.execute(delete(Node).where(Node.id == self._rt.node_id))
            await db.commit()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._beat)
            try:
                await self.beat()
            except Exception:
                log.exception("heartbeat of node %s failed", self._rt.node_id)

    async def beat(self) -> None:
        """One heartbeat: this node's row, dead nodes' leftovers, then its leases."""
        rt = self._rt
        async with self._lock, rt.db() as db:
            now = await db_now(db)
            until = now + self._lease
            await leases.renew(db, rt.node_id, until)  # committed with the row by _upsert
            if not await _upsert(db, rt.node_id, now, until):
                log.warning("node %s had been declared dead (no heartbeat for %s); it is back",
                            rt.node_id, self._lease)
            if not self._stopping:
                await self._take_over_dead(db, now)
            live = await db.scalar(select(func.count()).select_from(Node).where(Node.expire_date > now))
            balance = await leases.settle(db, rt.node_id, now, until, live or 1, claim=self._claims)
        if balance.taken or balance.given_back:
            log.info("node %s now holds %d storage leases (took %d, gave back %d; %d live nodes)",
                     rt.node_id, balance.held, balance.taken, balance.given_back, live)
        self.last_balance = balance
        if balance.taken and self._on_taken:
            self._on_taken()

    async def _take_over_dead(self, db: AsyncSession, now: datetime) -> None:
        dead = list(await db.scalars(select(Node.id).where(Node.expire_date <= now, Node.id != self._rt.node_id)))
        if dead:
            # whoever deletes a row reports it; its leftovers below are found by absence
            gone = await db.execute(delete(Node).where(Node.id.in_(dead), Node.expire_date <= now))
            await db.commit()
            if gone.rowcount:
                log.warning("nodes %s stopped beating; taking over their work", ", ".join(dead))
        await _fail_orphan_jobs(db, now)
        for uuid, node in await _orphan_adds(db):
            if await _claim_add(db, uuid, node, self._rt.node_id):
                self._in_background(self._undo_add(uuid, node), f"undo-add-{uuid}")
        for uuid, node in await image_upload.orphans(db):
            if await image_upload.claim_orphan(db, uuid, node, self._rt.node_id):
                self._in_background(self._end_upload(uuid, node), f"end-upload-{uuid}")

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Take-over work that talks to a cluster: the heartbeat must not wait on it."""
        task = asyncio.create_task(work, name=name)
        self._undoing.add(task)
        task.add_done_callback(self._undoing.discard)

    async def _end_upload(self, uuid: str, node: str) -> None:
        """An upload the dead node was receiving: its writer is gone, so it fails here
        (partial image removed). A failure is retried by this node's clean-up of
        interrupted uploads, the slot being this node's now."""
        log.warning("failing the upload of image %s left open by dead node %s", uuid, node)
        try:
            await image_upload.end_orphan(self._rt, uuid, node)
        except Exception:
            log.exception("failing the upload of image %s of dead node %s failed", uuid, node)

    async def _undo_add(self, uuid: str, node: str) -> None:
        """In the background: undoing talks to the cluster over SSH, and the heartbeat
        must not wait on it. Cancelled here, the add stays marked with this node's id and
        is undone by its next start, or by a survivor if it dies."""
        log.warning("undoing the add of backup storage %s left half-made by dead node %s", uuid, node)
        try:
            await ceph_backup_storage.undo_add(self._rt, uuid)
        except Exception:
            log.exception("undoing the add of backup storage %s failed", uuid)


async def _upsert(db: AsyncSession, node: str, now: datetime, until: datetime, starting: bool = False) -> bool:
    """Push this node's row ahead; False when it had to be made again (it was reaped)."""
    values: dict[str, object] = {"heartbeat_date": now, "expire_date": until}
    if starting:
        values["start_date"] = now
    result = await db.execute(update(Node).where(Node.id == node).values(**values))
    if result.rowcount:
        await db.commit()
        return True
    db.add(Node(id=node, start_date=now, heartbeat_date=now, expire_date=until))
    try:
        await db.commit()
    except IntegrityError:  # two starts of one node id at once; either row will do
        await db.rollback()
    return starting


async def _fail_orphan_jobs(db: AsyncSession, now: datetime) -> None:
    """Jobs whose node is gone died with it: fail them, as that node would on restart."""
    body = ApiError(
        INTERNAL, "the job was interrupted: the node running it stopped before it finished"
    ).body()
    result = await db.execute(
        update(ApiJob)
        .where(ApiJob.state == PROCESSING, ApiJob.node.not_in(select(Node.id)))
        .values(state=FAILED, result=json.dumps(body), finish_date=now)
    )
    await db.commit()
    if result.rowcount:
        log.warning("failed %d jobs of dead nodes", result.rowcount)


async def _orphan_adds(db: AsyncSession) -> list[tuple[str, str]]:
    rows = await db.execute(
        select(CephBackupStorage.uuid, CephBackupStorage.adding_node).where(
            CephBackupStorage.adding_node.is_not(None),
            CephBackupStorage.adding_node.not_in(select(Node.id)),
        )
    )
    return [(uuid, node) for uuid, node in rows]


async def _claim_add(db: AsyncSession, uuid: str, dead: str, me: str) -> bool:
    """Compare-and-set the add's node from the dead one to this one: only one survivor
    undoes it, and if this one dies too, the add is again a dead node's."""
    result = await db.execute(
        update(CephBackupStorage)
        .where(CephBackupStorage.uuid == uuid, CephBackupStorage.adding_node == dead)
        .values(adding_node=me)
    )
    await db.commit()
    return bool(result.rowcount)


__all__ = ["Membership", "beat_seconds", "lease_seconds"]
