"""What of a chunk the writer sends to RBD: everything but aligned runs of zeros."""
from __future__ import annotations

import os

from imgstore.ceph.rbd.zeros import ZERO_GRAIN, data_runs

CHUNK = 4 << 20


def test_a_chunk_of_zeros_is_not_written_at_all() -> None:
    assert data_runs(bytes(CHUNK), CHUNK) == []
    assert data_runs(bytearray(CHUNK), CHUNK) == []
    assert data_runs(bytes(1000), CHUNK) == [], "a short last piece of zeros too"


def test_data_is_written_whole() -> None:
    data = os.urandom(CHUNK)
    assert data_runs(data, CHUNK) == [(0, CHUNK)]


def test_aligned_zero_grains_inside_a_chunk_are_skipped_and_short_zero_runs_kept() -> None:
    data = bytearray(os.urandom(CHUNK))
    data[ZERO_GRAIN:3 * ZERO_GRAIN] = bytes(2 * ZERO_GRAIN)  # two whole grains of zeros
    data[5 * ZERO_GRAIN + 10:6 * ZERO_GRAIN] = bytes(ZERO_GRAIN - 10)  # zeros, not a whole grain
    assert data_runs(data, CHUNK) == [(0, ZERO_GRAIN), (3 * ZERO_GRAIN, CHUNK)]


def test_an_unaligned_tail_after_zeros_is_written() -> None:
    data = bytes(2 * ZERO_GRAIN) + b"tail"
    assert data_runs(data, CHUNK) == [(2 * ZERO_GRAIN, len(data))]
