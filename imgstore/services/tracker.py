"""The ping tracker: every storage this node owns is probed every ping interval.

A Connected storage is pinged every interval, so a failure shows within one interval
plus the Ceph timeout. A Disconnected one is retried with exponential backoff (one
interval, two, four... capped at ``MAX_BACKOFF`` intervals, with jitter) so a dead cluster
is not hammered and many storages do not retry in lock-step. Pings run concurrently,
at most ``PARALLELISM`` at a time, each bounded by the Ceph timeout: a round never
waits on one dead cluster, and the API, on the same event loop, never waits on a ping.

"Owns" means holds the storage's lease (services/leases.py). Leases are renewed by the
node's heartbeat (services/nodes.py), not by the round: a round that waits out a dead
cluster's timeout may last longer than a lease. A node that has just taken leases wakes
the tracker, so a dead node's storages are pinged at once rather than next round.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from imgstore.errors import ApiError
from imgstore.services import ceph_connection, leases
from imgstore.services.runtime import Runtime

log = logging.getLogger(__name__)

PARALLELISM = 50
MAX_BACKOFF = 8  # intervals
RECONNECT_AFTER = 2  # failed pings in a row before a retry starts from a fresh handle


@dataclass
class _Backoff:
    failures: int = 0
    next_try: float = 0.0


class Tracker:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._interval = rt.settings.ping_interval
        self._backoff: dict[str, _Backoff] = {}
        self._task: asyncio.Task[None] | None = None
        self._gate = asyncio.Semaphore(PARALLELISM)
        self._wake = asyncio.Event()
        self.last_round_seconds: float | None = None

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="ping-tracker")

    def wake(self) -> None:
        """Start the next round now (this node has just taken storages over)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.round()
            except Exception:
                log.exception("ping round failed")
            self.last_round_seconds = time.monotonic() - started
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, self._interval - self.last_round_seconds))
            except TimeoutError:
                pass
            self._wake.clear()

    async def round(self) -> None:
        """Ping every due storage once, concurrently."""
        now = time.monotonic()
        uuids = await self._owned()
        for gone in set(self._backoff) - set(uuids):
            del self._backoff[gone]
        due = [u for u in uuids if self._backoff.setdefault(u, _Backoff()).next_try <= now]
        await asyncio.gather(*(self._ping(u) for u in due))

    async def _owned(self) -> list[str]:
        """The storages this node tracks: those whose lease it holds."""
        return await leases.owned(self._rt)

    async def _ping(self, uuid: str) -> None:
        async with self._gate:
            if self._backoff.get(uuid, _Backoff()).failures >= RECONNECT_AFTER:
                # a librados handle that lived through an OSD restart can keep timing
                # out while a fresh one works at once; the first retry keeps the handle
                # (a fresh login to dead mons only adds its timeout to the wait of an
                # operator's Reconnect, which queues behind the ping)
                await self._rt.clusters.forget(uuid)
            try:
                status = await ceph_connection.ping(self._rt, uuid)
            except ApiError as e:  # deleted meanwhile
                log.debug("ping of %s skipped: %s", uuid, e.details)
                return
        backoff = self._backoff.setdefault(uuid, _Backoff())
        if status == ceph_connection.CONNECTED:
            backoff.failures, backoff.next_try = 0, 0.0
            return
        backoff.failures += 1
        steps = min(2 ** (backoff.failures - 1), MAX_BACKOFF)
        delay = self._interval * steps * random.uniform(0.8, 1.0) if steps > 1 else 0.0
        backoff.next_try = time.monotonic() + delay
