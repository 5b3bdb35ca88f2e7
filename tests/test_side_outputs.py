"""Side outputs never fail a trained run: what is printed, curves.png, TensorBoard and the index
page may fail; the run still finishes with its weights and hashes, and says what failed once in
train.log and run.json's `warnings`. Exit status 0: the run's products are whole."""
import json
import subprocess
import sys

import pytest

RUN = ("epochs=2", "progress=false")


def test_a_stream_whose_reader_is_gone_becomes_a_sink():
    """The guard itself: the write that meets the closed pipe and every later one return, the
    descriptor then writes to /dev/null, and why is kept."""
    import os

    from utils.streams import GuardedStream

    read, write = os.pipe()
    os.close(read)
    stream = GuardedStream(os.fdopen(write, "w", buffering=1), "stdout")
    assert stream.write("line\n") == 5 and "Broken pipe" in stream.lost and "stdout" in stream.lost
    stream.write("more\n")
    stream.flush()
    assert os.path.samefile(f"/proc/self/fd/{stream.fileno()}", os.devnull) and not stream.isatty()


def patched(project, preamble: str, *args: str) -> subprocess.CompletedProcess:
    """train.py with `preamble` run first in its process (to make a side output fail)."""
    code = f"import runpy, sys\n{preamble}\nsys.argv = ['train.py', *sys.argv[1:]]\nrunpy.run_path('train.py', run_name='__main__')"
    return project.run("-c", code, *args)


def finished_with_weights(project, run_id: str) -> dict:
    info = project.info(run_id)
    assert info["status"] == "finished" and len(info["weights"]["sha256"]) == 64, info
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    return info


@pytest.mark.slow
def test_a_pipe_closed_after_the_first_line(project):
    """python train.py ... | head -1: the run finishes, says once that stdout was lost, and exits 0."""
    r = subprocess.run(f"{sys.executable} train.py {' '.join(RUN)} | head -1; echo status ${{PIPESTATUS[0]}}", shell=True,
                       executable="/bin/bash", cwd=project.root, capture_output=True, text=True, timeout=300)
    assert r.stdout.splitlines()[0].startswith("run ") and r.stdout.splitlines()[-1] == "status 0", r.stdout + r.stderr
    (run_id,) = project.run_ids()
    info = finished_with_weights(project, run_id)
    assert len(info["warnings"]) == 1 and "stdout could not be written" in info["warnings"][0], info["warnings"]
    log = (project.experiments / run_id / "train.log").read_text()
    assert log.count("warning: stdout could not be written") == 1 and "finished run" in log


@pytest.mark.slow
def test_stdout_closed_before_the_first_epoch(project):
    p = subprocess.Popen([sys.executable, "train.py", *RUN], cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # nobody reads: the first print meets a closed pipe
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-2000:]
    (run_id,) = project.run_ids()
    assert "stdout could not be written" in finished_with_weights(project, run_id)["warnings"][0]


@pytest.mark.slow
def test_a_read_only_index_and_an_unwritable_tensorboard_folder(project):
    """The user's read-only experiments/index.html is left as it is; TensorBoard's writer failing (as on
    an unwritable tb/) ends TensorBoard only. Both are warnings; the run finishes."""
    index = project.experiments / "index.html"
    index.write_text("mine")
    index.chmod(0o444)
    fake_tensorboard = (
        "import importlib.machinery, types\n"
        "tb = types.ModuleType('tensorboard'); tb.__spec__ = importlib.machinery.ModuleSpec('tensorboard', None)\n"
        "writer = types.ModuleType('torch.utils.tensorboard')\n"
        "class SummaryWriter:\n"
        "    def __init__(self, log_dir): raise PermissionError(13, 'Permission denied', log_dir)\n"
        "writer.SummaryWriter = SummaryWriter\n"
        "sys.modules.update({'tensorboard': tb, 'torch.utils.tensorboard': writer})")
    r = patched(project, fake_tensorboard, *RUN, "tensorboard=true")
    assert r.returncode == 0, r.stderr
    (run_id,) = project.run_ids()
    warnings = finished_with_weights(project, run_id)["warnings"]
    assert any("TensorBoard could not write" in w for w in warnings) and any("index.html" in w for w in warnings), warnings
    assert index.read_text() == "mine"


@pytest.mark.slow
def test_curves_that_cannot_be_drawn(project):
    r = patched(project, "import utils.plots\ndef broken(*a, **k): raise RuntimeError('no backend')\n"
                         "utils.plots.plot_curves = broken", *RUN)
    assert r.returncode == 0 and "warning: curves.png could not be drawn" in r.stderr, r.stderr
    (run_id,) = project.run_ids()
    assert "curves.png could not be drawn (RuntimeError: no backend)" in finished_with_weights(project, run_id)["warnings"][0]
    assert not (project.experiments / run_id / "curves.png").exists()


@pytest.mark.slow
@pytest.mark.groups
def test_a_group_whose_stdout_closes_midway_finishes_every_member(project):
    r = subprocess.run(f"{sys.executable} train.py seeds=0,1 epochs=1 progress=false | head -2", shell=True,
                       cwd=project.root, capture_output=True, text=True, timeout=600)
    (group,) = [json.loads(p.read_text()) for p in (project.experiments / "groups").glob("*/group.json")]
    assert group["status"] == "finished" and len(project.run_ids()) == 2, r.stderr
    assert all(project.info(m)["status"] == "finished" for m in project.run_ids())


@pytest.mark.slow
@pytest.mark.sweeps
def test_a_sweep_whose_stdout_closes_midway_finishes_every_trial(project):
    pytest.importorskip("optuna")
    sweep = project.root / "sweep.yaml"
    sweep.write_text("trials: 2\nfixed: {epochs: 1}\nspace: {lr: {log_uniform: [1.0e-3, 1.0e-2]}}\n")
    r = subprocess.run(f"{sys.executable} train.py --sweep {sweep} | head -2", shell=True,
                       cwd=project.root, capture_output=True, text=True, timeout=600)
    trials = [r for r in project.run_ids() if project.info(r).get("sweep")]
    assert len(trials) == 2 and all(project.info(t)["status"] == "finished" for t in trials), r.stderr
