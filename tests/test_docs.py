"""The tables of README.md and docs/ that name code name code that exists: every path, and every
name written after a file as "`file.py`: `name`, `Class.method`" is defined in that file."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("config", "model", "tasks", "train", "infer", "data", "store", "groups", "sweeps", "utils", "docs", "serve", "tests", "bench",
       "scripts", ".ci")
PATH = re.compile(rf"^({'|'.join(re.escape(t) for t in TOP)})/[\w.\-/]*$|^(train|inference)\.py$|^requirements[\w\-]*\.txt$")
NAMED = re.compile(r"`([\w/.\-]+\.py)`: ((?:`[\w.]+`(?:\s*\([^)]*\))?(?:, | and |, and )?)+)")


def removed_feature(token: str) -> bool:
    """A path inside a feature that this copy of the template does not have (tests/test_features.py)."""
    from utils.features import FEATURES

    return token.split("/")[0] in ("groups", "sweeps") and token.split("/")[0] not in FEATURES


def table_rows(page: Path) -> list[str]:
    return [line for line in page.read_text().splitlines() if line.startswith("|") and not line.startswith("| ---")]


def defines(path: Path, name: str) -> bool:
    text = path.read_text()
    last = name.split(".")[-1]
    return bool(re.search(rf"^\s*(def|class|async def) {last}\b|^\s*{last}\s*(:[^=\n]*)?=|^\s+{last}\s*:", text, re.M))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_paths_in_tables_exist(page):
    missing = []
    for row in table_rows(page):
        for token in re.findall(r"`([^`]+)`", row):
            token = token.split(" ")[0].rstrip(",:")
            if PATH.match(token) and "<" not in token and not removed_feature(token):
                if not (ROOT / token).exists() and not (ROOT / token.rstrip("/")).exists():
                    missing.append(token)
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_names_after_a_file_are_defined_in_it(page):
    undefined = []
    for row in table_rows(page):
        for file, names in NAMED.findall(row):
            path = ROOT / file
            if not path.exists():
                continue  # the test above reports it (or the feature was removed)
            undefined += [f"{file}: {n}" for n in re.findall(r"`([\w.]+)`", names) if not defines(path, n)]
    assert not undefined, f"{page.name} names what its file does not define: {undefined}"


def test_the_checker_catches_a_wrong_name(tmp_path):
    assert defines(ROOT / "train" / "run.py", "train_run") and not defines(ROOT / "train" / "run.py", "train_group")
    assert NAMED.findall("| x | `train/run.py`: `train_run`, `plan_run` |") == [("train/run.py", "`train_run`, `plan_run`")]
