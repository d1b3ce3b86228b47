"""A stream's freed buffers go back to the kernel a moment after it ended: one trim of
the heap per burst of streams, in the handle's pool (imgstore/ceph/rbd/_common.py)."""
from __future__ import annotations

import asyncio
import gc
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgstore import memory
from imgstore.ceph.rbd import _common

pytestmark = pytest.mark.anyio


class Handle:
    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1)


async def test_streams_ending_together_trim_the_heap_once_after_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[float] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(memory, "trim_heap", lambda: trims.append(loop.time()))
    monkeypatch.setattr(memory, "collect_old_garbage", lambda: None)  # a whole pytest worker's: slow, not this test's
    monkeypatch.setattr(_common, "TRIM_DELAY", 0.2)
    monkeypatch.setattr(_common, "_trim", None)
    handle = Handle()
    ended = loop.time()
    for _ in range(5):  # five Range requests of one export, say
        _common.trim_soon(handle)
    await asyncio.sleep(0.1)
    assert trims == [], "not before the last buffers are dropped"
    await asyncio.sleep(0.3)
    assert len(trims) == 1 and trims[0] - ended >= 0.2
    _common.trim_soon(handle)  # a later stream: a trim of its own
    await asyncio.sleep(0.4)
    assert len(trims) == 2
    handle.executor.shutdown()


class _Cycle:
    """What a stream leaves behind: objects that refer to each other."""

    def __init__(self) -> None:
        self.me = self


async def test_a_streams_cyclic_garbage_in_the_old_generation_is_collected_before_the_trim(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's collector runs its full passes rarely (memory.tune_garbage_collector):
    what a stream kept alive long enough to reach the old generation stayed there, dead,
    for hundreds of streams (RSS grew ~0.25 MiB an upload)."""
    monkeypatch.setattr(memory, "trim_heap", lambda: None)
    monkeypatch.setattr(_common, "TRIM_DELAY", 0.05)
    monkeypatch.setattr(_common, "_trim", None)
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)  # as the server runs
    try:
        left = _Cycle()
        gc.collect()  # it lived through the stream: the old generation
        dead = weakref.ref(left)
        del left
        handle = Handle()
        _common.trim_soon(handle)
        await asyncio.sleep(0.2)
        handle.executor.shutdown()
        assert dead() is None
    finally:
        gc.set_threshold(*thresholds)
