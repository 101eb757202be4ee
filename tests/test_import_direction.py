"""The dependency direction of docs/design.md §2, checked from the imports themselves.

Every ``import`` of the project's own modules, at module top or inside a function, is read
with ``ast`` from the source files (nothing is imported). Two properties:

* each package imports only what its row of ``ALLOWED`` lists (the table of docs/design.md §2,
  written here once);
* the module graph has no cycle (a strongly connected component of more than one module).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("megatron_brrm",)
DRIVERS = {"train", "sft", "train_bt", "train_policy", "demo", "api"}

ALLOWED: Dict[str, Set[str]] = {
    "config": set(), "judge": set(), "data": set(), "metrics": set(), "hub": set(), "parallel": set(),
    "preemption": set(), "figures": set(), "megatron_import_hook": set(), "run_summary": {"figures"},
    "model": {"parallel"},
    "rl": {"model", "parallel"},
    "rollout": {"judge", "model", "config", "checkpoint"},
    "checkpoint": {"model", "parallel", "config", "hub"},
    "workers": {"rl", "rollout", "model", "checkpoint", "parallel", "config"},
    "distill": {"judge", "data", "rollout", "config"},
    "plan": {"config", "model"},
    "evaluation": {"judge", "rollout", "data", "checkpoint", "config", "figures"},
    "envs": {"judge", "rollout", "workers", "config"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, name: str) -> Set[str]:
    """Project modules imported anywhere in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # "from pkg import module" imports the module; "from mod import name" the module mod
                out.add(f"{mod}.{a.name}|{mod}")
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _graph() -> Dict[str, Set[str]]:
    files = {(_module_name(p)): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for imp in _imports(path, name):
            imp, _, fallback = imp.partition("|")
            if imp not in files:  # "from mod import name": the module mod ("pkg.mod.Class" -> "pkg.mod")
                imp = fallback or imp
            while imp and imp not in files:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                targets.add(imp)
        graph[name] = targets
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "megatron_brrm"


def test_every_package_imports_only_what_design_allows():
    graph = _graph()
    bad: List[str] = []
    for module, targets in sorted(graph.items()):
        src = _package(module)
        if src in DRIVERS or src == "megatron_brrm":
            continue
        assert src in ALLOWED, f"{module}: package {src!r} has no row in ALLOWED (and docs/design.md §2)"
        for t in sorted(targets):
            dst = _package(t)
            if dst != src and dst not in ALLOWED[src]:
                bad.append(f"{module} -> {t} ({src} may not import {dst})")
    assert not bad, "\n".join(bad)
    # nothing imports the drivers
    users = [m for m, ts in graph.items() for t in ts if _package(t) in DRIVERS and _package(m) not in DRIVERS]
    assert not users, users


def test_no_import_cycles():
    graph = _graph()
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_checker_sees_a_cycle_and_a_forbidden_import(tmp_path):
    """The parser resolves relative and ``from pkg import module`` imports (what the two tests rely on)."""
    pkg = tmp_path / "megatron_brrm" / "rollout"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\nfrom megatron_brrm.workers import fleet\n")
    got = {m.partition("|")[0] for m in _imports(pkg / "a.py", "megatron_brrm.rollout.a")}
    assert "megatron_brrm.rollout.b" in got and "megatron_brrm.workers.fleet" in got
    assert _package("megatron_brrm.workers.fleet") == "workers" and "workers" not in ALLOWED["rollout"]
