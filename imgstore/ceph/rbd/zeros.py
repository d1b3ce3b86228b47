"""What of a chunk is worth writing: all of it but its aligned runs of zeros, found
without a copy (a thin image's holes are never written, so they stay holes)."""

from __future__ import annotations

from imgstore.ceph.rbd._common import zero_block

__all__ = ["ZERO_GRAIN", "data_runs"]

ZERO_GRAIN = 64 * 1024
"""Zero runs shorter than this inside a chunk are written, longer ones skipped."""


def data_runs(data: bytes | bytearray, chunk: int) -> list[tuple[int, int]]:
    """``[start, end)`` runs of ``data`` worth writing: all of it but aligned zero grains.

    Only memcmp against a shared zero buffer, which stops at the first byte that is not
    zero: random data costs one compare per grain (a few bytes each), zeros are read once
    at memory speed. No copy, no substring search.
    """
    n = len(data)
    zero = zero_block(chunk)
    if data == (zero if n == chunk else zero[:n]):
        return []
    if n <= ZERO_GRAIN:
        return [(0, n)]
    grain = zero_block(ZERO_GRAIN)
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for pos in range(0, n - ZERO_GRAIN + 1, ZERO_GRAIN):
        if data.startswith(grain, pos):  # memcmp of one grain, in place
            if start is not None:
                runs.append((start, pos))
                start = None
        elif start is None:
            start = pos
    tail = n - n % ZERO_GRAIN if n % ZERO_GRAIN else n
    if tail < n and start is None:
        start = tail
    if start is not None:
        runs.append((start, n))
    return runs

