"""How storages spread over live nodes: fair shares, and what one heartbeat takes or gives.

The database side (compare-and-set claims, expiry, take-over) is proven on PostgreSQL
in tests/integration/services/node/test_multinode.py; here is the arithmetic each node applies.
"""
from __future__ import annotations

import random

import pytest

from imgstore.services.node.leases import fair_share, to_take
from imgstore.services.node.membership import beat_seconds, lease_seconds


def test_fair_share_leaves_room_for_every_storage() -> None:
    for storages in range(0, 40):
        for nodes in range(1, 7):
            share = fair_share(storages, nodes)
            assert share * nodes >= storages
            assert (share - 1) * nodes < storages or share == 0, "and no more than needed"


def test_fair_share_of_no_live_node_counts_this_one() -> None:
    assert fair_share(5, 0) == 5


def test_a_lone_node_takes_everything() -> None:
    assert to_take(held=0, storages=7, live_nodes=1) == 7


def test_a_node_at_its_share_neither_takes_nor_gives() -> None:
    assert to_take(held=3, storages=7, live_nodes=3) == 0


def test_a_node_above_its_share_gives_back_the_excess() -> None:
    """A node that joins gets work: the old ones shed what is over their new share."""
    assert to_take(held=7, storages=7, live_nodes=2) == -3


def _heartbeats(held: dict[str, int], storages: int, beats: int, rng: random.Random) -> dict[str, int]:
    """Nodes beat in random order, each taking from the free pool or giving back to it."""
    free = storages - sum(held.values())
    for _ in range(beats):
        for node in rng.sample(sorted(held), len(held)):
            want = to_take(held[node], storages, len(held))
            got = min(want, free) if want > 0 else want
            held[node] += got
            free -= got
    assert free == 0, "every storage has an owner"
    return held


@pytest.mark.parametrize("storages,nodes", [(2, 3), (7, 3), (100, 3), (10_000, 7), (1, 2)])
def test_heartbeats_settle_on_a_balanced_spread(storages: int, nodes: int) -> None:
    held = _heartbeats({f"n{i}": 0 for i in range(nodes)}, storages, beats=3, rng=random.Random(storages))
    assert sum(held.values()) == storages
    assert max(held.values()) <= fair_share(storages, nodes)


def test_a_dead_nodes_storages_spread_over_the_survivors() -> None:
    rng = random.Random(1)
    held = _heartbeats({"a": 0, "b": 0, "c": 0}, 9, beats=2, rng=rng)
    assert held == {"a": 3, "b": 3, "c": 3}
    del held["c"]  # its leases expire: free again
    held = _heartbeats(held, 9, beats=2, rng=rng)
    assert sorted(held.values()) == [4, 5]


def test_a_joining_node_gets_its_share_from_the_others() -> None:
    rng = random.Random(2)
    held = _heartbeats({"a": 10}, 10, beats=1, rng=rng)
    held["b"] = 0
    held = _heartbeats(held, 10, beats=2, rng=rng)
    assert held == {"a": 5, "b": 5}


def test_take_over_happens_within_two_ping_intervals() -> None:
    """A lease outlives its last renewal by lease_seconds; a survivor notices at its next
    heartbeat, at most beat_seconds later."""
    for interval in (1.0, 2.0, 60.0):
        assert lease_seconds(interval) + beat_seconds(interval) <= 2 * interval
        assert lease_seconds(interval) >= 2 * beat_seconds(interval), "one missed beat must not lose a lease"


def test_a_node_without_pings_still_beats() -> None:
    assert beat_seconds(0) > 0 and lease_seconds(0) > beat_seconds(0)
