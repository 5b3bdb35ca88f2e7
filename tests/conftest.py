"""Fixtures: a temporary copy of the project, and helpers to run its mains as a user would."""
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE = ("config", "model", "data", "store", "train", "infer", "tasks", "utils", "train.py", "inference.py")
FEATURE_DIRS = ("serve", "groups", "sweeps")  # copied where present: a template may have had a feature removed


class Project:
    """A copy of the project in a temporary folder; `run` starts train.py or inference.py there."""

    def __init__(self, root: Path):
        self.root = root
        self.experiments = root / "experiments"
        self.checkpoints = root / "checkpoints"

    def run(self, script: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """`python script args...` in the project (script "-c": code, then its args): a process of its
        own, forked from a warm interpreter (tests/forkserver.py) unless the environment sets what
        only a fresh one reads."""
        if os.environ.get("TEMPLATE_TEST_FRESH") == "1" or FRESH_ONLY & set(env or {}):
            return subprocess.run([sys.executable, script, *args], cwd=self.root, env=_env(env),
                                  capture_output=True, text=True, timeout=timeout)
        return WARM.run([script, *args], self.root, _env(env), timeout)

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


FRESH_ONLY = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED"}  # read when libraries load


class WarmStarter:
    """The client of tests/forkserver.py: one helper for the session, started on first use."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.log = Path(tempfile.gettempdir()) / f"forkserver.{os.getpid()}.log"

    def start(self) -> None:
        helper = Path(__file__).with_name("forkserver.py")
        self.proc = subprocess.Popen([sys.executable, str(helper)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "a"), text=True, env=_env(None))  # noqa: SIM115
        assert "ready" in json.loads(self.proc.stdout.readline() or '{"ready": null}'), self.log.read_text()

    def reply(self, timeout: float | None) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return json.loads(self.proc.stdout.readline()) if ready else None

    def run(self, argv: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = self.reply(60)["pid"]
            done = self.reply(timeout)
            if done is None:
                os.killpg(pid, signal.SIGKILL)
                self.reply(None)
                raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, out.read_text(), err.read_text())
            return subprocess.CompletedProcess([sys.executable, *argv], done["returncode"],
                                               out.read_text(errors="replace"), err.read_text(errors="replace"))


# One helper per session, though this module is imported twice (as conftest and as tests.conftest).
WARM: WarmStarter = getattr(sys, "_template_warm_starter", None) or WarmStarter()
sys._template_warm_starter = WARM


def _env(extra: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPLATE_")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})}


def copy_project(dest: Path) -> Project:
    dest.mkdir(parents=True)
    for name in CODE + tuple(f for f in FEATURE_DIRS if (ROOT / f).is_dir()):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    for name in ("experiments", "checkpoints"):
        (dest / name).mkdir()
        (dest / name / ".gitkeep").touch()
    return Project(dest)


def pytest_collection_modifyitems(config, items) -> None:
    """A test marked with a feature (groups, sweeps) is skipped where that feature is not installed:
    deleting the feature's folder and its line in utils/features.py leaves a suite that passes."""
    from utils.features import FEATURES

    for item in items:
        for name in ("groups", "sweeps"):
            if item.get_closest_marker(name) and (name not in FEATURES or not (ROOT / name).is_dir()):
                item.add_marker(pytest.mark.skip(reason=f"the {name} feature is not installed"))


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
