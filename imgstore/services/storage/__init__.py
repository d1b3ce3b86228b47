"""Ceph backup storages: adding, their mons, zones, updating, state, deleting."""
