"""How much of a stream an :class:`~imgstore.ceph.rbd.writer.ImageWriter` holds in flight.

Each chunk being written holds memory until its write lands: a whole buffer (librbd
writes from it without a copy), or for a :class:`~imgstore.ceph.rbd.zeros.SparsePiece`
only its runs. The window counts what is held in quarters of a chunk, so a sparse file's
pieces fly four times as many as whole chunks do, for the same memory.
"""

from __future__ import annotations

import asyncio

__all__ = ["WriteWindow"]

QUARTERS = 4  # the window's unit: a quarter of a chunk


class WriteWindow:
    """``chunks`` chunks' worth of memory in flight at most; one producer takes, the
    writes' completions give back."""

    def __init__(self, chunks: int, chunk_size: int) -> None:
        self._free = asyncio.Semaphore(max(1, chunks) * QUARTERS)
        self._chunk = chunk_size

    def share(self, held: int) -> int:
        """Quarters of the window that ``held`` bytes take: at least one, at most a chunk's."""
        return min(QUARTERS, max(1, -(-held * QUARTERS // self._chunk)))

    async def take(self, share: int) -> None:
        """Wait until ``share`` quarters are free (one producer: no two wait half-served)."""
        taken = 0
        try:
            while taken < share:
                await self._free.acquire()
                taken += 1
        except BaseException:
            self.give(taken)
            raise

    def give(self, share: int) -> None:
        for _ in range(share):
            self._free.release()
