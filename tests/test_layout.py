"""The code's layering: which module may import which, no import cycles, short functions, and
lower layers that name no task.

Layers, top to bottom: the mains (train.py, inference.py); the features serve/, groups/ and sweeps/; tasks/;
infer/; train/; data/ and store/; utils/; model/. A module imports only from its own layer or below;
model/ imports only torch and torchvision. Imports inside functions count too. The core reaches a
feature only through utils/features.py's table, never by an import.
"""
import ast
import re
from pathlib import Path

import pytest

from tasks import task_dict
from utils.config import SHARED_KEYS, own_keys

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "utils", "data", "store", "train", "infer", "tasks", "serve", "groups", "sweeps")
MAINS = ("train.py", "inference.py")
LAYER = {"model": 0, "utils": 1, "data": 2, "store": 2, "train": 3, "infer": 4, "tasks": 5, "serve": 6, "groups": 6, "sweeps": 6, "main": 7}
FEATURE_PACKAGES = ("serve", "groups", "sweeps")  # utils/features.py FEATURES, where installed (tests/test_features.py removes them)


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
    counts as importing pkg.x when that is a module, else pkg. Imports under `if TYPE_CHECKING:` are
    for annotations only (never executed), so they are not dependencies: train/run.py names Task."""
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
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


def test_the_checker_skips_only_annotation_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tasks.base import Task\n"
                      "else:\n    import utils.dist\n")
    assert imports_of(source, {"tasks.base", "utils.dist"}) == {"utils.dist"}


def test_the_core_reaches_a_feature_only_through_its_table():
    """No module outside groups/ and sweeps/ imports them: delete one (and its line in
    utils/features.py) and nothing else breaks. test_features.py runs the template without them."""
    found = [f"{m} imports {d}" for m, deps in graph().items() for d in deps
             if d.split(".")[0] in FEATURE_PACKAGES and m.split(".")[0] != d.split(".")[0]]
    assert not found, found
    from utils.features import FEATURES
    assert set(FEATURES) == {f for f in FEATURE_PACKAGES if (ROOT / f).is_dir()}


@pytest.mark.parametrize("path", [ROOT / m for m in MAINS] + sorted((ROOT / "train").glob("*.py")) + sorted((ROOT / "tasks").rglob("*.py"))
                         + sorted(p for f in FEATURE_PACKAGES for p in (ROOT / f).glob("*.py")) + [ROOT / "store" / "commands.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_in_the_mains_train_and_tasks_are_short(path):
    """About 40 lines at most, docstring included, so that each reads at a glance."""
    long = [f"{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 42]
    assert not long, long


def task_words() -> set[str]:
    """What names a task: its name, the word classifier/classify, its metrics, and its own keys that
    are identifiers (with an underscore: `generator` or `dropout` are also plain words)."""
    words = set(task_dict) | {"classif"}
    for task in task_dict.values():
        words |= set(task.modes) | {k for k in own_keys(task.config) if k not in SHARED_KEYS and "_" in k}
    return words


def task_wording(root: Path = ROOT) -> list[str]:
    """Lines of train/, utils/, data/ and store/ that name a task (model/: a task's name). store/upgrade.py is the one
    exception: it is the history of run formats, which names the tasks of those days."""
    words = task_words()
    found = []
    for pkg in ("train", "utils", "model", "data", "store"):
        for path in sorted((root / pkg).rglob("*.py")):
            if path.relative_to(root) == Path("store/upgrade.py"):
                continue
            names = set(task_dict) if pkg == "model" else words
            pattern = re.compile("|".join(rf"\b{w}" + ("" if w == "classif" else r"\b") for w in sorted(names)), re.I)
            found += [f"{path.relative_to(root)}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line)]
    return found


def test_lower_layers_name_no_task():
    """train/, utils/, data/, store/ and model/ hold no task's wording or defaults: tasks/ does."""
    assert not task_wording(), task_wording()


def test_readme_lists_exactly_the_task_interface():
    """README's "Adding a task" table names every public member of the Task base class, and no other."""
    from tasks.base import Task

    section = (ROOT / "docs" / "tasks.md").read_text().split("### Adding a task")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = [re.match(r"\| `(\w+)", row).group(1) for row in rows]
    public = [name for name in vars(Task) if not name.startswith("_")]
    assert sorted(listed) == sorted(public) and len(listed) == len(set(listed)), (listed, public)
