"""Starting and stopping a node: what runs once at start, and the background work."""
from __future__ import annotations

from imgstore.config import Settings
from imgstore.services import ceph_backup_storage, sessions
from imgstore.services.runtime import Runtime
from imgstore.services.tracker import Tracker


async def start(settings: Settings) -> Runtime:
    """Open the runtime, make the admin account, settle what a previous run of this node
    left unfinished (its jobs, its half-made adds), then start the ping tracker."""
    rt = await Runtime.open(settings)
    async with rt.db() as db:
        await sessions.ensure_admin(db, settings)
    await rt.jobs.recover()
    await ceph_backup_storage.clean_up_interrupted_adds(rt)
    rt.tracker = Tracker(rt)
    rt.tracker.start()
    return rt


async def stop(rt: Runtime) -> None:
    if rt.tracker:
        await rt.tracker.stop()
    await rt.close()
