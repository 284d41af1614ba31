"""``continuonbrain.rlds`` has no import cycles: every module imports what it needs at the top
and can be imported first, on its own, in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import continuonbrain.rlds

RLDS_DIR = Path(continuonbrain.rlds.__file__).parent
PACKAGE = "continuonbrain.rlds"
MODULES = sorted(p.stem for p in RLDS_DIR.glob("*.py") if p.stem != "__init__")


def _rlds_targets(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The ``continuonbrain.rlds`` submodules an import statement imports."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.module == PACKAGE:  # from continuonbrain.rlds import continuon, tfds
        names = [f"{PACKAGE}.{a.name}" for a in node.names]
    else:
        names = [node.module or ""]
    return {n.split(".")[2] for n in names if n.startswith(PACKAGE + ".") and n.split(".")[2] in MODULES}


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(the rlds modules ``module`` imports at module level, the imports of rlds modules made
    inside a function or class, as ``(line, module)``)."""
    tree = ast.parse((RLDS_DIR / f"{module}.py").read_text())
    top: set[str] = set()
    nested: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_scope: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                targets = _rlds_targets(child)
                if in_scope:
                    nested.extend((child.lineno, t) for t in sorted(targets))
                else:
                    top.update(targets)
            scoped = in_scope or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
            visit(child, scoped)

    visit(tree, False)
    return top, nested


def test_no_function_level_imports_of_rlds_modules():
    nested = {m: found for m in MODULES if (found := _imports(m)[1])}
    assert nested == {}, "rlds modules must import each other at the top (a nested import hides a cycle)"


def test_module_import_graph_is_acyclic():
    """Counting every import, wherever it is made: a cycle through a function-level import
    is a cycle too."""
    graph = {}
    for m in MODULES:
        top, nested = _imports(m)
        graph[m] = (top | {t for _, t in nested}) - {m}
    done: set[str] = set()

    def walk(m: str, path: list[str]) -> None:
        if m in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(m) :], m]))
        if m in done:
            return
        for dep in sorted(graph[m]):
            walk(dep, [*path, m])
        done.add(m)

    for m in MODULES:
        walk(m, [])


def test_layout_readers_do_not_import_the_dispatcher_or_writers():
    """The layout readers sit below ``reader`` (which dispatches to them) and the TFDS reader
    takes nothing from the writer but what it re-exports (``write_tfds``)."""
    for m in ("continuon", "tfds", "tub", "checks", "episode"):
        assert not _imports(m)[0] & {"reader", "validate", "writer"}, m


# Each module is imported first: the package's __init__ (which would import the reader and
# the writers before it) is replaced by a bare package object.
_IMPORT_FIRST = """
import importlib, sys, types
pkg = types.ModuleType({package!r})
pkg.__path__ = [{path!r}]
sys.modules[{package!r}] = pkg
importlib.import_module({package!r} + "." + {module!r})
"""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    procs = {}
    for m in MODULES:
        code = _IMPORT_FIRST.format(package=PACKAGE, path=str(RLDS_DIR), module=m)
        procs[m] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    procs["__init__"] = subprocess.Popen(
        [sys.executable, "-c", f"import {PACKAGE}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    failed = {}
    for m, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        if proc.returncode:
            failed[m] = out.decode(errors="replace")[-2000:]
    assert failed == {}


def test_old_import_paths_still_work():
    from continuonbrain.rlds import EpisodeResult
    from continuonbrain.rlds.checks import check_episode
    from continuonbrain.rlds.episode import EpisodeResult as Beside
    from continuonbrain.rlds.reader import EpisodeResult as FromReader
    from continuonbrain.rlds.tfds import DEFAULT_TEMPLATE, write_tfds
    from continuonbrain.rlds.tfds_features import DEFAULT_TEMPLATE as Template
    from continuonbrain.rlds.tfds_writer import DEFAULT_TEMPLATE as WriterTemplate
    from continuonbrain.rlds.tfds_writer import write_tfds as writer_write_tfds
    from continuonbrain.rlds.validate import check_episode as validate_check_episode

    assert EpisodeResult is Beside is FromReader
    assert DEFAULT_TEMPLATE == Template == WriterTemplate
    assert write_tfds is writer_write_tfds
    assert check_episode is validate_check_episode
