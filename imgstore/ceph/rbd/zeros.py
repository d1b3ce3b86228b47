"""What of a chunk is worth writing: all of it but its aligned runs of zeros, found
without a copy (a thin image's holes are never written, so they stay holes), or known
beforehand (:class:`SparsePiece`: a sparse file's extents)."""

from __future__ import annotations

from imgstore.ceph.rbd._common import zero_block

__all__ = ["ZERO_GRAIN", "SparsePiece", "data_runs", "runs_to_write"]

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
    if data is zero or (n <= chunk and data.startswith(memoryview(zero)[:n])):  # memcmp, no copy
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


class SparsePiece:
    """A piece of a stream known by its data: ``runs`` of ``(start, bytes)`` inside
    ``size`` bytes, zeros everywhere else.

    A sparse file's reader makes one from the extents SEEK_DATA and SEEK_HOLE find, so
    the holes inside a piece are neither read nor compared: :class:`ImageWriter` writes
    the runs as they are. Whoever needs the bytes themselves (a format's head, a staged
    file, a digest) asks ``bytes(piece)``.
    """

    __slots__ = ("runs", "size")

    def __init__(self, size: int, runs: list[tuple[int, bytes | bytearray]]) -> None:
        if any(start < 0 or start + len(run) > size for start, run in runs):
            raise ValueError("a run lies outside the piece")
        self.size = size
        self.runs = runs

    def __len__(self) -> int:
        return self.size

    @property
    def held(self) -> int:
        """Bytes of its runs: what it holds in memory."""
        return sum(len(run) for _, run in self.runs)

    def __bytes__(self) -> bytes:
        buf = bytearray(self.size)
        for start, run in self.runs:
            buf[start:start + len(run)] = run
        return bytes(buf)

    def __repr__(self) -> str:
        return f"SparsePiece({self.size}, {len(self.runs)} runs of {self.held} bytes)"


def runs_to_write(data: bytes | bytearray | SparsePiece, chunk: int) -> list[tuple[int, bytes | bytearray]]:
    """``(start, bytes)`` of ``data`` worth writing: a sparse piece's runs as they are,
    otherwise :func:`data_runs` (the whole of ``data`` itself when it is one run)."""
    if isinstance(data, SparsePiece):
        return list(data.runs)
    return [(a, data if b - a == len(data) else data[a:b]) for a, b in data_runs(data, chunk)]
