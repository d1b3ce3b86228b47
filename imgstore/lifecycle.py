"""Starting and stopping a node: what runs once at start, and the background work."""
from __future__ import annotations

from imgstore import memory
from imgstore.config import Settings
from imgstore.services.storage import add_ceph as ceph_backup_storage
from imgstore.services.storage import trash
from imgstore.services.node import sessions
from imgstore.services.images import upload as image_upload
from imgstore.services.images.deletion import Expunger
from imgstore.services.node.membership import Membership
from imgstore.services.node.runtime import Runtime
from imgstore.services.health.tracker import Tracker


async def start(settings: Settings) -> Runtime:
    """Open the runtime, make the admin account, announce the node (heartbeat, first
    leases), settle what a previous run of this node left unfinished (its jobs, its
    half-made adds), then start the ping tracker and the heartbeat."""
    rt = await Runtime.open(settings)
    async with rt.db() as db:
        await sessions.ensure_admin(db, settings)
    rt.tracker = Tracker(rt)
    rt.membership = Membership(rt, on_taken=rt.tracker.wake)
    await rt.membership.join()
    await rt.jobs.recover()
    await ceph_backup_storage.clean_up_interrupted_adds(rt)
    await trash.settle_pending(rt)  # copies this node left unfinished: their bits are trash
    rt.tracker.start()
    rt.image_expunger = Expunger(rt)  # type: ignore[attr-defined]  # also settles interrupted image adds
    rt.image_expunger.start()  # type: ignore[attr-defined]
    rt.membership.start()
    memory.tune_garbage_collector()
    return rt


async def stop(rt: Runtime) -> None:
    """Stop pinging, hand the leases over, let the jobs finish, then leave: the node's
    row goes last, so no survivor takes over jobs this node is still finishing."""
    if rt.tracker:
        await rt.tracker.stop()
    expunger = getattr(rt, "image_expunger", None)
    if expunger is not None:
        await expunger.stop()
    await image_upload.stop_all(rt)
    if rt.membership:
        await rt.membership.hand_over()
    await rt.jobs.drain()
    if rt.membership:
        await rt.membership.leave()
    await rt.close()
