"""The read-back of a migration's copy (services/images/migrate.py ``ReadBack``) on the
real dev cluster c1: it must find the piece that differs from what was read at the source.

The handle and the pool are those of tests/integration/ceph/test_rbd_io.py.
"""
from __future__ import annotations

import asyncio
import os
import zlib

import pytest

from imgstore.ceph import CHUNK_SIZE, Cluster
from imgstore.services.images.migrate import ReadBack
from tests.integration.ceph.test_rbd_io import c1, cluster, new_name, pool, write_image  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.ceph, pytest.mark.anyio]


async def read_back(cluster: Cluster, pool: str, name: str, sent: bytes, durable_steps: list[int]) -> ReadBack:
    """Check image ``name`` against ``sent`` as the copy would: the source's CRCs come
    first, the writer's ``durable`` moves through ``durable_steps``, then the copy ends."""
    loop = asyncio.get_running_loop()
    check = ReadBack(cluster, pool, name)
    for i in range(0, len(sent), CHUNK_SIZE):
        crc: asyncio.Future[int] = loop.create_future()
        crc.set_result(zlib.crc32(sent[i:i + CHUNK_SIZE]))
        check.expect(crc)
    try:
        for durable in durable_steps:
            check.advance(durable)
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
