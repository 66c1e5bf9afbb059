"""The shape of the code (ARCHITECTURE.md), checked on the source: layers, no import cycles, no
imports hidden in functions, no private names across modules, no module too long to read."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("transforms", "pipeline", "benchmarks")

# The vocabulary floor: every stage imports these, and they import nothing of the project but
# each other.
FLOOR = {"transforms.records", "transforms.keys", "transforms.labels", "transforms.sizes", "transforms.storage",
         "transforms.layout", "transforms.schema", "transforms.progress", "transforms.tar_headers",
         "transforms.segments", "transforms.hierarchy", "transforms.readahead"}

# Which package may import which: transforms is the lower layer, pipeline assembles it, the
# benchmarks measure both.
MAY_IMPORT = {"transforms": {"transforms"}, "pipeline": {"transforms", "pipeline"},
              "benchmarks": {"transforms", "pipeline", "benchmarks"}}

# Imports allowed inside a function: dependencies that are optional, and one that is slow to import.
# duckdb: only a query of the reading API by SQL needs it (pipeline/reading/dataset.py); torch and
# torchvision: only decoding to tensors and on the GPU (pipeline/reading/stream.py, gpu.py);
# matplotlib: only the report draws with it, and the command line, which imports the report's module,
# would otherwise spend 0.2 s of every build's start-up importing it (pipeline/reading/plots.py).
OPTIONAL_DEPENDENCIES: set = {"duckdb", "torch", "torchvision", "matplotlib"}

MAX_LINES = 400
LONG_REASON = "Long on purpose:"  # what a longer module's docstring must explain


def _modules() -> dict:
    """{module name: path} of every Python file of the packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> list:
    """The project modules an import statement names."""
    if node.level:  # relative: from . import x (a package's __init__ is its own base)
        parts = module.split(".")
        base = parts if MODULES[module].name == "__init__.py" else parts[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    names = []
    for alias in node.names:
        if f"{prefix}.{alias.name}" in MODULES:
            names.append(f"{prefix}.{alias.name}")
        elif prefix in MODULES:
            names.append(prefix)
    return names


def _imports(module: str) -> list:
    """(imported module or package, line, inside a function, names) of every import in a module."""
    tree = ast.parse(MODULES[module].read_text())
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    out.append((alias.name, child.lineno, in_function, ()))
            elif isinstance(child, ast.ImportFrom):
                targets = _resolve(module, child) or [child.module or ""]
                for target in targets:
                    out.append((target, child.lineno, in_function, tuple(a.name for a in child.names)))
            visit(child, nested)

    visit(tree, False)
    return out


def _project_module(target: str):
    """The module of the project an import lands in (its longest prefix that is one), or None."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _project_edges() -> dict:
    edges = {name: set() for name in MODULES}
    for name in MODULES:
        for target, *_ in _imports(name):
            module = _project_module(target)
            if module and module != name:
                edges[name].add(module)
    return edges


def test_the_walk_sees_the_layers():
    edges = _project_edges()
    assert "transforms.records" in edges["transforms.write_shards"]
    assert "pipeline.build" in edges["pipeline.driver"]
    assert len(MODULES) > 25


def test_no_import_cycle():
    edges = _project_edges()
    state, stack, cycles = {}, [], []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            walk(node)
    assert cycles == []


def test_layers_import_downward_only():
    wrong = []
    for name in MODULES:
        package = name.split(".")[0]
        for target, line, _, _ in _imports(name):
            root = target.split(".")[0]
            if root in PACKAGES and root not in MAY_IMPORT[package]:
                wrong.append(f"{name}:{line} imports {target}")
            if name in FLOOR and root in PACKAGES and target not in FLOOR:
                wrong.append(f"{name}:{line} (the vocabulary floor) imports {target}")
    assert wrong == []


def test_no_import_inside_a_function_but_optional_dependencies():
    hidden = [f"{name}:{line} imports {target}" for name in MODULES for target, line, in_function, _ in _imports(name)
              if in_function and target.split(".")[0] not in OPTIONAL_DEPENDENCIES]
    assert hidden == []


def test_no_private_name_imported_across_modules():
    private = [f"{name}:{line} imports {n} from {target}" for name in MODULES
               for target, line, _, names in _imports(name) for n in names if n.startswith("_") and n != "__version__"]
    assert private == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_long_module_says_why(name):
    source = MODULES[name].read_text()
    lines = source.count("\n")
    if lines > MAX_LINES:
        docstring = ast.get_docstring(ast.parse(source)) or ""
        assert LONG_REASON in docstring, f"{name} has {lines} lines and no '{LONG_REASON}' note at its top"
