"""ClusterRegistry's leases (issue 13 point 9): a replaced handle closes when its last
stream ends, at once when none holds it, and a lease dropped unreleased lets go too."""
from __future__ import annotations

import asyncio
import gc

import pytest

from imgstore.services.node.handles import ClusterRegistry

pytestmark = pytest.mark.anyio


class FakeCluster:
    closed = False

    async def close(self) -> None:
        self.closed = True


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_leased_handle_outlives_its_replacement_until_the_last_lease_ends() -> None:
    registry = ClusterRegistry(str, 1.0)
    old, new = FakeCluster(), FakeCluster()
    await registry.adopt("bs", ("mon", "k"), old)  # type: ignore[arg-type]
    first, second = registry.hold(old), registry.hold(old)  # type: ignore[arg-type]
    await registry.adopt("bs", ("mon2", "k"), new)  # type: ignore[arg-type]  # a mon change
    await settle()
    assert not old.closed, "streams are still reading from it"
    first.release()
    first.release()  # idempotent: one lease counts once
    await settle()
    assert not old.closed
    second.release()
    await settle()
    assert old.closed and not new.closed


async def test_an_unleased_handle_closes_at_once_and_a_dropped_lease_lets_go() -> None:
    registry = ClusterRegistry(str, 1.0)
    plain, leased = FakeCluster(), FakeCluster()
    await registry.adopt("a", ("m", "k"), plain)  # type: ignore[arg-type]
    await registry.forget("a")  # a Delete
    await settle()
    assert plain.closed
    await registry.adopt("b", ("m", "k"), leased)  # type: ignore[arg-type]
    lease = registry.hold(leased)  # type: ignore[arg-type]
    await registry.forget("b")
    await settle()
    assert not leased.closed
    del lease  # a response that never started its stream
    gc.collect()
    await settle()
    assert leased.closed
