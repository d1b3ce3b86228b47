"""How imgstore's modules import each other, beyond what `lint-imports` checks.

The contracts in pyproject.toml hold the layers and forbid cycles; these tests hold the
two rules a contract cannot say: no module imports imgstore inside a function (such an
import is how a cycle hides: it runs late, so nothing fails at start), and the pinger
child loads only what asking Ceph takes.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import imgstore

PACKAGE = Path(imgstore.__file__).parent

def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_imgstore(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "imgstore"
    return any(alias.name.split(".")[0] == "imgstore" for alias in node.names)


def late_imports(source: str) -> list[tuple[str, int, str]]:
    """``(function, line, statement)`` of each import of imgstore inside a function,
    except under ``if TYPE_CHECKING:``."""
    found: list[tuple[str, int, str]] = []

    def walk(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    walk(orelse, function)
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, getattr(child, "name", "<lambda>") if function is None else function)
                continue
            if function is not None and isinstance(child, (ast.Import, ast.ImportFrom)) and _imports_imgstore(child):
                found.append((function, child.lineno, ast.unparse(child)))
            walk(child, function)

    walk(ast.parse(source), None)
    return found


def test_no_module_imports_imgstore_inside_a_function() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        for function, line, statement in late_imports(path.read_text()):
            offenders.append(f"imgstore/{where}:{line} in {function}(): {statement}")
    assert not offenders, "imports of imgstore inside functions (move them to the top; a cycle " \
        "they hid is broken by moving code, not by importing late):\n" + "\n".join(offenders)


def test_the_checker_sees_late_imports_and_spares_type_checking_ones() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from imgstore.db import models\n"
        "def f():\n    from imgstore.services.images import metadata\n"
        "async def g():\n    import json\n    def h():\n        from . import sibling\n"
    )
    assert late_imports(source) == [
        ("f", 5, "from imgstore.services.images import metadata"),
        ("g", 9, "from . import sibling"),
    ]



def packages_loaded_by(*modules: str) -> set[str]:
    """The top-level packages a fresh interpreter holds once it has imported ``modules``."""
    probe = f"import json, sys\nimport {', '.join(modules)}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    return {name.split(".")[0] for name in json.loads(out)}


# What the pinger child must not load: it asks Ceph over librados only. The database
# (SQLAlchemy, Alembic) and SSH (asyncssh) cost it start time and memory, in a process
# started again whenever it dies, and give it code it has no use for.
NOT_IN_THE_PINGER_CHILD = {"sqlalchemy", "alembic", "asyncssh", "fastapi", "starlette", "uvicorn"}


def test_the_pinger_child_loads_neither_the_database_nor_ssh() -> None:
    loaded = packages_loaded_by("imgstore.services.health.pinger_child")
    assert not loaded & NOT_IN_THE_PINGER_CHILD, sorted(loaded & NOT_IN_THE_PINGER_CHILD)


# What the server process loads only when it needs it: asyncssh with its first SSH
# session to a mon host (an add, a mon's change), never at start; the command line never.
NOT_IN_A_STARTED_SERVER = {"asyncssh", "typer", "rich", "pygments"}  # click: uvicorn.main imports it


def test_a_started_server_loads_neither_ssh_nor_the_command_line() -> None:
    """A restarted server with its storages talks to them through librados only: asyncssh
    waits for an SSH session; typer, rich and httpx's own CLI for the CLI."""
    loaded = packages_loaded_by("imgstore.server", "imgstore.lifecycle")
    assert not loaded & NOT_IN_A_STARTED_SERVER, sorted(loaded & NOT_IN_A_STARTED_SERVER)


MAX_MODULE_LINES = 500


def test_no_module_is_over_500_lines() -> None:
    """A module is one concept a reader takes in at once: past 500 lines it holds two
    (db/query.py passed it once, unnoticed until a review counted)."""
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if "migrations" not in path.parts and (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}
