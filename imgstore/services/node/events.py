"""What happens to a storage, for the packages above the storage package to follow.

The storage and health packages tell (an add finished, a Reconnect succeeded, a storage
was deleted); the images package (the pool's ``bs_ceph_info.json``) and the tracker (the
pinger child's handle) listen. Listeners are wired at start, in one place
(``imgstore/lifecycle.py``), never at import time: so ``storage`` never imports ``images``
or ``health``, and the arrows of ``services/`` keep pointing down.

A listener's failure is logged, never the caller's: the API that told has already done
its work.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Added = Callable[[str, bool], Awaitable[None]]  # (storage uuid, importImages asked)
Changed = Callable[[str], Awaitable[None]]  # (storage uuid)


@dataclass
class StorageEvents:
    """The listeners of each event, in the order they were wired."""

    added: list[Added] = field(default_factory=list)
    reconnected: list[Changed] = field(default_factory=list)
    deleted: list[Changed] = field(default_factory=list)

    async def tell_added(self, uuid: str, import_images: bool) -> None:
        for listener in self.added:
            await _tell(listener, "added", uuid, import_images)

    async def tell_reconnected(self, uuid: str) -> None:
        for listener in self.reconnected:
            await _tell(listener, "reconnected", uuid)

    async def tell_deleted(self, uuid: str) -> None:
        for listener in self.deleted:
            await _tell(listener, "deleted", uuid)


async def _tell(listener: Callable[..., Awaitable[None]], event: str, uuid: str, *args: object) -> None:
    try:
        await listener(uuid, *args)
    except Exception:
        log.exception("listener %s of storage event %s failed for backup storage %s",
                      getattr(listener, "__qualname__", listener), event, uuid)
