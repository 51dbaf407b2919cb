"""The import rules of docs/architecture.md, checked on the source: layers import downwards,
no cycles (function-level imports included), scikit-learn only at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "skformer"

# the layers of docs/architecture.md, top (0) to bottom (3)
LAYERS = {
    "skformer.estimator": 0, "skformer.conditional": 0, "skformer.compat": 0,
    "skformer.io": 0, "skformer.plot": 0, "skformer.simulation": 0,
    "skformer.diagnostics": 0, "skformer.sequential": 0,
    "skformer.model": 1,
    "skformer.network": 2, "skformer.dynamics": 2, "skformer.dynamics.base": 2,
    "skformer.dynamics.score": 2, "skformer.dynamics.flow": 2, "skformer.dynamics.solvers": 2,
    "skformer.dynamics.compose": 2,
    "skformer.guidance": 2, "skformer.training": 2, "skformer.masks": 2, "skformer.layout": 2,
    "skformer.graph": 2, "skformer.distributed": 2, "skformer.positions": 2,
    "skformer.checkpoint": 2,
    "skformer._utils": 3, "skformer._version": 3, "skformer._legacy": 3,
    "skformer.persistence": 3, "skformer.persistence.codec": 3,
    "skformer.persistence.container": 3,
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (functions included)."""
    me = _module(path)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


MODULES = {_module(p): p for p in ROOT.rglob("*.py")}


def _internal(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


GRAPH = {m: {d for d in map(_internal, _imports(p)) if d and d != m}
         for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    assert set(MODULES) - {"skformer"} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_go_down_or_sideways_never_up(module):
    for dep in GRAPH[module]:
        assert dep != "skformer", f"{module} imports the package itself"
        assert LAYERS[dep] >= LAYERS[module], f"{module} (layer {LAYERS[module]}) imports " \
                                              f"{dep} (layer {LAYERS[dep]})"


def test_no_import_cycles():
    def visit(node, stack):
        for nxt in GRAPH[node]:
            assert nxt not in stack, " -> ".join([*stack, nxt])
            visit(nxt, [*stack, nxt])

    for m in GRAPH:
        if m != "skformer":
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_scikit_learn_and_pandas_stay_at_the_top(module):
    outside = {n.split(".")[0] for n in _imports(MODULES[module])}
    if LAYERS[module] > 0:
        assert not outside & {"sklearn", "pandas"}, module


@pytest.mark.parametrize("module", ["skformer.network", "skformer.dynamics.base",
                                    "skformer.dynamics.score", "skformer.dynamics.flow",
                                    "skformer.dynamics.solvers", "skformer.dynamics.compose",
                                    "skformer.training", "skformer.checkpoint"])
def test_network_dynamics_and_loop_know_no_numpy(module):
    assert "numpy" not in {n.split(".")[0] for n in _imports(MODULES[module])}, module


def test_persistence_knows_nothing_of_the_estimator():
    for m in ("skformer.persistence.codec", "skformer.persistence.container"):
        assert GRAPH[m] <= {"skformer.persistence", "skformer.persistence.codec"}, GRAPH[m]
