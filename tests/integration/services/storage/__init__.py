"""Tests of imgstore.services.storage: adding Ceph storages, mons, zones, their lifecycle."""
