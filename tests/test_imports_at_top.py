"""Imports sit at module top unless a comment says why (issue 17).

Every ``import`` inside a function (or a method, lambda, or a class body nested in one) of
``megatron_brrm/``, ``tools/`` and ``evaluation/`` carries a ``# lazy: <reason>`` or
``# optional: <package> (...)`` comment on its first line or on the line just above. Imports
under ``if TYPE_CHECKING:`` are not counted. The reasons in use:

* ``# optional: <package> (GPU-only / extra)`` -- a package that may be absent (vLLM,
  Transformer Engine, modelopt, wandb);
* ``# lazy: keeps <cli> --help fast`` -- torch, megatron.core, transformers, vLLM or Ray in a
  module a command line imports before parsing its arguments;
* ``# lazy: cycle <a> <-> <b>`` -- a real import cycle;
* ``# lazy: runs in a spawned/Ray worker process`` -- needed in the worker only;
* ``# lazy: heavy, only needed on this path``.

Read with ``ast`` from the source files (nothing is imported).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("megatron_brrm", "tools", "evaluation")
MARKERS = ("# lazy:", "# optional:")
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
# A function-level import has the word on an indented line or on its ``def`` line; files with
# neither are not parsed (keeps the test well under a second).
MAY_IMPORT = re.compile(r"^[ \t]+.*\bimport\b|^.*\bdef\b.*\bimport\b", re.M)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def function_level_imports(tree: ast.AST) -> List[ast.stmt]:
    """``Import`` / ``ImportFrom`` nodes inside a function, outside ``if TYPE_CHECKING:`` blocks."""
    found: List[ast.stmt] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child, in_function or isinstance(child, FUNCTIONS))

    visit(tree, False)
    return found


def unexplained_imports(path: Path, source: str) -> List[str]:
    """``file:line import`` for each function-level import of ``source`` without a reason comment."""
    lines = source.splitlines()
    bad = []
    for node in function_level_imports(ast.parse(source, str(path))):
        first = lines[node.lineno - 1]
        above = lines[node.lineno - 2] if node.lineno > 1 else ""
        if not any(m in first or m in above for m in MARKERS):
            bad.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    return bad


def _sources() -> List[Path]:
    return sorted(p for root in ROOTS for p in (REPO / root).rglob("*.py"))


def test_every_function_level_import_says_why():
    bad: List[str] = []
    for path in _sources():
        source = path.read_text(encoding="utf-8")
        if MAY_IMPORT.search(source):
            bad += unexplained_imports(path.relative_to(REPO), source)
    assert not bad, ("imports inside functions need a '# lazy: <reason>' or '# optional: <package> (...)' comment "
                     "on the line or the line above (or move them to the module top):\n" + "\n".join(bad))


def test_the_checker_reads_comments_and_blocks():
    src = '''
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def f():
    import json
    import numpy  # lazy: heavy, only needed on this path
    # optional: vllm (GPU-only / extra)
    import vllm
    from megatron_brrm.config import (  # lazy: cycle config <-> data
        load_config,
    )
    from megatron_brrm.data import (
        read_pairs,  # lazy: not on the first line
    )

    def inner():
        import yaml
    return lambda: __import__("x")


class C:
    import math

    def m(self):
        from os import path
'''
    bad = [b.split(" ", 1)[1] for b in unexplained_imports(Path("x.py"), src)]
    assert bad == ["import json", "from megatron_brrm.data import read_pairs", "import yaml", "from os import path"]
    assert MAY_IMPORT.search(src) and MAY_IMPORT.search("def f(): import os\n")
    assert not MAY_IMPORT.search("import os\nfrom typing import List\n\n\ndef f():\n    return os.sep\n")
