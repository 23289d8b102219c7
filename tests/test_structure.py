"""The package's shape: floors that import only downward (the library never imports the studies or
the bench suite), the training harness and the Hugging Face path apart, no import cycles (imports
inside functions included), no module outside lm/ reaching into the training loop, and functions
short enough to read at once.

    python -m pytest tests/test_structure.py -q    # the check; `python tests/test_structure.py` prints the graph
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vqlogits"
# Lowest first. A module may import its own floor or a lower one; the top floor is the entry points.
# The library is everything below ``studies``: it never imports the studies or the bench suite.
FLOORS = [
    ("files", "stats", "_checks", "quant", "timing", "config"),
    ("kernels", "cluster", "data"),
    ("functional", "screens"),
    ("code_index",),
    ("heads",),
    ("lm", "hf"),  # side by side: the training harness and the Hugging Face path never import each other
    ("studies",),  # the measurements and reports behind docs/
    ("bench",),  # `vqlogits bench`
    ("demo", "cli", ""),
]
APART = [("lm", "hf")]
ENTRY_POINTS = {
    "vqlogits.cli",
    "vqlogits.cli.parser",
    "vqlogits.cli.options",
    "vqlogits.cli.run",
    "vqlogits.cli.__main__",
    "vqlogits.demo",
}
MAX_FUNCTION_LINES = 80


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


def upward(edges: dict) -> list[tuple[str, str]]:
    return [(a, b) for a, targets in edges.items() for b, _ in targets if floor(b) > floor(a)]


def crossing(edges: dict) -> list[tuple[str, str]]:
    """Imports between two floors that stand side by side but must stay apart."""
    group = lambda name: name.split(".")[1] if "." in name else ""  # noqa: E731
    return [
        (a, b)
        for a, targets in edges.items()
        for b, _ in targets
        if any({group(a), group(b)} == set(pair) for pair in APART)
    ]


def long_functions(sources: dict[str, str], limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``file:function`` -> lines, for every function (methods and nested ones included) longer than ``limit``."""
    out = {}
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out[f"{name}:{node.name}"] = n
    return out


def test_every_import_points_down_or_sideways():
    assert upward(graph()) == []


def test_the_training_harness_and_the_hugging_face_path_never_import_each_other():
    assert crossing(graph()) == []


def test_no_function_is_over_80_lines():
    assert long_functions({str(p.relative_to(SRC)): p.read_text() for p in SRC.rglob("*.py")}) == {}


def test_the_checks_can_fail():
    """Each rule, on a crafted violation."""
    loop = {
        "vqlogits.heads.vq": [("vqlogits.data.corpora", False)],
        "vqlogits.data.corpora": [("vqlogits.heads.vq", 1)],
    }
    assert cycles(loop) == [["vqlogits.data.corpora", "vqlogits.heads.vq"]]
    assert upward(loop) == [("vqlogits.data.corpora", "vqlogits.heads.vq")]  # data lies below heads
    assert upward({"vqlogits.hf.load": [("vqlogits.studies.report", False)]})  # the library never imports a study
    assert upward({"vqlogits.studies.report": [("vqlogits.bench.suite", False)]})
    assert crossing({"vqlogits.hf.compress": [("vqlogits.lm.train", False)]}) == [
        ("vqlogits.hf.compress", "vqlogits.lm.train")
    ]
    assert crossing({"vqlogits.lm.train": [("vqlogits.hf.load", True)]})
    assert crossing({"vqlogits.hf.compress": [("vqlogits.data.corpora", False)]}) == []
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions({"a.py": f"def f():\n{body}\n"}) == {"a.py:f": MAX_FUNCTION_LINES + 1}
    assert long_functions({"a.py": f"class A:\n    def g(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"})
    assert long_functions({"a.py": "def f():\n" + "\n".join(body.splitlines()[:-1]) + "\n"}) == {}


LIGHT = """
import sys
import vqlogits, vqlogits.demo
from vqlogits.bench import suite
from vqlogits.cli.run import main
suite.SHAPES["toy"] = (3000, 32)
suite.QUICK.update(shapes=("toy",), codebook_sizes=(16,), tokens=(1,), loss_tokens=(64,), loss_codebook_sizes=(16,))
assert main(["bench", "--quick", "--out", sys.argv[1]]) == 0
print(sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "tokenizers", "datasets")))
"""


def test_import_the_demo_and_bench_quick_do_not_import_transformers(tmp_path):
    import subprocess
    import sys

    got = subprocess.run([sys.executable, "-c", LIGHT, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "bench.md").exists()


if __name__ == "__main__":
    for module, targets in graph().items():
        print(module, "->", sorted({t for t, _ in targets}))
