"""The rest of RBD images: their size, the images of a pool, and removal that never
leaves a silent leak."""

from __future__ import annotations

import asyncio
from typing import Any

import rbd

from imgstore.ceph._calls import RadosSource, call, host_of, open_ioctx
from imgstore.ceph.exceptions import ImageBusy
from imgstore.ceph.rbd._common import CALL_TIMEOUT, InFlight
from imgstore.ceph.rbd.reader import close_reader, open_read_only

__all__ = ["image_size", "list_images", "remove_image"]


async def image_size(cluster: RadosSource, pool: str, name: str) -> int:
    """The provisioned size of the image in bytes."""
    ioctx, image, size = await open_read_only(cluster, pool, name)
    await close_reader(cluster, pool, name, ioctx, image)
    return size


async def image_usage(cluster: RadosSource, pool: str, name: str) -> tuple[int, int]:
    """``(provisioned size, bytes allocated)`` of the image: what ``rbd du`` reports, the
    allocation read by diff_iterate (the object map's fast-diff when the image has one)."""
    ioctx, image, size = await open_read_only(cluster, pool, name)
    used = [0]

    def count(_off: int, length: int, exists: bool) -> int:
        if exists:
            used[0] += length
        return 0

    inflight = InFlight()
    try:
        await inflight.call(cluster, lambda: image.diff_iterate(0, size, None, count, include_parent=True),
                            f"read the allocation of {pool}/{name}", pool, name)
    finally:
        await asyncio.shield(close_reader(cluster, pool, name, ioctx, image, inflight))
    return size, used[0]


async def list_images(cluster: RadosSource, pool: str) -> list[str]:
    """Names of the RBD images in the pool (not those in its trash)."""

    def list_() -> list[str]:
        ioctx = open_ioctx(cluster, pool)
        try:
            return sorted(rbd.RBD().list(ioctx))
        finally:
            ioctx.close()

    return await call(cluster, list_, f"list images of pool {pool}", pool, timeout=CALL_TIMEOUT)


async def remove_image(cluster: RadosSource, pool: str, name: str, *,
                       purge_snapshots: bool = False, missing_ok: bool = False) -> None:
    """Remove the image; ImageBusy (never a silent leak) when it is in use.

    Busy means: another client has it open for writing (watchers), or it has clones
    (children of a snapshot, in this or another pool), or snapshots and
    ``purge_snapshots`` is false. With ``purge_snapshots`` snapshots without clones
    are unprotected and removed first, and only once nothing else stands in the way.

    librbd does not see readers (read-only opens, e.g. an :func:`iter_image` export in
    progress): whoever serves exports must keep track of them itself.
    """

    def remove() -> None:
        ioctx = open_ioctx(cluster, pool)
        try:
            try:
                snaps = _check_removable(ioctx, pool, name, purge_snapshots, cluster)
            except rbd.ImageNotFound:
                if not missing_ok:
                    raise
                # it cannot be opened, yet it may be listed: a create cut short (its
                # writer killed between the directory entry and the header), which only
                # librbd's remove clears
                snaps = []
            if snaps:
                _purge_snapshots(ioctx, name, snaps)
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageBusy:
                raise ImageBusy(f"image {pool}/{name} is open by another client (it has watchers)",
                                host_of(cluster)) from None
            except rbd.ImageHasSnapshots:
                raise ImageBusy(f"image {pool}/{name} has snapshots kept by clones (in the trash)",
                                host_of(cluster)) from None
            except rbd.ImageNotFound:
                if not missing_ok:
                    raise
        finally:
            ioctx.close()

    await call(cluster, remove, f"remove image {pool}/{name}", pool, name, timeout=None)


def _check_removable(ioctx: Any, pool: str, name: str, purge: bool,
                     cluster: RadosSource) -> list[str]:
    """ImageBusy unless the image may go; the snapshots to purge first. Changes nothing.

    Looks through a read-only open, which registers no watcher of its own.
    """
    image = rbd.Image(ioctx, name, read_only=True)
    try:
        if list(image.watchers_list()):
            raise ImageBusy(f"image {pool}/{name} is open by another client (it has watchers)",
                            host_of(cluster))
        snaps = [s["name"] for s in image.list_snaps()]
        clones = []
        for snap in snaps:
            image.set_snap(snap)
            clones += [f"{c['pool']}/{c['image']}" for c in image.list_children2()]
        if clones:
            raise ImageBusy(f"image {pool}/{name} has clones: {', '.join(sorted(clones))}",
                            host_of(cluster))
        if snaps and not purge:
            marked = [f"{s} (protected)" if image.is_protected_snap(s) else s for s in snaps]
            raise ImageBusy(f"image {pool}/{name} has snapshots: {', '.join(marked)}",
                            host_of(cluster))
        return snaps
    finally:
        image.close()


def _purge_snapshots(ioctx: Any, name: str, snaps: list[str]) -> None:
    image = rbd.Image(ioctx, name)
    try:
        for snap in snaps:
            if image.is_protected_snap(snap):
                image.unprotect_snap(snap)
            image.remove_snap(snap)
    finally:
        image.close()

