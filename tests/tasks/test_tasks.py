"""The guarantees every task gets by being registered in task_dict: run for each entry, and for a
third task written from README's "Adding a task" alone (tests/denoise_task.py, installed as
tasks/denoise/ with one line in task_dict)."""
import hashlib
import re
import signal
import time
from pathlib import Path

import pytest

from tasks import task_dict
from tests.conftest import copy_project, make_image_folder
from utils.config import defaults_of

pytestmark = pytest.mark.slow  # each test starts train.py / inference.py processes

DENOISE = Path(__file__).with_name("denoise_task.py")
TASKS = [*task_dict, "denoise"]
RUN = ("epochs=2",)  # every task's own defaults, for two epochs (22 steps each on the digits)
# Tasks whose defaults train for minutes an epoch run smaller here, still 22 steps an epoch
# (alpha_wgan_gp: the 960 brain patches of 8^3 in batches of 43).
# (segment: 44 patches of 16^3 a epoch in batches of 2, on the demo's brain blocks.)
SMALL = {"alpha_wgan_gp": ("volume_size=8", "batch_size=43"), "segment": ("patch_size=16", "patches_per_epoch=44")}


def run_args(task: str) -> tuple:
    return (*RUN, *SMALL.get(task, ()))


def install_denoise(root: Path) -> None:
    """What README's walk-through says: the package, and one line in task_dict."""
    (root / "tasks" / "denoise").mkdir()
    (root / "tasks" / "denoise" / "__init__.py").write_text(DENOISE.read_text())
    registry = root / "tasks" / "__init__.py"
    text = registry.read_text().replace("\nfrom tasks.classify import Classify\n",
                                        "\nfrom tasks.classify import Classify\nfrom tasks.denoise import Denoise\n")
    registry.write_text(text.replace('    "wgan_gp": WganGp,\n', '    "wgan_gp": WganGp,\n    "denoise": Denoise,\n'))


@pytest.fixture(scope="module", params=TASKS)
def task_run(request, tmp_path_factory):
    """A project (with the third task installed) and one finished 2-epoch run of the task."""
    project = copy_project(tmp_path_factory.mktemp(request.param) / "proj")
    install_denoise(project.root)
    return request.param, project, project.train(f"task={request.param}", *run_args(request.param))


def sha(project, run_id: str) -> str:
    return project.info(run_id)["weights"]["sha256"]


def config_class(task: str, project) -> type:
    if task == "denoise":
        from tests.tasks.denoise_task import DenoiseConfig
        return DenoiseConfig
    return task_dict[task].config


def test_config_saved_before_the_first_step(task_run):
    task, project, _ = task_run
    r = project.run("train.py", f"task={task}", *run_args(task), env={"TEMPLATE_FAULT": "step:1"})
    assert r.returncode == -signal.SIGKILL
    killed = project.run_ids()[-1]
    saved = (project.experiments / killed / "config.yaml").read_text()
    assert [line.split(":")[0] for line in saved.splitlines() if not line.startswith("#")] == list(defaults_of(config_class(task, project)))
    assert project.status(killed) == "killed"


def test_same_config_same_weights(task_run):
    task, project, base = task_run
    assert sha(project, project.train(f"task={task}", *run_args(task))) == sha(project, base)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(task_run, workers):
    task, project, base = task_run
    r = project.run("train.py", f"task={task}", *run_args(task), "checkpoint_every_steps=5", env={"TEMPLATE_FAULT": "step:30"})
    assert r.returncode == -signal.SIGKILL
    killed = project.run_ids()[-1]
    assert project.info(killed)["state"] == {"epoch": 1, "step": 3}  # saved at global step 25, mid epoch 2
    child = project.train(f"resume={killed}", "epochs=2", f"num_workers={workers}")
    assert sha(project, child) == sha(project, base)


def test_sigterm_exits_143_with_the_state_saved(task_run):
    task, project, _ = task_run
    before = set(project.run_ids())
    proc = project.popen("train.py", f"task={task}", *SMALL.get(task, ()), "epochs=50", "checkpoint_every_steps=5")
    deadline = time.time() + 120
    while time.time() < deadline and not [p for p in project.experiments.glob("*/state.pt") if p.parent.name not in before]:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 143
    (run_id,) = set(project.run_ids()) - before
    assert project.info(run_id)["status"] == "interrupted" and (project.experiments / run_id / "state.pt").exists()


def test_nan_fails_the_run(task_run):
    task, project, _ = task_run
    r = project.run("train.py", f"task={task}", *run_args(task), env={"TEMPLATE_FAULT": "nan:3"})
    assert r.returncode == 1 and "became nan" in r.stderr, r.stderr
    failed = project.run_ids()[-1]
    assert project.info(failed)["status"] == "failed" and not (project.experiments / failed / "model.safetensors").exists()


def inference_files(project, run_id: str) -> dict:
    folder = project.experiments / run_id / "inference"
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_inference_is_deterministic(task_run):
    task, project, base = task_run
    r = project.run("inference.py", f"resume={base}", "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    first = inference_files(project, base)
    assert first, "inference wrote its results under inference/"
    assert project.run("inference.py", f"resume={base}", "inference_device=cpu").returncode == 0
    assert inference_files(project, base) == first


def test_commands_that_do_not_apply_are_refused_changing_nothing(task_run, tmp_path):
    """Each command either works or is exit 2 with one line, every file left as it was."""
    task, project, base = task_run
    images = make_image_folder(tmp_path / "images", size=8)
    for words in (["--export", "onnx"], ["--input", str(images / "cat")], ["--compare", base, base]):
        before = project.snapshot()
        r = project.run("inference.py", f"resume={base}", "inference_device=cpu", *words)
        assert r.returncode in (0, 2), (words, r.stderr)
        if r.returncode == 2:
            assert re.fullmatch(r"error: [^\n]+\n", r.stderr), r.stderr
            assert project.snapshot() == before, words
