"""The ping tracker: every storage this node owns is probed every ping interval.

A Connected storage is pinged every interval, so a failure shows within one interval
plus the Ceph timeout. A Disconnected one is retried with exponential backoff (one
interval, two, four... capped at ``MAX_BACKOFF`` intervals, with jitter) so a dead cluster
is not hammered and many storages do not retry in lock-step. Pings run concurrently,
at most ``PARALLELISM`` at a time, each bounded by the Ceph timeout: a round never
waits on one dead cluster, and the API, on the same event loop, never waits on a ping.

A round costs the database two reads (the owned storages, then their versions: rows are
kept between rounds and read again only when they changed) and, only when
a ping found something new (status, a mon, capacity), one write transaction per
``FLUSH_SECONDS`` holding all the news: a steady round writes nothing. Its pings start
evenly over ``SPREAD_SECONDS`` rather than all at once, so an API request on the same event
loop never queues behind hundreds of ping callbacks. With 200 storages, per-ping sessions
and commits and the burst at a round's start were what made the API's p99 jump. Connected
storages are pinged first, so a dead cluster's timeouts do not hold up the news about
live ones.

A revoked cephx key goes unnoticed by a connected handle for up to an hour: only a fresh
login tells, and a fresh librados handle is the dearest thing the tracker does (several
times a ping's write; the README's benchmark table has the figures). So
keys are not checked by the rounds but by a loop of their own: one login at a time, one
every ``1 / KEY_CHECKS_PER_SECOND`` s, each key at most once per ``KEY_CHECK_SECONDS``,
refused keys first and then those checked longest ago, and only keys of storages whose
mons answered their last ping (a refused login looks like a timeout). Checked within the
rounds, the logins came in bursts at each round's start (all 200 keys within the first
second when the interval is 60 s) and were what still moved the API's p99 during rounds.
A refused key's storage is recorded Disconnected at once and stays so, whatever its
pings say, until a check or a Reconnect finds a working key.

"Owns" means holds the storage's lease (services/node/leases.py). Leases are renewed by the
node's heartbeat (services/node/membership.py), not by the round: a round that waits out a dead
cluster's timeout may last longer than a lease. A node that has just taken leases wakes
the tracker, so a dead node's storages are pinged at once rather than next round.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from imgstore.db.models import CephBackupStorage
from imgstore.services.health import connection as ceph_connection
from imgstore.services.health.connection import Outcome
from imgstore.services.health.pinger import Pinger, PingerLost
from imgstore.services.node import leases
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage import rows as storage_rows

log = logging.getLogger(__name__)

PARALLELISM = 256  # pings waiting on Ceph at once; pacing, not this, spreads the work
MAX_BACKOFF = 8  # intervals
RECONNECT_AFTER = 2  # failed pings in a row before a retry starts from a fresh handle
FLUSH_SECONDS = 0.25  # news from pings is written together at most this often
LOAD_SLICE = 25  # storages loaded from the database at a time during a round
SPREAD_SECONDS = 1.0  # a round's pings start evenly over this long (at most half an interval)
KEY_CHECK_SECONDS = 10.0  # no key is checked more often
KEY_CHECKS_PER_SECOND = 4.0  # fresh logins per second of ping interval, node-wide


@dataclass
class _Backoff:
    failures: int = 0
    next_try: float = 0.0
    renew_handle: bool = False


class Tracker:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._interval = rt.settings.ping_interval
        self._pinger = Pinger(rt.secrets, rt.settings.ceph_timeout)
        self._backoff: dict[str, _Backoff] = {}
        self._key_checked: dict[str, float] = {}
        self._reachable: set[str] = set()  # storages whose mons answered their last ping
        self._refused: dict[str, tuple[int, str]] = {}  # uuid -> (generation, why), see _verdict
        # each storage's row as last read, with its version (see _rows_to_ping)
        self._rows: dict[str, tuple[tuple[object, ...], CephBackupStorage]] = {}
        self._task: asyncio.Task[None] | None = None
        self._keys_task: asyncio.Task[None] | None = None
        self._gate = asyncio.Semaphore(PARALLELISM)
        self._wake = asyncio.Event()
        self._deleted: set[str] = set()  # dropped storages a round under way may still name
        self.last_round_seconds: float | None = None

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="ping-tracker")
            self._keys_task = asyncio.create_task(self._check_keys(), name="key-checker")

    def wake(self) -> None:
        """Start the next round now (this node has just taken storages over)."""
        self._wake.set()

    async def forget(self, uuid: str) -> None:
        """Drop the storage's handle in the pinger process (a Reconnect renews them all)."""
        await self._pinger.forget(uuid)

    async def drop(self, uuid: str) -> None:
        """The storage is deleted: close its handle in the pinger process now, not at the
        next round (its key, deleted from the cluster, would be retried until then), and
        let no ping of a round under way open another."""
        self._deleted.add(uuid)
        self._forget_state(uuid)
        await self._pinger.forget(uuid)

    async def stop(self) -> None:
        for task in (self._task, self._keys_task):
            if task:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._keys_task = None
        await self._pinger.close()

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
        """Ping every due storage once; pings start paced and their news is written in batches."""
        now = time.monotonic()
        uuids = await leases.owned(self._rt)
        self._deleted &= set(uuids)  # those no longer owned are gone for good
        for gone in set(self._backoff) - set(uuids):
            self._forget_state(gone)
            await self._pinger.forget(gone)
        due = [u for u in uuids
               if u not in self._deleted and self._backoff.setdefault(u, _Backoff()).next_try <= now]
        if not due:
            return
        due.sort(key=lambda u: self._backoff[u].failures > 0)  # the live ones first
        generations = {u: ceph_connection.generation(self._rt, u) for u in due}
        news: list[Outcome] = []

        async def ping(row: CephBackupStorage) -> None:
            outcome = await self._ping(row, generations[row.uuid])
            if outcome is not None:
                self._note(outcome)
                if ceph_connection.apply(row, outcome):  # row: the kept snapshot
                    news.append(outcome)

        spacing = min(SPREAD_SECONDS, self._interval / 2) / len(due)
        tasks: list[asyncio.Task[None]] = []

        async def launch() -> None:
            async for row in self._rows_to_ping(due):
                tasks.append(asyncio.create_task(ping(row)))
                await asyncio.sleep(spacing)

        launcher = asyncio.create_task(launch())
        try:
            while not (launcher.done() and all(t.done() for t in tasks)):
                await asyncio.wait({launcher, *tasks}, timeout=FLUSH_SECONDS)
                batch, news[:] = news[:], []
                await self._record(batch)
            for task in (launcher, *tasks):
                task.result()  # a bug in a ping is the round's failure, logged by _loop
        finally:
            for task in (launcher, *tasks):
                task.cancel()

    def _forget_state(self, uuid: str) -> None:
        self._backoff.pop(uuid, None)
        self._key_checked.pop(uuid, None)
        self._reachable.discard(uuid)
        self._refused.pop(uuid, None)
        self._rows.pop(uuid, None)

    async def _rows_to_ping(self, due: list[str]) -> AsyncIterator[CephBackupStorage]:
        """The rows of ``due``, in order. A row is read again only when its version moved
        (someone changed it or its mons, or a ping wrote news): a steady round builds no
        ORM rows, whose loading held the event loop a few ms per slice, every round. The
        changed ones are read a slice at a time, so no single step holds it for long."""
        versions = await storage_rows.versions_of(self._rt, due)
        for gone in set(due) - set(versions):
            self._rows.pop(gone, None)
        due = [u for u in due if u in versions]
        stale = [u for u in due if self._rows.get(u, (None,))[0] != versions[u]]
        for i in range(0, len(stale), LOAD_SLICE):
            for row in await storage_rows.load_many(self._rt, stale[i : i + LOAD_SLICE]):
                self._rows[row.uuid] = (versions[row.uuid], row)
        for uuid in due:
            if uuid in self._rows:
                yield self._rows[uuid][1]

    async def _record(self, outcomes: list[Outcome]) -> None:
        """Write the news; when that fails, forget the snapshots it was applied to (they
        now claim what the database does not hold) so the next round reads them again."""
        outcomes = [self._verdict(o) for o in outcomes]  # a key refused since the ping
        try:
            await ceph_connection.record(self._rt, outcomes)
        except BaseException:
            for outcome in outcomes:
                self._rows.pop(outcome.uuid, None)
            raise

    async def _check_keys(self) -> None:
        """The key checker's loop: one fresh login per tick, never two at once."""
        while True:
            await asyncio.sleep(1.0 / KEY_CHECKS_PER_SECOND)
            uuid = next_key(self._reachable, self._refused, self._key_checked, time.monotonic())
            if uuid is None or uuid not in self._rows or uuid in self._deleted:
                continue
            try:
                await self._check_key(self._rows[uuid][1])
            except Exception:
                log.exception("checking the cephx key of backup storage %s failed", uuid)

    async def _check_key(self, row: CephBackupStorage) -> None:
        """Log in afresh with the storage's key; record a refusal at once, and let a key
        that works again bring its storage back at the next round."""
        gen = ceph_connection.generation(self._rt, row.uuid)
        self._key_checked[row.uuid] = time.monotonic()  # before: a check that raises is not retried every tick
        try:
            refused = await self._pinger.refused_key(row)
        except PingerLost:
            return  # says nothing about the key; it is checked again in KEY_CHECK_SECONDS
        if refused is None:
            if self._refused.pop(row.uuid, None) is not None:
                self._backoff[row.uuid] = _Backoff()
            return
        self._refused[row.uuid] = (gen, refused)
        outcome = Outcome(row.uuid, ceph_connection.DISCONNECTED, refused, mons_too=False, generation=gen)
        if ceph_connection.generation(self._rt, row.uuid) == gen and ceph_connection.apply(row, outcome):
            await self._record([outcome])

    def _verdict(self, outcome: Outcome) -> Outcome:
        """``outcome``, unless the storage's key was refused since the Reconnect it
        belongs to: then Disconnected, with the refusal as the reason."""
        refused = self._refused.get(outcome.uuid)
        if outcome.status != ceph_connection.CONNECTED or refused is None:
            return outcome
        gen, why = refused
        if gen != ceph_connection.generation(self._rt, outcome.uuid):
            del self._refused[outcome.uuid]  # a Reconnect has renewed or proven the key since
            return outcome
        return replace(outcome, status=ceph_connection.DISCONNECTED, reason=why, capacity=None)

    async def _ping(self, row: CephBackupStorage, generation: int) -> Outcome | None:
        """The storage's outcome; None when there is no news to trust (a Reconnect ran
        meanwhile, or the pinger process failed, which says nothing about the cluster)."""
        async with self._gate:
            backoff = self._backoff.get(row.uuid, _Backoff())
            # no row lock across the Ceph calls: a Reconnect or a state change must not
            # wait out a dead cluster's timeout behind a ping. A Reconnect bumps the
            # generation first, and record() drops what a ping found before it.
            try:
                if backoff.failures >= RECONNECT_AFTER and backoff.renew_handle:
                    await self._pinger.forget(row.uuid)
                if row.uuid in self._deleted:
                    return None  # deleted since the round began: its handle stays closed
                if ceph_connection.generation(self._rt, row.uuid) != generation:
                    return None  # a Reconnect ran meanwhile: its result stands, and the row is stale
                outcome = await ceph_connection.probe(self._pinger, row, generation)
            except PingerLost as e:
                log.warning("backup storage %s not pinged: %s", row.uuid, e)
                return None
        if row.uuid in self._deleted:
            await self._pinger.forget(row.uuid)  # a ping that raced the drop: close what it opened
            return None
        if outcome.status == ceph_connection.CONNECTED:
            self._reachable.add(row.uuid)
        else:
            self._reachable.discard(row.uuid)
        return self._verdict(outcome)

    def _note(self, outcome: Outcome) -> None:
        """Schedule the storage's next ping from the outcome of this one."""
        if outcome.status == ceph_connection.CONNECTED:
            self._backoff[outcome.uuid] = _Backoff()
            return
        backoff = self._backoff.setdefault(outcome.uuid, _Backoff())
        backoff.failures += 1
        backoff.renew_handle = outcome.renew_handle
        steps = min(2 ** (backoff.failures - 1), MAX_BACKOFF)
        delay = self._interval * steps * random.uniform(0.8, 1.0) if steps > 1 else 0.0
        backoff.next_try = time.monotonic() + delay


def next_key(
    reachable: set[str], refused: dict[str, tuple[int, str]], checked: dict[str, float], now: float
) -> str | None:
    """Whose key the checker logs in with next: of the storages whose mons answer, one
    not checked for ``KEY_CHECK_SECONDS``, a refused one first, then the one checked
    longest ago (never checked counts as longest)."""
    due = [u for u in reachable if now - checked.get(u, -math.inf) >= KEY_CHECK_SECONDS]
    if not due:
        return None
    return min(due, key=lambda u: (u not in refused, checked.get(u, -math.inf)))
