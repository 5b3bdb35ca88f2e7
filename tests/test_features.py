"""A feature is removable: delete its folder, its tests and its line in utils/features.py, and the
template still trains, infers, lists, writes its page, and passes its quick tests."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Project, _env

pytestmark = pytest.mark.slow  # a copy of the project, its commands and its quick tests


def without(features: tuple[str, ...], dest: Path) -> Project:
    """A copy of the project (code, tests, config) with `features` removed as README says."""
    ignore = shutil.ignore_patterns("__pycache__", ".git", "experiments", "checkpoints", ".pytest_cache", ".ruff_cache")
    shutil.copytree(ROOT, dest, ignore=ignore)
    for name in ("experiments", "checkpoints"):
        (dest / name).mkdir()
        (dest / name / ".gitkeep").touch()
    table = dest / "utils" / "features.py"
    text = table.read_text()
    line = re.search(r"^FEATURES = \((.*)\).*$", text, re.M)
    kept = [n for n in re.findall(r'"(\w+)"', line.group(1)) if n not in features]
    table.write_text(text.replace(line.group(0), "FEATURES = (" + "".join(f'"{n}", ' for n in kept) + ")"))
    for feature in features:
        shutil.rmtree(dest / feature)
        shutil.rmtree(dest / "tests" / feature)
    return Project(dest)


def commands_work(project: Project, features: tuple[str, ...]) -> None:
    run_id = project.train("epochs=1")
    assert project.status(run_id) == "finished"
    for command in (["inference.py"], ["train.py", "--list"], ["inference.py", "--report"]):
        r = project.run(*command)
        assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    assert run_id in (project.experiments / "index.html").read_text()
    assert ("--sweep" in project.run("train.py", "--help").stdout) == ("sweeps" not in features)
    assert ("--serve" in project.run("inference.py", "--help").stdout) == ("serve" not in features)
    if "groups" in features:  # the keys stay in the config; asking for a group is refused, naming why
        r = project.run("train.py", "seeds=0,1", "epochs=1")
        assert r.returncode == 2 and "seeds" in r.stderr and "groups" in r.stderr, r.stderr


@pytest.mark.parametrize("feature", ["serve", "groups", "sweeps"])
def test_the_template_runs_without_a_feature(tmp_path, feature):
    commands_work(without((feature,), tmp_path / "proj"), (feature,))


def test_without_both_features_the_quick_suite_passes(tmp_path):
    """Each feature is removable on its own (nothing outside it imports it: tests/test_layout.py); with
    both gone, the commands work and every quick test of what is left passes."""
    project = without(("groups", "sweeps"), tmp_path / "proj")
    commands_work(project, ("groups", "sweeps"))
    quick = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider"],
                           cwd=project.root, env=_env(None), capture_output=True, text=True, timeout=900)
    assert quick.returncode == 0, quick.stdout[-3000:]
    assert " passed" in quick.stdout.splitlines()[-1], quick.stdout[-500:]
