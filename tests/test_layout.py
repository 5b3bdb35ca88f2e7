"""The code's layering: which module may import which, no import cycles, short functions.

Layers, top to bottom: the mains (train.py, inference.py), tasks/, infer/, train/, utils/, model/ A module
imports only from its own layer or below; model/ imports only torch and torchvision. Imports
inside functions count too.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "utils", "train", "infer", "tasks")
MAINS = ("train.py", "inference.py")
LAYER = {"model": 0, "utils": 1, "train": 2, "infer": 3, "tasks": 4, "main": 5}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file; the mains are named by their file name."""
    files = {name: root / name for name in MAINS}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every project module `path` imports, at any depth (functions included). `from pkg import x`
    counts as importing pkg.x when that is a module, else pkg."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
        else:
            continue
        names = ["inference.py" if n.split(".")[0] == "inference" else n for n in names]  # the main
        found |= {n for n in names if n.split(".")[0] in PACKAGES or n in known}
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def layer(module: str) -> int:
    return LAYER["main"] if module in MAINS else LAYER[module.split(".")[0]]


def test_every_import_points_down_or_sideways():
    upward = [f"{m} imports {d}" for m, deps in graph().items() for d in deps if layer(d) > layer(m)]
    assert not upward, upward


def test_model_imports_only_torch_and_torchvision():
    stdlib_ok = {"os", "socket", "math", "typing", "collections", "dataclasses", "functools"}
    for path in (ROOT / "model").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    assert top in {"torch", "torchvision", "model", "__future__"} | stdlib_ok, f"{path.name} imports {name}"


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [node, dep]) if dep in path
                            else f"import cycle through {node} -> {dep}")
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from train import checkpoint\n    import utils.dist\n")
    assert imports_of(source, {"train", "train.checkpoint", "utils.dist"}) == {"train.checkpoint", "utils.dist"}


@pytest.mark.parametrize("path", [ROOT / m for m in MAINS] + sorted((ROOT / "train").glob("*.py")), ids=lambda p: p.name)
def test_functions_in_the_mains_and_train_are_short(path):
    """About 40 lines at most, docstring included, so that each reads at a glance."""
    long = [f"{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 42]
    assert not long, long
