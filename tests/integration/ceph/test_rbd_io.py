"""Image bits on the real dev cluster c1: ImageWriter, iter_image and friends.

Each test reads like a use of ``imgstore.ceph.rbd``: stream bytes in, read them back,
and check with the admin ``rbd`` CLI what really is in the pool. The module works in a
pool of its own, removed at the end. The handle is an ``imgstore.ceph.Cluster`` on the
admin key of ``scripts/devcluster.sh env c1``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore.ceph import (
    CHUNK_SIZE,
    WRITE_WINDOW,
    Cluster,
    ImageBusy,
    ImageExists,
    ImageNotFound,
    ImageSizeMismatch,
    ImageWriter,
    PoolNotFound,
    SparsePiece,
    image_size,
    iter_image,
    list_images,
    read_range,
    remove_image,
)
from imgstore.ceph.rbd import reader, writer
from tests.conftest import DevCluster

pytestmark = [pytest.mark.ceph, pytest.mark.real_ceph, pytest.mark.anyio]

MiB = 1 << 20


@pytest.fixture(scope="module")
def c1(c1: DevCluster) -> dict[str, str]:
    """conftest's dev cluster c1 (skipped when it is not running), as the mapping of its
    ``devcluster.sh env`` that these tests index."""
    return c1.env


def cli(c1: dict[str, str], tool: str, *args: str) -> Any:
    """The admin ``ceph``/``rbd`` CLI on c1; JSON decoded when asked for."""
    out = subprocess.run([tool, "-c", c1["CEPH_CONF"], *args], capture_output=True, text=True,
                         timeout=120)
    if out.returncode:
        raise RuntimeError(f"{tool} {' '.join(args)}: {out.stderr.strip()}")
    return json.loads(out.stdout) if "json" in args else out.stdout


@pytest.fixture(scope="module")
def pool(c1: dict[str, str]) -> Iterator[str]:
    name = f"it-rbdio-{uuid.uuid4().hex[:8]}"
    cli(c1, "ceph", "osd", "pool", "create", name, "8")
    cli(c1, "ceph", "osd", "pool", "application", "enable", name, "rbd")
    try:
        yield name
    finally:
        cli(c1, "ceph", "osd", "pool", "rm", name, name, "--yes-i-really-really-mean-it")


@pytest.fixture
async def cluster(c1: dict[str, str]) -> AsyncIterator[Cluster]:
    mon_host = f"[v2:127.0.0.1:{c1['CEPH_MON_V2_PORT']},v1:127.0.0.1:{c1['CEPH_MON_PORT']}]"
    handle = Cluster(mon_host, "admin", c1["CEPH_ADMIN_KEY"], timeout=10)
    await handle.connect()
    yield handle
    await handle.close()


def new_name() -> str:
    return str(uuid.uuid4())


async def write_image(cluster: Cluster, pool: str, name: str, data: bytes, size: int | None,
                      piece: int = 100_000) -> Any:
    """Write ``data`` in pieces of an awkward size (not a divisor of the object size)."""
    async with ImageWriter(cluster, pool, name, size) as w:
        for i in range(0, len(data), piece):
            await w.write(data[i:i + piece])
    return w.result


async def read_all(cluster: Cluster, pool: str, name: str, **kw: Any) -> bytes:
    return b"".join([chunk async for chunk in iter_image(cluster, pool, name, **kw)])


def sparse_data(size: int, runs: list[tuple[int, int]]) -> bytes:
    buf = bytearray(size)
    for offset, length in runs:
        buf[offset:offset + length] = os.urandom(length)
    return bytes(buf)


# ---------------------------------------------------------------- writing and reading


async def test_random_data_reads_back_identical_with_md5_and_sha512(cluster: Cluster, pool: str,
                                                                   c1: dict[str, str]) -> None:
    data = os.urandom(21 * MiB + 12345)
    name = new_name()
    size, md5, sha512 = await write_image(cluster, pool, name, data, len(data))
    assert size == len(data)
    assert md5 == hashlib.md5(data).hexdigest()
    assert sha512 == hashlib.sha512(data).hexdigest()
    assert await read_all(cluster, pool, name) == data
    assert await image_size(cluster, pool, name) == len(data)
    info = cli(c1, "rbd", "info", f"{pool}/{name}", "--format", "json")
    assert info["format"] == 2 and info["order"] == 22
    assert set(info["features"]) >= {"layering", "exclusive-lock", "object-map", "fast-diff",
                                     "deep-flatten"}
    await remove_image(cluster, pool, name)


async def test_one_big_write_and_aligned_chunks_give_the_same_image(cluster: Cluster, pool: str) -> None:
    data = os.urandom(3 * CHUNK_SIZE)
    for piece in (len(data), CHUNK_SIZE, 4096):
        name = new_name()
        result = await write_image(cluster, pool, name, data, len(data), piece=piece)
        assert result.sha512 == hashlib.sha512(data).hexdigest()
        assert await read_all(cluster, pool, name) == data
        await remove_image(cluster, pool, name)


async def test_sparse_image_skips_zeros_and_reads_back_identical(cluster: Cluster, pool: str,
                                                                 c1: dict[str, str]) -> None:
    size = 256 * MiB
    data = sparse_data(size, [(0, MiB), (100 * MiB + 5, 70_000), (size - 4096, 4096)])
    name = new_name()
    result = await write_image(cluster, pool, name, data, size, piece=1 << 20)
    assert result.md5 == hashlib.md5(data).hexdigest()
    assert await read_all(cluster, pool, name) == data
    du = cli(c1, "rbd", "du", f"{pool}/{name}", "--format", "json")["images"][0]
    assert du["provisioned_size"] == size
    assert du["used_size"] <= 3 * CHUNK_SIZE  # three objects touched out of 64
    await remove_image(cluster, pool, name)


async def test_a_sparse_piece_is_written_by_its_runs_alone(cluster: Cluster, pool: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece known by its runs (a sparse file's extents) is written as those runs: no
    zeros written, none compared; one that is not a whole chunk is taken as its bytes."""
    runs = [(MiB, os.urandom(100_000)), (3 * MiB, os.urandom(4096))]
    whole = SparsePiece(CHUNK_SIZE, runs)
    tail = SparsePiece(MiB, [(MiB - 10, os.urandom(10))])
    writes: list[tuple[int, int]] = []
    aio = writer.aio

    def recorded(cluster: Any, loop: Any, method: Any, data: Any, at: int) -> Any:
        writes.append((at, len(data)))
        return aio(cluster, loop, method, data, at)

    monkeypatch.setattr(writer, "aio", recorded)
    name = new_name()
    async with ImageWriter(cluster, pool, name, CHUNK_SIZE + MiB, checksums=False) as w:
        await w.write(whole)
        await w.write(tail)
    assert writes[:2] == [(MiB, 100_000), (3 * MiB, 4096)], "the runs, exactly"
    assert writes[2][0] >= CHUNK_SIZE and sum(n for _, n in writes[2:]) <= 64 * 1024
    assert await read_all(cluster, pool, name) == bytes(whole) + bytes(tail)
    await remove_image(cluster, pool, name)


async def test_sparse_pieces_fly_by_their_share_of_the_window(cluster: Cluster, pool: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk's buffer holds a slot of the write window until its write lands; a sparse
    piece holds only its runs, so four times as many of them fly (a sparse file's add)."""
    held: list[asyncio.Future[int]] = []

    def held_back(cluster: Any, loop: asyncio.AbstractEventLoop, method: Any, data: Any, at: int) -> Any:
        held.append(loop.create_future())
        if landing:
            held[-1].set_result(0)
        return held[-1]

    monkeypatch.setattr(writer, "aio", held_back)
    for make, flying in ((lambda: os.urandom(CHUNK_SIZE), WRITE_WINDOW),
                         (lambda: SparsePiece(CHUNK_SIZE, [(MiB, os.urandom(4096))]), 4 * WRITE_WINDOW)):
        held.clear()
        landing = False
        name = new_name()
        async with ImageWriter(cluster, pool, name, (flying + 1) * CHUNK_SIZE, checksums=False) as w:
            try:
                for i in range(flying + 1):
                    write = asyncio.ensure_future(w.write(make()))
                    done, _ = await asyncio.wait({write}, timeout=0.5)
                    assert (write in done) == (i < flying), f"write {i + 1} of {flying} in flight"
                assert len(held) == flying
                held[0].set_result(0)
                await asyncio.wait_for(write, 10)
            finally:  # the writes land, whatever happened (an abort waits for them)
                landing = True
                for f in held:
                    if not f.done():
                        f.set_result(0)
        await remove_image(cluster, pool, name)


async def test_holes_are_zeros_without_reading_objects_that_do_not_exist(
        cluster: Cluster, pool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    size = 64 * MiB + 100
    data = sparse_data(size, [(3 * MiB, 2 * MiB), (40 * MiB, 100), (size - 50, 50)])
    name = new_name()
    await write_image(cluster, pool, name, data, size, piece=CHUNK_SIZE)
    assert await read_all(cluster, pool, name) == data
    assert await read_all(cluster, pool, name, start=5 * MiB - 7, end=41 * MiB) == data[5 * MiB - 7:41 * MiB]
    reads: list[int] = []
    aio = reader.aio

    def counted(cluster: Any, loop: Any, method: Any, *args: Any) -> Any:
        reads.append(args[0])
        return aio(cluster, loop, method, *args)

    monkeypatch.setattr(reader, "aio", counted)
    assert await read_all(cluster, pool, name) == data
    assert reads == [0, CHUNK_SIZE, 40 * MiB, 64 * MiB]  # the four objects written, no other
    await remove_image(cluster, pool, name)


async def test_an_image_without_fast_diff_is_read_in_full(cluster: Cluster, pool: str,
                                                          c1: dict[str, str]) -> None:
    name = new_name()
    data = sparse_data(20 * MiB, [(9 * MiB, 3)])
    path = Path(f"/tmp/imgstore-test-{name}")
    path.write_bytes(data)
    try:
        cli(c1, "rbd", "import", "--image-feature", "layering", str(path), f"{pool}/{name}")
    finally:
        path.unlink()
    assert await read_all(cluster, pool, name) == data
    await remove_image(cluster, pool, name)


async def test_a_clone_reads_its_parents_data_in_its_holes(cluster: Cluster, pool: str,
                                                           c1: dict[str, str]) -> None:
    parent, child = new_name(), new_name()
    data = sparse_data(16 * MiB, [(MiB, 5), (13 * MiB, 4096)])
    await write_image(cluster, pool, parent, data, len(data), piece=CHUNK_SIZE)
    cli(c1, "rbd", "snap", "create", f"{pool}/{parent}@base")
    cli(c1, "rbd", "snap", "protect", f"{pool}/{parent}@base")
    cli(c1, "rbd", "clone", f"{pool}/{parent}@base", f"{pool}/{child}")
    assert await read_all(cluster, pool, child) == data
    cli(c1, "rbd", "rm", f"{pool}/{child}")
    await remove_image(cluster, pool, parent, purge_snapshots=True)


async def test_zeros_then_data_in_a_reused_buffer_read_back_identical(cluster: Cluster,
                                                                       pool: str) -> None:
    # every chunk is filled in pieces; those starting with zeros take a recycled buffer
    # only at their first non-zero byte, and its old bytes must not leak into the image
    data = b"".join(os.urandom(CHUNK_SIZE) if i % 2 == 0 else
                    bytes(CHUNK_SIZE // 2 + 3) + os.urandom(CHUNK_SIZE // 2 - 3) for i in range(12))
    data += bytes(1000)  # a tail of zeros, shorter than a chunk
    name = new_name()
    result = await write_image(cluster, pool, name, data, len(data), piece=65_536)
    assert (result.md5, result.sha512) == (hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest())
    assert await read_all(cluster, pool, name) == data
    await remove_image(cluster, pool, name)


async def test_all_zero_image_writes_no_object(cluster: Cluster, pool: str,
                                               c1: dict[str, str]) -> None:
    name = new_name()
    result = await write_image(cluster, pool, name, bytes(40 * MiB), None, piece=CHUNK_SIZE)
    assert result.size == 40 * MiB
    assert await image_size(cluster, pool, name) == 40 * MiB
    du = cli(c1, "rbd", "du", f"{pool}/{name}", "--format", "json")["images"][0]
    assert du["used_size"] == 0
    await remove_image(cluster, pool, name)


async def test_unknown_size_grows_and_trims_to_the_bytes_received(cluster: Cluster, pool: str) -> None:
    for length in (70 * MiB + 123, 3 * CHUNK_SIZE, 1, 0):
        data = os.urandom(length - 4 * MiB) + bytes(4 * MiB) if length > 5 * MiB else os.urandom(length)
        name = new_name()
        result = await write_image(cluster, pool, name, data, None, piece=333_333)
        assert result.size == length
        assert result.sha512 == hashlib.sha512(data).hexdigest()
        assert await image_size(cluster, pool, name) == length
        assert await read_all(cluster, pool, name) == data
        await remove_image(cluster, pool, name)


async def test_bytearray_and_memoryview_pieces_are_copied_not_aliased(cluster: Cluster,
                                                                    pool: str) -> None:
    import array

    words = array.array("I", range(3 * MiB // 4))  # a memoryview of 4-byte items
    data = words.tobytes() + b"tail"
    name = new_name()
    async with ImageWriter(cluster, pool, name, len(data)) as w:
        await w.write(memoryview(words))
        buf = bytearray(b"tail")
        await w.write(buf)
        buf[:] = b"XXXX"  # the caller reuses its buffer at once
    assert w.result is not None and w.result.size == len(data)
    assert await read_all(cluster, pool, name) == data
    await remove_image(cluster, pool, name)


async def test_lent_buffers_are_written_from_and_given_back_once_done_with(cluster: Cluster,
                                                                          pool: str) -> None:
    """A lent buffer is written straight from, so it must not come back before librbd
    has taken its bytes: each release scribbles over its buffer at once, as a receiver
    reusing it would, and the image still holds the bytes sent. Whole aligned chunks,
    zeros, a short piece that is copied: each release comes exactly once."""
    chunk = 4 * MiB
    pieces = [os.urandom(chunk), bytes(chunk), os.urandom(chunk), os.urandom(MiB + 3)]
    released: list[int] = []

    def release_of(i: int, buf: bytearray) -> Any:
        def release() -> None:
            released.append(i)
            buf[:] = b"\xff" * len(buf)  # reused at once
        return release

    name = new_name()
    async with ImageWriter(cluster, pool, name, sum(map(len, pieces)), checksums=False) as w:
        for i, data in enumerate(pieces):
            buf = bytearray(data)
            await w.write(buf, release_of(i, buf))
    assert sorted(released) == [0, 1, 2, 3]
    assert await read_all(cluster, pool, name) == b"".join(pieces)
    await remove_image(cluster, pool, name)


async def test_lent_buffers_come_back_only_after_their_writes_even_when_a_wait_is_cancelled(
        cluster: Cluster, pool: str) -> None:
    """librbd writes from a lent buffer itself (no copy): a wait for the writes that is
    cancelled (settle() here; a PUT's end in the server) must not give the buffers back
    while librbd still sends them. Each release scribbles over its buffer at once."""
    chunk = 4 * MiB
    pieces = [os.urandom(chunk) for _ in range(3)]
    released: list[int] = []
    name = new_name()
    w = ImageWriter(cluster, pool, name, len(pieces) * chunk, checksums=False)
    await w.open()
    for i, data in enumerate(pieces):
        buf = bytearray(data)

        def release(i: int = i, buf: bytearray = buf) -> None:
            released.append(i)
            buf[:] = b"\xff" * len(buf)  # reused at once, as the upload's receiver does
        await w.write(buf, release)
    waiting = asyncio.ensure_future(w.settle())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await w.commit()
    assert sorted(released) == [0, 1, 2]
    assert await read_all(cluster, pool, name) == b"".join(pieces)
    await remove_image(cluster, pool, name)


async def test_a_lent_chunk_with_holes_comes_back_at_once_a_dense_one_once_written(
        cluster: Cluster, pool: str) -> None:
    """A chunk with holes is written from copies of its data runs: its lent buffer comes
    back as soon as write() returns (a sparse upload then holds its runs in flight, not
    4 MiB buffers of mostly zeros), and scribbling over it at once changes nothing. A
    dense chunk is written from the buffer itself and comes back only once written."""
    chunk = 4 * MiB
    sparse = bytes(MiB) + os.urandom(MiB) + bytes(MiB) + os.urandom(MiB)
    dense = os.urandom(chunk)
    released: list[str] = []
    name = new_name()
    async with ImageWriter(cluster, pool, name, 2 * chunk, checksums=False) as w:
        for label, data in (("sparse", sparse), ("dense", dense)):
            buf = bytearray(data)

            def release(label: str = label, buf: bytearray = buf) -> None:
                released.append(label)
                buf[:] = b"\xff" * len(buf)  # reused at once, as the upload's receiver does
            await w.write(buf, release)
            if label == "sparse":
                assert released == ["sparse"], "the sparse chunk's buffer is free once its runs are copied"
        assert released == ["sparse"], "the dense chunk's buffer is librbd's until its write lands"
    assert released == ["sparse", "dense"]
    assert await read_all(cluster, pool, name) == sparse + dense
    await remove_image(cluster, pool, name)


async def test_two_uploads_at_once_on_one_handle(cluster: Cluster, pool: str) -> None:
    blobs = {new_name(): os.urandom(9 * MiB + i) for i in range(2)}
    results = await asyncio.gather(*(write_image(cluster, pool, n, d, len(d), piece=65536)
                                     for n, d in blobs.items()))
    for (name, data), result in zip(blobs.items(), results, strict=True):
        assert result.sha512 == hashlib.sha512(data).hexdigest()
        assert await read_all(cluster, pool, name) == data
        await remove_image(cluster, pool, name)


async def test_explicit_commit_inside_the_block(cluster: Cluster, pool: str) -> None:
    name = new_name()
    async with ImageWriter(cluster, pool, name, 10) as w:
        await w.write(b"0123456789")
        assert await w.commit() == (10, hashlib.md5(b"0123456789").hexdigest(),
                                    hashlib.sha512(b"0123456789").hexdigest())
    assert await read_range(cluster, pool, name, 0, 100) == b"0123456789"
    await remove_image(cluster, pool, name)


async def test_range_reads(cluster: Cluster, pool: str) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 777)
    name = new_name()
    await write_image(cluster, pool, name, data, len(data), piece=CHUNK_SIZE)
    for start, end in [(0, 1), (5, CHUNK_SIZE + 3), (CHUNK_SIZE - 1, 2 * CHUNK_SIZE + 1),
                       (len(data) - 10, None), (len(data), None), (100, 100)]:
        assert await read_all(cluster, pool, name, start=start, end=end) == data[start:end]
    pieces = [len(p) async for p in iter_image(cluster, pool, name, start=10, end=2 * CHUNK_SIZE)]
    assert pieces == [CHUNK_SIZE - 10, CHUNK_SIZE]  # aligned to objects after the first
    assert await read_all(cluster, pool, name, start=7, end=len(data) + MiB) == data[7:]
    assert await read_range(cluster, pool, name, CHUNK_SIZE - 2, 4) == data[CHUNK_SIZE - 2:CHUNK_SIZE + 2]
    with pytest.raises(ValueError):
        await read_all(cluster, pool, name, start=len(data) + 1)
    await remove_image(cluster, pool, name)


async def test_a_reader_that_stops_early_closes_the_image(cluster: Cluster, pool: str) -> None:
    data = os.urandom(6 * CHUNK_SIZE)
    name = new_name()
    await write_image(cluster, pool, name, data, len(data), piece=CHUNK_SIZE)
    reader = iter_image(cluster, pool, name, chunk=MiB, readahead=4)
    assert await reader.__anext__() == data[:MiB]
    await reader.aclose()  # reads in flight land, the image is closed: removable at once
    await remove_image(cluster, pool, name)
    assert name not in await list_images(cluster, pool)


@pytest.mark.parametrize("slow", ["aio_read", "diff_iterate"])
async def test_a_reader_cancelled_while_it_waits_closes_the_image_only_after_its_calls(
    cluster: Cluster, pool: str, monkeypatch: pytest.MonkeyPatch, slow: str
) -> None:
    """An export whose client hangs up is cancelled inside ``await`` of a read, or of the
    object map's ``diff_iterate`` (a download hung up right after its status line). The
    call's task was cancelled with it and the image closed under librbd still in it: a
    test server died in a messenger thread (pthread_mutex_lock on freed memory)."""
    data = os.urandom(8 * CHUNK_SIZE)
    name = new_name()
    await write_image(cluster, pool, name, data, len(data), piece=CHUNK_SIZE)
    in_flight: list[str] = []
    closed_with: list[int] = []
    real_open = reader.open_read_only

    async def open_watched(*args: Any) -> tuple[Any, Any, int]:
        ioctx, image, size = await real_open(*args)
        real_read, real_diff, real_close = image.aio_read, image.diff_iterate, image.close

        def aio_read(off: int, length: int, oncomplete: Any, *rest: Any) -> Any:
            in_flight.append("aio_read")

            def landed(completion: Any, *data: Any) -> None:
                if slow == "aio_read":
                    time.sleep(0.5)  # librbd's thread, slow: the consumer gives up meanwhile
                in_flight.remove("aio_read")
                oncomplete(completion, *data)
            return real_read(off, length, landed, *rest)

        def diff_iterate(*args: Any, **kwargs: Any) -> Any:
            in_flight.append("diff_iterate")
            try:
                if slow == "diff_iterate":
                    time.sleep(0.5)  # a pool thread inside librbd: the consumer gives up meanwhile
                return real_diff(*args, **kwargs)
            finally:
                in_flight.remove("diff_iterate")

        def close() -> None:
            closed_with.append(len(in_flight))
            real_close()

        proxy = types.SimpleNamespace(aio_read=aio_read, diff_iterate=diff_iterate, close=close)
        return ioctx, _Proxy(image, proxy), size

    monkeypatch.setattr(reader, "open_read_only", open_watched)
    stream = iter_image(cluster, pool, name, chunk=MiB, readahead=1)
    consumer = asyncio.ensure_future(stream.__anext__())
    for _ in range(1000):  # until it is inside `await` of the slow call (the open may be slow)
        if slow in in_flight:
            break
        await asyncio.sleep(0.01)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await stream.aclose()
    assert closed_with == [0], f"the image was closed with {closed_with} calls in flight"
    await remove_image(cluster, pool, name)


class _Proxy:
    """An rbd.Image with some of its methods replaced."""

    def __init__(self, image: Any, over: Any) -> None:
        self._image, self._over = image, over

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._over, attr, None) or getattr(self._image, attr)


# ---------------------------------------------------------------- all or nothing


async def test_short_stream_is_an_error_and_leaves_no_image(cluster: Cluster, pool: str) -> None:
    name = new_name()
    with pytest.raises(ImageSizeMismatch, match="got 5242880 bytes, 6291456 were announced"):
        await write_image(cluster, pool, name, os.urandom(5 * MiB), 6 * MiB)
    assert name not in await list_images(cluster, pool)


async def test_long_stream_is_an_error_and_leaves_no_image(cluster: Cluster, pool: str) -> None:
    name = new_name()
    with pytest.raises(ImageSizeMismatch, match="more than the announced 5242880 bytes"):
        await write_image(cluster, pool, name, os.urandom(5 * MiB + 1), 5 * MiB)
    assert name not in await list_images(cluster, pool)


async def test_exception_mid_write_leaves_no_image(cluster: Cluster, pool: str) -> None:
    name = new_name()

    class SourceBroke(Exception):
        pass

    with pytest.raises(SourceBroke):
        async with ImageWriter(cluster, pool, name, 64 * MiB) as w:
            for _ in range(10):
                await w.write(os.urandom(MiB))
            assert name in await list_images(cluster, pool)
            raise SourceBroke("the download was cut halfway")
    assert name not in await list_images(cluster, pool)


async def test_cancelled_write_leaves_no_image(cluster: Cluster, pool: str) -> None:
    name = new_name()
    started = asyncio.Event()

    async def upload() -> None:
        async with ImageWriter(cluster, pool, name, None) as w:
            while True:
                await w.write(os.urandom(MiB))
                started.set()

    task = asyncio.create_task(upload())
    await started.wait()
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert name not in await list_images(cluster, pool)


async def test_explicit_abort_removes_the_image(cluster: Cluster, pool: str) -> None:
    name = new_name()
    w = ImageWriter(cluster, pool, name, 8 * MiB)
    await w.open()
    await w.write(os.urandom(5 * MiB))
    await w.abort()
    await w.abort()  # twice is fine
    assert name not in await list_images(cluster, pool)
    with pytest.raises(RuntimeError):
        await w.write(b"more")


async def test_existing_name_is_refused_and_the_image_kept(cluster: Cluster, pool: str) -> None:
    name = new_name()
    await write_image(cluster, pool, name, b"first", 5)
    with pytest.raises(ImageExists):
        await write_image(cluster, pool, name, b"second", 6)
    assert await read_range(cluster, pool, name, 0, 5) == b"first"
    await remove_image(cluster, pool, name)


async def test_missing_pool_and_image_are_named_errors(cluster: Cluster, pool: str) -> None:
    with pytest.raises(PoolNotFound):
        await write_image(cluster, "no-such-pool", new_name(), b"x", 1)
    with pytest.raises(PoolNotFound):
        await list_images(cluster, "no-such-pool")
    with pytest.raises(ImageNotFound):
        await image_size(cluster, pool, new_name())
    with pytest.raises(ImageNotFound):
        await read_all(cluster, pool, new_name())
    with pytest.raises(ImageNotFound):
        await remove_image(cluster, pool, new_name())
    await remove_image(cluster, pool, new_name(), missing_ok=True)


async def test_a_create_cut_short_is_removed_though_it_cannot_be_opened(c1: dict[str, str], cluster: Cluster,
                                                                        pool: str) -> None:
    """A writer killed between the image's directory entry and its header leaves an image
    that is listed but cannot be opened; removing it (missing_ok, as a failed add's
    clean-up does) clears it instead of taking it for gone (a CI run saw it left behind)."""
    name = new_name()
    cli(c1, "rbd", "create", "--size", "16M", f"{pool}/{name}")
    image_id = cli(c1, "rbd", "info", "--format", "json", f"{pool}/{name}")["id"]
    cli(c1, "rados", "-p", pool, "rm", f"rbd_header.{image_id}")
    assert name in await list_images(cluster, pool)
    with pytest.raises(ImageNotFound):
        await image_size(cluster, pool, name)
    await remove_image(cluster, pool, name, missing_ok=True)
    assert name not in await list_images(cluster, pool)


# ---------------------------------------------------------------- removing what is in use


async def test_remove_of_an_image_with_a_protected_snapshot_is_busy(cluster: Cluster, pool: str,
                                                                    c1: dict[str, str]) -> None:
    name = new_name()
    await write_image(cluster, pool, name, os.urandom(MiB), MiB)
    cli(c1, "rbd", "snap", "create", f"{pool}/{name}@snap")
    cli(c1, "rbd", "snap", "protect", f"{pool}/{name}@snap")
    with pytest.raises(ImageBusy, match=r"has snapshots: snap \(protected\)"):
        await remove_image(cluster, pool, name)
    assert name in await list_images(cluster, pool)
    await remove_image(cluster, pool, name, purge_snapshots=True)
    assert name not in await list_images(cluster, pool)


async def test_remove_of_an_image_with_a_clone_is_busy_even_when_purging(
        cluster: Cluster, pool: str, c1: dict[str, str]) -> None:
    name, child = new_name(), new_name()
    await write_image(cluster, pool, name, os.urandom(MiB), MiB)
    cli(c1, "rbd", "snap", "create", f"{pool}/{name}@snap")
    cli(c1, "rbd", "snap", "protect", f"{pool}/{name}@snap")
    cli(c1, "rbd", "clone", f"{pool}/{name}@snap", f"{pool}/{child}")
    for purge in (False, True):
        with pytest.raises(ImageBusy, match=f"has clones: {pool}/{child}"):
            await remove_image(cluster, pool, name, purge_snapshots=purge)
    cli(c1, "rbd", "rm", f"{pool}/{child}")
    await remove_image(cluster, pool, name, purge_snapshots=True)
    assert name not in await list_images(cluster, pool)


async def test_remove_of_an_image_open_for_writing_is_busy(cluster: Cluster, pool: str) -> None:
    name = new_name()
    w = ImageWriter(cluster, pool, name, MiB)
    await w.open()  # a writer holds the image open: a watcher
    try:
        with pytest.raises(ImageBusy, match="open by another client"):
            await remove_image(cluster, pool, name)
    finally:
        await w.abort()
    assert name not in await list_images(cluster, pool)


async def test_a_watcher_keeps_even_the_snapshots_a_purge_would_remove(
        cluster: Cluster, pool: str, c1: dict[str, str]) -> None:
    name = new_name()
    await write_image(cluster, pool, name, os.urandom(MiB), MiB)
    cli(c1, "rbd", "snap", "create", f"{pool}/{name}@snap")
    # `rbd watch` holds the image open until its stdin gets a line (or closes)
    watch = subprocess.Popen(["rbd", "-c", c1["CEPH_CONF"], "watch", f"{pool}/{name}"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if cli(c1, "rbd", "status", f"{pool}/{name}", "--format", "json")["watchers"]:
                break
            await asyncio.sleep(0.1)
        with pytest.raises(ImageBusy, match="open by another client"):
            await remove_image(cluster, pool, name, purge_snapshots=True)
        snaps = cli(c1, "rbd", "snap", "ls", f"{pool}/{name}", "--format", "json")
        assert [s["name"] for s in snaps] == ["snap"]
    finally:
        watch.communicate(b"\n", timeout=30)
    await remove_image(cluster, pool, name, purge_snapshots=True)
    assert name not in await list_images(cluster, pool)


async def test_list_images(cluster: Cluster, pool: str) -> None:
    names = sorted(new_name() for _ in range(3))
    for n in names:
        await write_image(cluster, pool, n, b"", 0)
    assert set(names) <= set(await list_images(cluster, pool))
    for n in names:
        await remove_image(cluster, pool, n)
    assert not set(names) & set(await list_images(cluster, pool))
