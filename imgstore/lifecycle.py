"""Starting and stopping a node: what runs once at start, and the background work.

The one place that wires the service packages together: the packages above ``storage``
(``health``, ``images``) listen to its events here (services/node/events.py), and the
node's membership learns here how to finish each kind of work a dead node leaves
(``Leftover``); no package registers itself into another when imported.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from functools import partial

from imgstore import logs, memory
from imgstore.config import Settings
from imgstore.services.health.tracker import Tracker
from imgstore.services.images import metadata as image_metadata
from imgstore.services.images import upload as image_upload
from imgstore.services.images.deletion import Expunger
from imgstore.services.node import sessions
from imgstore.services.node.membership import Leftover, Membership
from imgstore.services.node.runtime import Runtime
from imgstore.services.storage import trash
from imgstore.services.storage import undo as storage_undo

log = logging.getLogger(__name__)

#: how long one step of a stop may take before the node logs where it waits and goes on
STEP_SECONDS = 10.0


async def start(settings: Settings) -> Runtime:
    """Open the runtime, make the admin account, announce the node (heartbeat, first
    leases), settle what a previous run of this node left unfinished (its jobs, its
    half-made adds), then start the ping tracker and the heartbeat."""
    rt = await Runtime.open(settings)
    async with rt.db() as db:
        await sessions.ensure_admin(db, settings)
    node = rt.node
    node.tracker = tracker = Tracker(rt)
    wire(rt, tracker)
    node.membership = membership = Membership(rt, on_taken=tracker.wake, leftovers=leftovers(rt))
    await membership.join()
    await rt.jobs.recover()
    await storage_undo.clean_up_interrupted_adds(rt)
    await trash.settle_pending(rt)  # copies this node left unfinished: their bits are trash
    tracker.start()
    node.expunger = Expunger(rt)  # also settles interrupted image adds
    node.expunger.start()
    membership.start()
    memory.tune_garbage_collector()
    return rt


def wire(rt: Runtime, tracker: Tracker) -> None:
    """The storage events' listeners: a storage's ``bs_ceph_info.json`` follows its add
    (importImages) and its Reconnect; a deleted storage's pinger handle goes at once."""
    events = rt.events
    events.added.append(partial(image_metadata.on_storage_added, rt))
    events.reconnected.append(partial(image_metadata.on_storage_reconnected, rt))
    events.deleted.append(tracker.drop)


def leftovers(rt: Runtime) -> tuple[Leftover, ...]:
    """What a dead node leaves, and how a survivor finishes it (services/node/membership.py)."""
    return (
        Leftover("undo-add", storage_undo.orphan_adds, storage_undo.claim_orphan_add,
                 lambda uuid, _node: storage_undo.undo_add(rt, uuid)),
        Leftover("end-upload", image_upload.orphans, image_upload.claim_orphan,
                 partial(image_upload.end_orphan, rt)),
    )


async def stop(rt: Runtime) -> None:
    """Stop pinging, hand the leases over, let the jobs finish, then leave: the node's
    row goes last, so no survivor takes over jobs this node is still finishing. A step
    that does not end does not keep the node from leaving (see :func:`_step`)."""
    node = rt.node
    if node.tracker:
        await _step(node.tracker.stop(), "tracker")
    if node.expunger is not None:
        await _step(node.expunger.stop(), "expunger")
    await _step(image_upload.stop_all(rt), "uploads")
    if node.membership:
        await _step(node.membership.hand_over(), "hand over")
    await rt.jobs.drain()  # bounded by its own timeouts
    if node.membership:
        await _step(node.membership.leave(), "leave")
    await rt.close()


async def _step(work: Awaitable[None], what: str) -> None:
    """One step of a stop, given :data:`STEP_SECONDS`. One still running then (waiting
    on a cluster that does not answer, or stuck where a cancel does not reach) is logged
    with where every task and thread waits, and left running: the node goes on to hand
    its leases over and leave, where waiting on would keep it until it is killed."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=STEP_SECONDS)
    if task in done:
        task.result()
        return
    log.error("stopping: %s did not end within %s s; the node stops without it", what, STEP_SECONDS)
    logs.dump_waits()
