"""Fixtures: a temporary copy of the project, and helpers to run its mains as a user would."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE = ("config", "model", "data", "store", "groups", "sweeps", "train", "infer", "tasks", "utils", "train.py", "inference.py")


class Project:
    """A copy of the project in a temporary folder; `run` starts train.py or inference.py there."""

    def __init__(self, root: Path):
        self.root = root
        self.experiments = root / "experiments"
        self.checkpoints = root / "checkpoints"

    def run(self, script: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, *args], cwd=self.root, env=_env(env),
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, script: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, script, *args], cwd=self.root, env=_env(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def train(self, *args: str, env: dict | None = None) -> str:
        """Run train.py, which must succeed; returns the new run's id."""
        before = set(self.run_ids())
        r = self.run("train.py", *args, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        (new,) = set(self.run_ids()) - before
        return new

    def run_ids(self) -> list[str]:
        return sorted(p.name for p in self.experiments.iterdir() if p.is_dir() and p.name[0].isdigit())  # not groups/

    def info(self, run_id: str) -> dict:
        return json.loads((self.experiments / run_id / "run.json").read_text())

    def status(self, run_id: str) -> str:
        """The live status, as --list shows it (killed for a dead 'running' run)."""
        from store.runs import read_run
        return read_run(self.experiments / run_id)["status"]

    def snapshot(self) -> dict:
        """sha256 of every file under experiments/ and checkpoints/ (the bytes a run owns)."""
        out = {}
        for base in (self.experiments, self.checkpoints):
            for p in sorted(base.rglob("*")):
                if p.is_file():
                    out[str(p.relative_to(self.root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out


def _env(extra: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPLATE_")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})}


def copy_project(dest: Path) -> Project:
    dest.mkdir(parents=True)
    for name in CODE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    for name in ("experiments", "checkpoints"):
        (dest / name).mkdir()
        (dest / name / ".gitkeep").touch()
    return Project(dest)


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Path:
    """An empty experiments/ (and checkpoints/) in a temporary folder, for the run store used in process."""
    import store.runs as rs

    monkeypatch.setattr(rs, "EXPERIMENTS", tmp_path / "experiments")
    monkeypatch.setattr(rs, "CHECKPOINTS", tmp_path / "checkpoints")
    rs.EXPERIMENTS.mkdir()
    return rs.EXPERIMENTS


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return copy_project(tmp_path / "proj")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Project, str]:
    """A project with one finished 2-epoch run, shared by the tests of a module (read-only use)."""
    p = copy_project(tmp_path_factory.mktemp("shared") / "proj")
    return p, p.train("epochs=2")


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 12, split: bool = False) -> Path:
    """Tiny PNG images, one sub-folder per class (under train/ and val/ when split)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    parts = ("train", "val") if split else ("",)
    for part in parts:
        for c, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                a = rng.integers(0, 60, (size, size, 3)) + 150 * c
                Image.fromarray(a.astype(np.uint8)).save(folder / f"{i}.png")
    return root
