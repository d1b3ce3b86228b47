"""Capacity follows ZStack's per-OSD rule.

The first fixtures are recorded from a real Ceph 16.2.15 single-node cluster (one
10 GiB BlueStore OSD) holding a replicated pool of size 2 (``rp1``, 32 MiB written),
an erasure-coded k=2 m=1 pool (``ecpool``) and a pool whose rule takes the ``hdd``
device class (``classpool``). ``osd dump`` is trimmed to the keys capacity reads; the
others are verbatim. The last fixtures are a hand-made multi-host, multi-root tree.
"""

from __future__ import annotations

import json

import pytest

from imgstore.ceph import Capacity, PoolNotFound
from imgstore.ceph.capacity import compute_capacity, osds_of_rule, pool_layout

# ceph osd dump -f json (trimmed to pools + erasure_code_profiles)
OSD_DUMP = json.loads(
    r'''{"fsid": "9301e5bf-5e31-43a1-96a9-c500a81d8388", "pools": [{"pool": 1, "pool_name": "rp1", "type": 1, "size": 2, "min_size": 1, "crush_rule": 0, "pg_num": 8, "erasure_code_profile": "", "application_metadata": {"rbd": {}}}, {"pool": 2, "pool_name": "other1", "type": 1, "size": 1, "min_size": 1, "crush_rule": 0, "pg_num": 8, "erasure_code_profile": "", "application_metadata": {"rbd": {}}}, {"pool": 3, "pool_name": "ecpool", "type": 3, "size": 3, "min_size": 2, "crush_rule": 1, "pg_num": 8, "erasure_code_profile": "ec21", "application_metadata": {"rbd": {}}}, {"pool": 4, "pool_name": "classpool", "type": 1, "size": 1, "min_size": 1, "crush_rule": 2, "pg_num": 8, "erasure_code_profile": "", "application_metadata": {"rbd": {}}}], "erasure_code_profiles": {"default": {"k": "2", "m": "2", "plugin": "jerasure", "technique": "reed_sol_van"}, "ec21": {"crush-device-class": "", "crush-failure-domain": "osd", "crush-root": "default", "jerasure-per-chunk-alignment": "false", "k": "2", "m": "1", "plugin": "jerasure", "technique": "reed_sol_van", "w": "8"}}}'''
)
# ceph osd crush rule dump -f json
CRUSH_RULES = json.loads(
    r'''[{"rule_id": 0, "rule_name": "replicated_rule", "ruleset": 0, "type": 1, "min_size": 1, "max_size": 10, "steps": [{"op": "take", "item": -1, "item_name": "default"}, {"op": "choose_firstn", "num": 0, "type": "osd"}, {"op": "emit"}]}, {"rule_id": 1, "rule_name": "ecpool", "ruleset": 1, "type": 3, "min_size": 3, "max_size": 3, "steps": [{"op": "set_chooseleaf_tries", "num": 5}, {"op": "set_choose_tries", "num": 100}, {"op": "take", "item": -1, "item_name": "default"}, {"op": "choose_indep", "num": 0, "type": "osd"}, {"op": "emit"}]}, {"rule_id": 2, "rule_name": "rep-hdd", "ruleset": 2, "type": 1, "min_size": 1, "max_size": 10, "steps": [{"op": "take", "item": -2, "item_name": "default~hdd"}, {"op": "choose_firstn", "num": 0, "type": "osd"}, {"op": "emit"}]}]'''
)
# ceph osd tree -f json
OSD_TREE = json.loads(
    r'''{"nodes": [{"id": -1, "name": "default", "type": "root", "type_id": 11, "children": [-3]}, {"id": -3, "name": "vm", "type": "host", "type_id": 1, "pool_weights": {}, "children": [0]}, {"id": 0, "device_class": "hdd", "name": "osd.0", "type": "osd", "type_id": 0, "crush_weight": 0.009796142578125, "depth": 2, "pool_weights": {}, "exists": 1, "status": "up", "reweight": 1, "primary_affinity": 1}], "stray": []}'''
)
# ceph osd df -f json
OSD_DF = json.loads(
    r'''{"nodes": [{"id": 0, "device_class": "hdd", "name": "osd.0", "type": "osd", "type_id": 0, "crush_weight": 0.009796142578125, "depth": 2, "pool_weights": {}, "reweight": 1, "kb": 10485760, "kb_used": 330060, "kb_used_data": 32964, "kb_used_omap": 0, "kb_used_meta": 297088, "kb_avail": 10155700, "utilization": 3.1476974487304688, "var": 1, "pgs": 32, "status": "up"}], "stray": [], "summary": {"total_kb": 10485760, "total_kb_used": 330060, "total_kb_used_data": 32964, "total_kb_used_omap": 0, "total_kb_used_meta": 297088, "total_kb_avail": 10155700, "average_utilization": 3.1476974487304688, "min_var": 1, "max_var": 1, "dev": 0}}'''
)
# ceph df -f json
DF = json.loads(
    r'''{"stats": {"total_bytes": 10737418240, "total_avail_bytes": 10399436800, "total_used_bytes": 337981440, "total_used_raw_bytes": 337981440, "total_used_raw_ratio": 0.03147697448730469, "num_osds": 1, "num_per_pool_osds": 1, "num_per_pool_omap_osds": 1}, "stats_by_class": {"hdd": {"total_bytes": 10737418240, "total_avail_bytes": 10399436800, "total_used_bytes": 337981440, "total_used_raw_bytes": 337981440, "total_used_raw_ratio": 0.03147697448730469}}, "pools": [{"name": "rp1", "id": 1, "stats": {"stored": 33554504, "objects": 13, "kb_used": 32780, "bytes_used": 33566720, "percent_used": 0.003391902893781662, "max_avail": 9862565888}}, {"name": "other1", "id": 2, "stats": {"stored": 0, "objects": 0, "kb_used": 0, "bytes_used": 0, "percent_used": 0, "max_avail": 9862565888}}, {"name": "ecpool", "id": 3, "stats": {"stored": 0, "objects": 0, "kb_used": 0, "bytes_used": 0, "percent_used": 0, "max_avail": 6575044096}}, {"name": "classpool", "id": 4, "stats": {"stored": 0, "objects": 0, "kb_used": 0, "bytes_used": 0, "percent_used": 0, "max_avail": 9862565888}}]}'''
)

OSD0_SIZE = 10485760 * 1024
OSD0_AVAIL = 10155700 * 1024
OSD0_USED = 330060 * 1024


def capacity_of(pool: str, osd_dump=OSD_DUMP, rules=CRUSH_RULES, tree=OSD_TREE,
                osd_df=OSD_DF, df=DF) -> Capacity:
    layout = pool_layout(osd_dump, pool)
    return compute_capacity(layout, osds_of_rule(rules, tree, layout.crush_rule), osd_df, df)


def test_replicated_pool_counts_osd_bytes_divided_by_size() -> None:
    cap = capacity_of("rp1")
    assert cap == Capacity(
        total=5368709120,  # 10 GiB / 2
        available=5199718400,
        pool_available=5199718400,
        pool_used=168990720,
        pool_total=5368709120,
        pool_replicated_size=2,
        pool_disk_utilization=0.5,
        pool_security_policy="Copy",
    )
    assert cap.total == OSD0_SIZE // 2 and cap.available == OSD0_AVAIL // 2


def test_erasure_pool_uses_k_over_k_plus_m() -> None:
    cap = capacity_of("ecpool")
    assert cap.pool_security_policy == "ErasureCode"
    assert cap.pool_replicated_size == 3  # the pool's size is k+m
    assert cap.pool_disk_utilization == 0.667
    assert cap.total == int(OSD0_SIZE * 2 / 3) == 7158278826
    assert cap.available == cap.pool_available == int(OSD0_AVAIL * 2 / 3) == 6932957866
    assert cap.pool_used == int(OSD0_USED * 2 / 3) == 225320960


def test_size_one_pool_reports_the_raw_osd_bytes() -> None:
    cap = capacity_of("other1")
    assert (cap.total, cap.available, cap.pool_used) == (OSD0_SIZE, OSD0_AVAIL, OSD0_USED)
    assert cap.pool_disk_utilization == 1.0


def test_device_class_rule_resolves_the_shadow_bucket() -> None:
    assert osds_of_rule(CRUSH_RULES, OSD_TREE, 2) == ["osd.0"]  # take default~hdd
    assert capacity_of("classpool").total == OSD0_SIZE


def test_missing_pool_raises_pool_not_found() -> None:
    with pytest.raises(PoolNotFound):
        pool_layout(OSD_DUMP, "nope")


def test_no_osd_data_falls_back_to_ceph_df_pool_stats() -> None:
    cap = capacity_of("rp1", osd_df={"nodes": [], "stray": []})
    assert cap.available == 9862565888  # df pools[rp1].stats.max_avail
    assert cap.pool_used == 33566720 // 2  # bytes_used (raw) / size
    assert cap.total == cap.available + cap.pool_used


def test_unknown_crush_rule_means_no_osds() -> None:
    assert osds_of_rule(CRUSH_RULES, OSD_TREE, 99) == []


# A hand-made cluster: root "default" with two hosts (osd.0 hdd, osd.1 ssd | osd.2 hdd)
# and a second root "fast" holding osd.3 (ssd). Sizes are in KiB as `osd df` gives them.
TREE_MULTI = {
    "nodes": [
        {"id": -1, "name": "default", "type": "root", "children": [-3, -5]},
        {"id": -3, "name": "host-a", "type": "host", "children": [1, 0]},
        {"id": 0, "name": "osd.0", "type": "osd", "device_class": "hdd"},
        {"id": 1, "name": "osd.1", "type": "osd", "device_class": "ssd"},
        {"id": -5, "name": "host-b", "type": "host", "children": [2]},
        {"id": 2, "name": "osd.2", "type": "osd", "device_class": "hdd"},
        {"id": -7, "name": "fast", "type": "root", "children": [-9]},
        {"id": -9, "name": "host-c", "type": "host", "children": [3]},
        {"id": 3, "name": "osd.3", "type": "osd", "device_class": "ssd"},
    ],
    "stray": [{"id": 4, "name": "osd.4", "type": "osd"}],
}
OSD_DF_MULTI = {
    "nodes": [
        {"id": i, "name": f"osd.{i}", "kb": kb, "kb_avail": avail, "kb_used": kb - avail}
        for i, kb, avail in [(0, 1000, 900), (1, 2000, 1500), (2, 3000, 2100), (3, 4000, 4000),
                             (4, 5000, 5000)]
    ]
}
RULES_MULTI = [
    {"rule_id": 0, "steps": [{"op": "take", "item": -1, "item_name": "default"},
                             {"op": "chooseleaf_firstn", "num": 0, "type": "host"},
                             {"op": "emit"}]},
    {"rule_id": 1, "steps": [{"op": "take", "item": -2, "item_name": "default~ssd"},
                             {"op": "emit"}]},
    {"rule_id": 2, "steps": [{"op": "take", "item": -7, "item_name": "fast"}, {"op": "emit"},
                             {"op": "take", "item": -3, "item_name": "host-a"}, {"op": "emit"}]},
]
DUMP_MULTI = {
    "pools": [
        {"pool_name": "all", "type": 1, "size": 3, "crush_rule": 0},
        {"pool_name": "ssd", "type": 1, "size": 2, "crush_rule": 1},
        {"pool_name": "two-takes", "type": 3, "size": 6, "crush_rule": 2,
         "erasure_code_profile": "k4m2"},
    ],
    "erasure_code_profiles": {"k4m2": {"k": "4", "m": "2"}},
}


def multi(pool: str) -> Capacity:
    return capacity_of(pool, DUMP_MULTI, RULES_MULTI, TREE_MULTI, OSD_DF_MULTI, {"pools": []})


def test_sums_every_osd_under_the_take_root_and_ignores_others() -> None:
    assert osds_of_rule(RULES_MULTI, TREE_MULTI, 0) == ["osd.0", "osd.1", "osd.2"]
    cap = multi("all")
    assert cap.total == int(6000 * 1024 / 3)
    assert cap.available == int(4500 * 1024 / 3)
    assert cap.pool_used == int(1500 * 1024 / 3)


def test_device_class_filters_the_osds_of_the_root() -> None:
    assert osds_of_rule(RULES_MULTI, TREE_MULTI, 1) == ["osd.1"]
    assert multi("ssd").total == 2000 * 1024 // 2


def test_several_take_steps_are_united() -> None:
    assert osds_of_rule(RULES_MULTI, TREE_MULTI, 2) == ["osd.0", "osd.1", "osd.3"]
    cap = multi("two-takes")
    assert cap.pool_security_policy == "ErasureCode"
    assert cap.pool_disk_utilization == 0.667
    assert cap.total == int(7000 * 1024 * 4 / 6)


def test_unknown_pool_type_is_a_command_failure() -> None:
    from imgstore.ceph import CephCommandFailed

    with pytest.raises(CephCommandFailed):
        pool_layout({"pools": [{"pool_name": "x", "type": 2, "size": 1, "crush_rule": 0}]}, "x")


def test_erasure_pool_without_its_profile_is_a_command_failure() -> None:
    from imgstore.ceph import CephCommandFailed

    dump = {"pools": [{"pool_name": "x", "type": 3, "size": 3, "crush_rule": 0,
                       "erasure_code_profile": "gone"}]}
    with pytest.raises(CephCommandFailed):
        pool_layout(dump, "x")
