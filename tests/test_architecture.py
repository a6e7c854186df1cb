"""The package's layers (docs/architecture.md): every import, function-level ones included,
points to the same layer or one below, and no modules import each other in a loop (issue 14)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vaedeblend"

# Modules that moved, kept for one release as aliases that warn and forward (issue 14).
DEPRECATED_ALIASES = {
    "blends": "simulation.blends",
    "render": "simulation.render",
    "field": "simulation.field",
}

# Lowest first. A module's layer is that of its longest listed prefix.
LAYERS = [
    ["_version", "_deprecated", "argtypes", "training_choices", "cache", "execution", "files"],
    ["training_config"],
    ["bands", "instruments", "galaxy", "simulation.noise"],
    ["catalogs", "simulation.render", "measure"],
    ["simulation.blends"],
    ["dataset"],
    ["simulation"],
    # the shipped models sit beside the model code: training continues them by name
    ["models", "pretrained"],
    ["refinement"],
    ["evaluation", "baselines", "fieldmode"],
    [
        "demo",
        "cli",
        "cli_train",
        "cli_evaluate",
        "cli_deblend",
        "cli_baseline",
        "cli_refine",
        "__init__",
        *DEPRECATED_ALIASES,
    ],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def layer(name: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"module {name} is in no layer of LAYERS"
    return best[0]


def imports(path: Path) -> set[str]:
    """vaedeblend modules imported anywhere in ``path`` (relative to the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "vaedeblend":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("vaedeblend."):
                found.add(node.module[len("vaedeblend.") :])
        elif isinstance(node, ast.Import):
            found |= {a.name[len("vaedeblend.") :] for a in node.names
                      if a.name.startswith("vaedeblend.")}  # fmt: skip
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def test_no_import_points_to_a_higher_layer():
    upward = []
    for name, targets in graph().items():
        if name == "__init__":  # the package root re-exports loaders lazily
            continue
        for target in targets:
            if layer(target) > layer(name):
                upward.append(f"{name} (layer {layer(name)}) -> {target} (layer {layer(target)})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles_between_modules():
    g = graph()
    g.pop("__init__", None)

    def resolve(target: str) -> str | None:
        while target and target not in g:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {t for t in map(resolve, ts) if t and t != m} for m, ts in g.items()}
    # a package imports its own submodules in its __init__: that is not a loop
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in edges.get(m, ()):
            if state.get(t) == "open":
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_module_imports_a_deprecated_alias():
    users = [
        f"{name} -> {target}"
        for name, targets in graph().items()
        for target in targets
        if target in DEPRECATED_ALIASES
    ]
    assert not users, "\n".join(sorted(users))


def test_deprecated_aliases_warn_and_forward():
    import importlib

    import pytest

    for old, new in DEPRECATED_ALIASES.items():
        alias = importlib.import_module(f"vaedeblend.{old}")
        target = importlib.import_module(f"vaedeblend.{new}")
        public = [n for n in vars(target) if not n.startswith("_")]
        with pytest.warns(DeprecationWarning, match=f"vaedeblend.{new}"):
            assert getattr(alias, public[0]) is getattr(target, public[0])
