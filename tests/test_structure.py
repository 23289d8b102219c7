"""The package's shape: floors that import only downward, no import cycles (imports inside functions
included), no module outside lm/ reaching into the training loop, and files that stay readable.

    python -m pytest tests/test_structure.py -q    # the check; `python tests/test_structure.py` prints the graph
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vqlogits"
# Lowest first. A module may import its own floor or a lower one; the top floor is the entry points.
FLOORS = [
    ("files", "stats", "_checks", "quant"),
    ("kernels", "cluster"),
    ("functional", "screen", "screen_int4", "screen_int8"),
    ("sampling",),
    ("heads",),
    ("lm",),
    ("hf",),
    ("bench",),
    ("demo", "cli", ""),
]
ENTRY_POINTS = {
    "vqlogits.cli",
    "vqlogits.cli.parser",
    "vqlogits.cli.options",
    "vqlogits.cli.run",
    "vqlogits.cli.__main__",
    "vqlogits.demo",
}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, known: dict) -> list[tuple[str, bool]]:
    """(imported vqlogits module, inside a function?) for every import statement of a module."""
    tree = ast.parse(path.read_text())
    inside = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
    }
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(t, id(node) in inside) for t in names if t in known and t != name]
    return out


def graph() -> dict[str, list[tuple[str, bool]]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def floor(name: str) -> int:
    first = name.split(".")[1] if "." in name else ""
    return next(i for i, names in enumerate(FLOORS) if first in names)


def cycles(edges: dict) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _ in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_counting_imports_inside_functions():
    edges = graph()
    assert sum(map(len, edges.values())) > 100  # the parser sees the package's imports
    assert cycles(edges) == []


def test_every_import_points_down_or_sideways():
    upward = [(a, b) for a, targets in graph().items() for b, _ in targets if floor(b) > floor(a)]
    assert upward == []


def test_only_the_entry_points_reach_into_the_training_loop():
    reaching = [
        a
        for a, targets in graph().items()
        for b, _ in targets
        if b == "vqlogits.lm.train" and not a.startswith("vqlogits.lm.")
    ]
    assert set(reaching) <= ENTRY_POINTS, reaching


def test_our_own_modules_are_imported_at_the_top_except_by_the_entry_points():
    # Imports inside functions are for optional or heavy third-party packages; the CLI and the
    # package root import subcommands lazily, so `vqlogits --help` and `import vqlogits` stay fast.
    lazy = [
        (a, b)
        for a, targets in graph().items()
        for b, inside in targets
        if inside and a not in ENTRY_POINTS | {"vqlogits"}
    ]
    assert lazy == []


def test_no_source_file_is_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_can_fail():
    edges = {"vqlogits.heads.vq": [("vqlogits.lm.data", False)], "vqlogits.lm.data": [("vqlogits.heads.vq", True)]}
    assert cycles(edges) == [["vqlogits.heads.vq", "vqlogits.lm.data"]]
    assert floor("vqlogits.lm.data") > floor("vqlogits.heads.vq") > floor("vqlogits.files")


if __name__ == "__main__":
    for module, targets in graph().items():
        print(module, "->", sorted({t for t, _ in targets}))
