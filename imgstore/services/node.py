"""Starting and stopping a node: what runs once at start, and the background work."""
from __future__ import annotations

from imgstore.config import Settings
from imgstore.services import ceph_backup_storage, sessions
from imgstore.services import image_upload
from imgstore.services.image_deletion import Expunger
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
    rt.image_expunger = Expunger(rt)  # type: ignore[attr-defined]  # also settles interrupted image adds
    rt.image_expunger.start()  # type: ignore[attr-defined]
    return rt


async def stop(rt: Runtime) -> None:
    if rt.tracker:
        await rt.tracker.stop()
    expunger = getattr(rt, "image_expunger", None)
    if expunger is not None:
        await expunger.stop()
    await image_upload.stop_all(rt)
    await rt.close()
