"""Outside ``imgstore/ceph``, code imports the Ceph layer through its facade only.

``imgstore.ceph`` (its ``__init__``) exports what services, scripts and the CLI need; its
modules (``cluster``, ``rbd.writer``, ``_calls``...) can then be split, merged and renamed
without touching a caller. A test rather than an import-linter contract: it reads the
import statements of every module, so it also sees imports inside functions.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import imgstore.ceph
from tests.servers import ROOT

SUBMODULES = {m.name for m in pkgutil.iter_modules(imgstore.ceph.__path__)}


def _reached_past_the_facade(path: Path) -> list[str]:
    """``imgstore.ceph.<submodule>`` names that ``path`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("imgstore.ceph.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("imgstore.ceph."):
                found.append(node.module)
            elif node.module == "imgstore.ceph":
                found += [f"imgstore.ceph.{a.name}" for a in node.names if a.name in SUBMODULES]
    return found


def test_only_the_facade_of_imgstore_ceph_is_imported_outside_it() -> None:
    sources = [p for p in (ROOT / "imgstore").rglob("*.py") if (ROOT / "imgstore" / "ceph") not in p.parents]
    sources += list((ROOT / "scripts").rglob("*.py"))
    assert len(sources) > 50
    offenders = {str(p.relative_to(ROOT)): names for p in sources if (names := _reached_past_the_facade(p))}
    assert offenders == {}


def test_the_facade_exports_what_it_lists() -> None:
    missing = [n for n in imgstore.ceph.__all__ if not hasattr(imgstore.ceph, n)]
    assert missing == []
    assert len(set(imgstore.ceph.__all__)) == len(imgstore.ceph.__all__)
