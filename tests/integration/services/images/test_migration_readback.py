"""The read-back of a migration's copy (services/images/migrate.py ``ReadBack``) on the
real dev cluster c1: it must find the piece that differs from what was read at the source.

The handle and the pool are those of tests/integration/ceph/test_rbd_io.py.
"""
from __future__ import annotations

import asyncio
import os

import pytest

from imgstore.ceph import CHUNK_SIZE, Cluster
from imgstore.services.images.migrate import ReadBack
from tests.integration.ceph.test_rbd_io import c1, cluster, new_name, pool, write_image  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.ceph, pytest.mark.anyio]


async def read_back(cluster: Cluster, pool: str, name: str, sent: bytes, durable_steps: list[int]) -> ReadBack:
    """Check image ``name`` against ``sent`` as the copy would: the source's pieces come
    first, the writer's ``durable`` moves through ``durable_steps``, then the copy ends."""
    check = ReadBack(cluster, pool, name)
    for i in range(0, len(sent), CHUNK_SIZE):
        check.expect(sent[i:i + CHUNK_SIZE])
    try:
        for durable in durable_steps:
            await check.advance(durable)
            await asyncio.sleep(0.05)
        await check.finish(len(sent))
    finally:
        await check.close()
    return check


async def test_a_copy_with_the_bytes_sent_reads_back_clean(cluster: Cluster, pool: str) -> None:
    data = os.urandom(2 * CHUNK_SIZE) + bytes(CHUNK_SIZE) + os.urandom(1000)  # a hole, a short tail
    name = new_name()
    await write_image(cluster, pool, name, data, len(data))
    check = await read_back(cluster, pool, name, data, [CHUNK_SIZE, 3 * CHUNK_SIZE])
    assert (check.mismatch, check.checked) == (None, len(data))


async def test_a_copy_that_differs_by_one_bit_is_caught_at_its_piece(cluster: Cluster, pool: str) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 1000)
    name = new_name()
    await write_image(cluster, pool, name, data, len(data))
    sent = bytearray(data)
    sent[2 * CHUNK_SIZE + 77] ^= 1
    check = await read_back(cluster, pool, name, bytes(sent), [])
    assert check.mismatch == 2 * CHUNK_SIZE


async def test_the_copy_waits_while_too_much_of_it_is_unchecked(cluster: Cluster, pool: str) -> None:
    """The source's pieces are held until checked: beyond LAG bytes the copy waits for the
    read-back instead of holding more."""
    data = os.urandom(3 * CHUNK_SIZE)
    name = new_name()
    await write_image(cluster, pool, name, data, len(data))
    check = ReadBack(cluster, pool, name)
    check.LAG = CHUNK_SIZE  # type: ignore[misc]  # (12 pieces by default)
    try:
        for i in range(0, len(data), CHUNK_SIZE):
            check.expect(data[i:i + CHUNK_SIZE])
        with pytest.raises(TimeoutError):  # nothing is durable yet: nothing can be checked
            await asyncio.wait_for(check.advance(0), 1)
        await asyncio.wait_for(check.advance(len(data)), 30)  # the OSDs hold it all: checked, then on
        assert check.checked >= 2 * CHUNK_SIZE and check.mismatch is None
        await check.finish(len(data))
    finally:
        await check.close()
    assert check.checked == len(data)
