"""Tests of imgstore.ceph: the Ceph facade, its calls and parsers."""
