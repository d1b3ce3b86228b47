"""Puts the fake Ceph (tests/fakeceph) behind ``imgstore.ceph`` in every Python process
started with this directory on ``PYTHONPATH`` and ``IMGSTORE_TEST_FAKE_CEPH`` set: the
test servers, the forkserver they are forked from, their pinger children.

The fakes go in the moment ``imgstore.ceph`` has been executed, before any module of the
services imports a name from it; nothing else is imported until then. Never in a pytest
process (its workers inherit the environment too): the tests of the Ceph layer test the
real one, and the tests' side of the fake (tests/conftest.py) imports the real modules.
"""
import importlib.abc
import importlib.machinery
import os
import sys

_FACADE = "imgstore.ceph"


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name != _FACADE or "_pytest" in sys.modules:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            run(module)
            from tests.fakeceph import install

            install(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("IMGSTORE_TEST_FAKE_CEPH"):
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    sys.meta_path.insert(0, _Finder())
