"""The package's imports run one way: stages → file formats → algorithms → utilities (DESIGN §8), with no cycle.

Read from the source with ``ast`` (every import statement, at module level or inside a function), so an import
deferred into a function to hide a cycle is still an edge."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "advcam"

#: each module's layer; a module may import only modules of its own layer or below
UTILITIES = {"_version", "errors", "atomic", "settings", "batching"}
FORMATS_OUTSIDE_IO = {"datasets"}  # the prepared store: reads image trees, writes and reads the store
TOP = {"cli", "__main__", "__init__"}


def layer(module: str) -> int:
    if module in UTILITIES:
        return 0
    if module.startswith("stages.") or module == "stages":
        return 3
    if module.startswith("io.") or module == "io" or module in FORMATS_OUTSIDE_IO:
        return 2
    if module in TOP:
        return 4
    return 1  # algorithms: attacks, CAMs, models, measures, summaries, plots, training loop, …


LAYER_NAMES = ["utilities", "algorithms", "file formats", "stages", "entry points"]


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)
        out[name] = p
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name`` imports, anywhere in its source."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            mod = ".".join(base + (node.module.split(".") if node.module else []))
            for a in node.names:  # ``from . import x`` or ``from .io import store`` name modules
                sub = f"{mod}.{a.name}" if mod else a.name
                found.add(sub if sub in known else mod)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("advcam."):
                    found.add(a.name[len("advcam."):])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("advcam"):
            found.add(node.module[len("advcam."):] if node.module != "advcam" else "__init__")
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_the_graph_is_read():
    g = graph()
    assert {"stages.attack", "io.heatmap_file", "explainers", "errors"} <= set(g)
    assert "io.heatmap_file" in g["stages.attack"] and "settings" in g["io.heatmap_file"]


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_run_one_way(module):
    g = graph()
    up = sorted(n for n in g[module] if layer(n) > layer(module))
    assert not up, (f"{module} ({LAYER_NAMES[layer(module)]}) imports {', '.join(up)} from a layer above it "
                    f"({', '.join(LAYER_NAMES[layer(n)] for n in up)})")


def test_only_the_cli_defers_imports():
    """Imports sit at the top of every module; the CLI alone imports each stage inside its command, so a job
    loads only what its stage needs."""
    late = []
    for name, path in modules().items():
        if name == "cli":
            continue
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                # ``if TYPE_CHECKING:`` blocks are for annotations only
                late.append(f"{name}:{node.lineno}")
    assert not late, f"imports inside functions or blocks: {', '.join(late)}"
