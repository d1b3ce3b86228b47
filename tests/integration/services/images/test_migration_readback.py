"""The checks of a migration's copy (services/images/migrate.py): ``OsdChecksums`` (the
destination's OSDs checksum each object, ``ceph.ImageChecksums``) and ``ReadBack`` (the
copy read back), on the real dev cluster c1: each must find the piece that differs from
what was read at the source, whether the source's bytes or the copy's objects are wrong.

The handle and the pool are those of tests/integration/ceph/test_rbd_io.py.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import rbd

from imgstore.ceph import CHUNK_SIZE, Cluster, ImageWriter, osd_checksums_available, zero_block
from imgstore.errors import ApiError
from imgstore.services.images import migrate
from imgstore.services.images.migrate import CopyCheck, OsdChecksums, ReadBack
from tests.integration.ceph.test_rbd_io import c1, cluster, new_name, pool, write_image  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.ceph, pytest.mark.real_ceph, pytest.mark.anyio]

CHECKS = pytest.mark.parametrize("kind", [OsdChecksums, ReadBack], ids=["osd-checksums", "read-back"])
KiB = 1 << 10


async def check_copy(kind: type[CopyCheck], cluster: Cluster, pool: str, name: str, sent: bytes,
                     durable_steps: list[int]) -> CopyCheck:
    """Check image ``name`` against ``sent`` as the copy would: the source's pieces come
    first, the writer's ``durable`` moves through ``durable_steps``, then the copy ends."""
    check = kind(cluster, pool, name)
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


async def data_object(cluster: Cluster, pool: str, name: str, index: int) -> str:
    """The RADOS name of the image's data object ``index``."""
    def find() -> str:
        ioctx = cluster.handle.open_ioctx(pool)
        try:
            with rbd.Image(ioctx, name, read_only=True) as image:
                return f"{image.stat()['block_name_prefix']}.{index:016x}"
        finally:
            ioctx.close()

    return await asyncio.to_thread(find)


async def rados(cluster: Cluster, pool: str, fn: Any) -> Any:
    """``fn(ioctx)`` on the pool, in a thread: what an admin's ``rados`` CLI would do."""
    def run() -> Any:
        ioctx = cluster.handle.open_ioctx(pool)
        try:
            return fn(ioctx)
        finally:
            ioctx.close()

    return await asyncio.to_thread(run)


def sparse_data() -> bytes:
    """Data, a whole object of zeros (no object), an object with holes inside (zero grains
    are not written) and one that ends early (its zero tail is not written), a short tail."""
    hole_inside = os.urandom(CHUNK_SIZE // 2) + bytes(512 * KiB) + os.urandom(CHUNK_SIZE // 2 - 512 * KiB)
    ends_early = os.urandom(CHUNK_SIZE // 4) + bytes(CHUNK_SIZE - CHUNK_SIZE // 4)
    return os.urandom(CHUNK_SIZE) + bytes(CHUNK_SIZE) + hole_inside + ends_early + os.urandom(1000)


@CHECKS
async def test_a_copy_with_the_bytes_sent_checks_clean(kind: type[CopyCheck], cluster: Cluster, pool: str) -> None:
    data = sparse_data()
    name = new_name()
    await write_image(cluster, pool, name, data, len(data))
    check = await check_copy(kind, cluster, pool, name, data, [CHUNK_SIZE, 3 * CHUNK_SIZE])
    assert (check.mismatch, check.checked) == (None, len(data))


@CHECKS
async def test_a_copy_that_differs_by_one_bit_is_caught_at_its_piece(kind: type[CopyCheck], cluster: Cluster,
                                                                     pool: str) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 1000)
    name = new_name()
    await write_image(cluster, pool, name, data, len(data))
    sent = bytearray(data)
    sent[2 * CHUNK_SIZE + 77] ^= 1
    check = await check_copy(kind, cluster, pool, name, bytes(sent), [])
    assert check.mismatch == 2 * CHUNK_SIZE


@CHECKS
@pytest.mark.parametrize("damage", ["a flipped bit", "bytes in a hole", "a lost tail", "a lost object"])
async def test_a_corrupted_object_of_the_copy_is_caught(kind: type[CopyCheck], damage: str, cluster: Cluster,
                                                        pool: str) -> None:
    """The source's bytes are right; an object of the destination was damaged after the
    OSDs acknowledged it."""
    data = sparse_data()
    name = new_name()
    await write_image(cluster, pool, name, data, len(data))
    index = {"a flipped bit": 0, "bytes in a hole": 2, "a lost tail": 3, "a lost object": 2}[damage]
    obj = await data_object(cluster, pool, name, index)
    if damage == "a flipped bit":
        byte = data[CHUNK_SIZE - 5]
        await rados(cluster, pool, lambda io: io.write(obj, bytes([byte ^ 0x10]), CHUNK_SIZE - 5))
    elif damage == "bytes in a hole":  # inside the zero grains the writer skipped
        await rados(cluster, pool, lambda io: io.write(obj, b"\x01", CHUNK_SIZE // 2 + 4096))
    elif damage == "a lost tail":
        await rados(cluster, pool, lambda io: io.trunc(obj, CHUNK_SIZE // 8))
    else:
        await rados(cluster, pool, lambda io: io.remove_object(obj))
    check = await check_copy(kind, cluster, pool, name, data, [CHUNK_SIZE])
    assert check.mismatch == index * CHUNK_SIZE


class Progress:
    """What _copy tells GetTaskProgress, kept."""

    percent = 0

    def __init__(self) -> None:
        self.stages: list[str] = []

    async def update(self, percent: int, force: bool = False, stage: str | None = None, **_: Any) -> None:
        if stage:
            self.stages.append(stage)


class Storage:
    def __init__(self, pool: str) -> None:
        self.pool_name, self.uuid = pool, new_name()


async def test_a_copy_damaged_behind_the_writer_fails_the_migration(cluster: Cluster, pool: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole copy (source and destination in two pools of c1): an object of the
    destination is damaged once the OSDs acknowledged it, before its check; the copy
    fails naming the piece (migrate() then removes the image, as for any failure)."""
    other = f"it-migrate-{new_name()[:8]}"
    await asyncio.to_thread(cluster.handle.create_pool, other)
    try:
        data = os.urandom(6 * CHUNK_SIZE)
        name = new_name()
        await write_image(cluster, pool, name, data, len(data))
        assert osd_checksums_available() and isinstance(migrate.new_check(cluster, other, name), OsdChecksums)
        real_check = OsdChecksums._check

        async def damage_then_check(self: CopyCheck, end: int) -> None:
            if self.checked <= 4 * CHUNK_SIZE < end:
                obj = await data_object(cluster, other, name, 4)
                await rados(cluster, other, lambda io: io.write(obj, b"\x00\x00\x00", 1000))
            await real_check(self, end)

        monkeypatch.setattr(OsdChecksums, "_check", damage_then_check)
        with pytest.raises(ApiError, match=f"differ.* at byte {4 * CHUNK_SIZE}"):
            await migrate._copy(cluster, Storage(pool), cluster, Storage(other), name,  # type: ignore[arg-type]
                                Progress())  # type: ignore[arg-type]
    finally:
        await asyncio.to_thread(cluster.handle.delete_pool, other)


@CHECKS
async def test_the_copy_waits_while_too_much_of_it_is_unchecked(kind: type[CopyCheck], cluster: Cluster,
                                                                pool: str) -> None:
    """The source's pieces are held until checked: beyond LAG bytes the copy waits for the
    check instead of holding more."""
    data = os.urandom(3 * CHUNK_SIZE)
    name = new_name()
    await write_image(cluster, pool, name, data, len(data))
    check = kind(cluster, pool, name)
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


@CHECKS
async def test_the_copy_goes_on_when_a_slow_write_holds_durable_back(kind: type[CopyCheck], cluster: Cluster,
                                                                     pool: str) -> None:
    """A thin copy: the writes of the holes (none at all) complete around the slow write
    of the data before them, so the writer's ``durable`` stays there while the copy runs
    LAG bytes ahead. The check then has the writer settle, instead of waiting for a
    ``durable`` that nobody would report any more (a bench migration hung so)."""
    data = os.urandom(CHUNK_SIZE) + bytes(19 * CHUNK_SIZE)
    name = new_name()
    await write_image(cluster, pool, name, data, len(data))
    check = kind(cluster, pool, name)
    settled: list[int] = []
    written = 0

    async def settle() -> int:  # the writes in flight done: all that was written is durable
        settled.append(check.checked)
        return written

    try:
        for i in range(20):
            written += CHUNK_SIZE
            check.expect(data[:CHUNK_SIZE] if i == 0 else zero_block(CHUNK_SIZE))
            await asyncio.wait_for(check.advance(0, settle), 30)  # the first write is still in flight
        await check.finish(len(data))
    finally:
        await check.close()
    assert settled and (check.mismatch, check.checked) == (None, len(data))


async def test_an_image_writer_makes_objects_the_osd_checksums_can_name(cluster: Cluster, pool: str) -> None:
    """ImageChecksums assumes one object per CHUNK_SIZE bytes, named by their index."""
    name = new_name()
    async with ImageWriter(cluster, pool, name, size=2 * CHUNK_SIZE) as w:
        await w.write(os.urandom(2 * CHUNK_SIZE))
    obj = await data_object(cluster, pool, name, 1)
    size, _ = await rados(cluster, pool, lambda io: io.stat(obj))
    assert size == CHUNK_SIZE
