"""Capacity of a pool, computed the way ZStack's Ceph agent does.

Pure functions over the parsed JSON of ``osd dump``, ``osd crush rule dump``,
``osd tree``, ``osd df`` and ``df``, so the rules can be unit-tested with recorded
output; ``cluster.py`` only fetches.

ZStack's rule: the storage's capacity is the usable, replication-adjusted capacity of
the OSDs under the pool's crush ``take`` items::

    utilization = 1/size            (replicated, policy "Copy")
                = k/(k+m)           (erasure coded, policy "ErasureCode")
    total       = int(sum(osd kb       * 1024) * utilization)
    available   = int(sum(osd kb_avail * 1024) * utilization)
    used        = int(sum(osd kb_used  * 1024) * utilization)

Two things differ from the agent, both on purpose:

* a ``take`` of a device-class shadow bucket (``default~ssd``) is resolved to the OSDs
  of that class under ``default``; the agent looks the shadow name up in ``osd tree``,
  finds nothing and reports 0 bytes;
* when no OSD of the pool reports a size (``osd df`` empty: no mgr, all OSDs out), we
  fall back to ``ceph df``'s per-pool numbers (``max_avail`` is already usable bytes)
  instead of reporting 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imgstore.ceph.exceptions import CephCommandFailed, PoolNotFound

__all__ = ["Capacity", "PoolLayout", "compute_capacity", "osds_of_rule", "pool_layout"]

POOL_TYPE_REPLICATED = 1
POOL_TYPE_ERASURE = 3


@dataclass(frozen=True)
class Capacity:
    """What a Ceph backup storage reports: its total/available and the pool fields."""

    total: int
    available: int
    pool_available: int
    pool_used: int
    pool_total: int
    pool_replicated_size: int
    pool_disk_utilization: float
    pool_security_policy: str  # "Copy" | "ErasureCode"


@dataclass(frozen=True)
class PoolLayout:
    """The part of ``osd dump`` capacity needs about one pool."""

    name: str
    size: int
    crush_rule: int
    security_policy: str
    utilization: float


def pool_layout(osd_dump: dict[str, Any], pool: str) -> PoolLayout:
    """Find ``pool`` in ``osd dump`` and work out its policy and utilization.

    Erasure-code profiles are read from the same ``osd dump`` (its
    ``erasure_code_profiles`` map), so no extra command is needed.
    """
    entry = next((p for p in osd_dump.get("pools", []) if p.get("pool_name") == pool), None)
    if entry is None:
        raise PoolNotFound(f"pool[{pool}] does not exist in the ceph cluster")
    size = int(entry["size"])
    rule = entry.get("crush_rule", entry.get("crush_ruleset"))
    if entry["type"] == POOL_TYPE_REPLICATED:
        return PoolLayout(pool, size, int(rule), "Copy", 1.0 / size)
    if entry["type"] == POOL_TYPE_ERASURE:
        name = entry.get("erasure_code_profile", "")
        profile = osd_dump.get("erasure_code_profiles", {}).get(name, {})
        try:
            k, m = int(profile["k"]), int(profile["m"])
        except (KeyError, ValueError):
            raise CephCommandFailed(
                f"unexpected erasure-code-profile[{name}] for pool[{pool}]"
            ) from None
        return PoolLayout(pool, size, int(rule), "ErasureCode", k / (k + m))
    raise CephCommandFailed(f"unexpected pool type: {pool}:{entry['type']}")


def osds_of_rule(
    crush_rules: list[dict[str, Any]], osd_tree: dict[str, Any], rule_id: int
) -> list[str]:
    """Names of the OSDs under every ``take`` item of crush rule ``rule_id``, sorted."""
    rule = next((r for r in crush_rules if r.get("rule_id") == rule_id), None)
    if rule is None:
        return []
    nodes = {n["id"]: n for n in osd_tree.get("nodes", [])}
    by_name = {n["name"]: n for n in nodes.values()}
    found: set[str] = set()
    for step in rule.get("steps", []):
        if step.get("op") != "take":
            continue
        # "default~hdd" is the shadow tree of class hdd under "default"; `osd tree`
        # does not list shadow buckets, so walk the real one and filter by class.
        base, _, device_class = str(step.get("item_name", "")).partition("~")
        start = by_name.get(base)
        if start is None:
            continue
        for osd in _descendant_osds(start, nodes):
            if not device_class or osd.get("device_class") == device_class:
                found.add(osd["name"])
    return sorted(found)


def _descendant_osds(node: dict[str, Any], nodes: dict[int, dict[str, Any]]) -> Iterable[dict[str, Any]]:
    if node.get("type") == "osd":
        yield node
        return
    stack, seen = list(node.get("children", [])), set()
    while stack:
        child = nodes.get(stack.pop())
        if child is None or child["id"] in seen:
            continue
        seen.add(child["id"])
        if child.get("type") == "osd":
            yield child
        else:
            stack.extend(child.get("children", []))


def compute_capacity(
    layout: PoolLayout,
    osd_names: list[str],
    osd_df: dict[str, Any],
    df: dict[str, Any],
) -> Capacity:
    """Apply ZStack's per-OSD rule (module docstring); fall back to ``ceph df``."""
    wanted = set(osd_names)
    size = avail = used = 0
    for node in osd_df.get("nodes", []):
        if node.get("name") in wanted:
            size += int(node.get("kb", 0)) * 1024
            avail += int(node.get("kb_avail", 0)) * 1024
            used += int(node.get("kb_used", 0)) * 1024
    util = layout.utilization
    if size > 0:
        total, available, pool_used = int(size * util), int(avail * util), int(used * util)
    else:
        stats = _df_pool_stats(df, layout.name)
        available = int(stats.get("max_avail", 0))
        pool_used = int(int(stats.get("bytes_used", 0)) * util)
        total = available + pool_used
    return Capacity(
        total=total,
        available=available,
        pool_available=available,
        pool_used=pool_used,
        pool_total=total,
        pool_replicated_size=layout.size,
        pool_disk_utilization=round(util, 3),
        pool_security_policy=layout.security_policy,
    )


def _df_pool_stats(df: dict[str, Any], pool: str) -> dict[str, Any]:
    for entry in df.get("pools", []):
        if entry.get("name") == pool:
            return dict(entry.get("stats", {}))
    return {}
