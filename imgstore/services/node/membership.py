"""Node membership: heartbeats, and taking over what a dead node leaves behind.

Every running node has a row in ``node`` whose ``expire_date`` it pushes ahead every
half ping interval, by the database's clock. A row past its ``expire_date``, or no row at
all, means a dead node: it may never come back, so the live nodes take over its work:

* its storage leases expire with its heartbeat and go to the survivors (services/node/leases.py);
* its async jobs still ``Processing`` are failed (their tasks died with it);
* its leftovers (:class:`Leftover`) are finished: its half-made adds are undone (the key,
  the pool it created, the row), as a restarted node undoes its own
  (storage/undo.clean_up_interrupted_adds); the uploads it was receiving fail (their
  writer was in its memory): the partial image is removed and the image turns Error, as a
  restarted node does with its own (images/upload.clean_up_interrupted). The packages
  that own that work give its steps (lifecycle.py wires them): this one knows none of them.

Each heartbeat does it all, with compare-and-set updates so two survivors never take
the same thing over twice. Take-over time: a lease lasts 1.5 intervals and is renewed
every half interval, so a survivor takes a dead node's storages at most
1.5 + 0.5 = 2 intervals after that node's last heartbeat.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore.db.engine import db_now, rows_changed
from imgstore.db.models import ApiJob, Node
from imgstore.errors import INTERNAL, ApiError
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


@dataclass(frozen=True)
class Leftover:
    """One kind of work a dead node leaves behind, in the steps of the package that owns it.

    ``orphans(db)`` lists ``(uuid, dead node)``; ``claim(db, uuid, dead, me)`` moves one to
    this node by compare-and-set (only one survivor wins it, and if this node dies too it is
    again a dead node's); ``finish(uuid, dead)`` does the work, in the background: it talks
    to a cluster, and the heartbeat must not wait on it.
    """

    what: str  # names the background task and the log lines: "undo-add", "end-upload"
    orphans: Callable[[AsyncSession], Awaitable[list[tuple[str, str]]]]
    claim: Callable[[AsyncSession, str, str, str], Awaitable[bool]]
    finish: Callable[[str, str], Awaitable[None]]


class Membership:
    """This node's heartbeat: its row in ``node``, its leases, and dead nodes' leftovers."""

    def __init__(self, rt: Runtime, on_taken: Callable[[], None] | None = None,
                 leftovers: tuple[Leftover, ...] = ()) -> None:
        self._rt = rt
        self._leftovers = leftovers
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
            if rows_changed(gone):
                log.warning("nodes %s stopped beating; taking over their work", ", ".join(dead))
        await _fail_orphan_jobs(db, now)
        for leftover in self._leftovers:
            for uuid, node in await leftover.orphans(db):
                if await leftover.claim(db, uuid, node, self._rt.node_id):
                    self._in_background(self._finish(leftover, uuid, node), f"{leftover.what}-{uuid}")

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Take-over work that talks to a cluster: the heartbeat must not wait on it."""
        task = asyncio.create_task(work, name=name)
        self._undoing.add(task)
        task.add_done_callback(self._undoing.discard)

    async def _finish(self, leftover: Leftover, uuid: str, node: str) -> None:
        """Cancelled here (a stop), the leftover stays marked with this node's id and is
        finished by its next start, or by a survivor if it dies."""
        log.warning("%s %s: taking over from dead node %s", leftover.what, uuid, node)
        try:
            await leftover.finish(uuid, node)
        except Exception:
            log.exception("%s %s (left by dead node %s) failed", leftover.what, uuid, node)


async def _upsert(db: AsyncSession, node: str, now: datetime, until: datetime, starting: bool = False) -> bool:
    """Push this node's row ahead; False when it had to be made again (it was reaped)."""
    values: dict[str, object] = {"heartbeat_date": now, "expire_date": until}
    if starting:
        values["start_date"] = now
    result = await db.execute(update(Node).where(Node.id == node).values(**values))
    if rows_changed(result):
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
    if rows_changed(result):
        log.warning("failed %d jobs of dead nodes", rows_changed(result))


__all__ = ["Leftover", "Membership", "beat_seconds", "lease_seconds"]
