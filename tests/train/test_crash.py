"""Never lose a run: SIGKILL at named fault points and at random moments, concurrent runs,
failed writes. After each, every finished run keeps its bytes and the checkpoints/ view shows
one run consistently (or is visibly incomplete); at the end inference works and every killed
run continues."""
import json
import random
import signal
import subprocess
import time

import pytest

from tests.conftest import copy_project

pytestmark = pytest.mark.slow  # each test starts train.py / inference.py processes

ARGS = ("epochs=2", "batch_size=128")  # 11 steps an epoch: short runs, every save path taken
# Fault points a run is killed at, in the order one lineage meets them: each process continues
# the run the previous one left killed, so every kill is followed by a continuation.
CHAIN = [
    ("started", "just after creating its folder, run.json and config.yaml"),
    ("replace:2", "inside a write: config.yaml written and fsynced, not yet moved into place"),
    ("view:1", "between the link steps of the start-up checkpoints/ update"),
    ("save:1", "before writing state.pt at the end of epoch 1"),
    ("replace:3", "inside the state.pt save: temporary file written, not yet moved into place"),
    ("save:2", "before the end-of-epoch-2 state.pt (the one of epoch 1 is saved)"),
    ("weights", "before writing model.safetensors"),
    ("final", "after the weights, before the final run.json"),
]
# Points after which the run is finished: a new run each.
AFTER_FINISH = [
    ("finished", "after the final run.json, before the checkpoints/ update"),
    ("view:2", "between the link steps of the final checkpoints/ update (config linked)"),
    ("view:3", "between the link steps of the final checkpoints/ update (weights linked, run.json not)"),
]


def finished_files(project) -> dict:
    """The bytes of every finished run (its inference/ folder excluded)."""
    snap = project.snapshot()
    finished = {r for r in project.run_ids() if (project.experiments / r / "run.json").exists()
                and project.info(r)["status"] == "finished"}
    return {k: v for k, v in snap.items()
            if k.startswith("experiments/") and k.split("/")[1] in finished and "/inference/" not in k}


def check_view(project) -> None:
    """checkpoints/ shows one run consistently, or is visibly incomplete (no run.json)."""
    ck = project.checkpoints
    if not (ck / "run.json").exists():
        return
    info = json.loads((ck / "run.json").read_text())
    folder = project.experiments / info["id"]
    assert (ck / "config.yaml").read_text().splitlines()[0] == f"# run {info['id']}"
    assert (ck / "config.yaml").read_bytes() == (folder / "config.yaml").read_bytes()
    if (ck / "model.safetensors").exists():
        assert (ck / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    if info["status"] == "finished":
        assert (ck / "model.safetensors").stat().st_size == info["weights"]["size"]


def after_kill(project, before: dict) -> None:
    """What must hold after any kill: finished runs keep their bytes, the view is consistent."""
    after = finished_files(project)
    assert {k: after[k] for k in before} == before, "a finished run changed"
    check_view(project)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project with one finished run; its weights' sha256 is what every lineage must end with."""
    project = copy_project(tmp_path_factory.mktemp("crash") / "proj")
    base = project.train(*ARGS)
    return project, base, project.info(base)["weights"]["sha256"]


def new_run(project, ids_before: set) -> str | None:
    new = [r for r in set(project.run_ids()) - ids_before if (project.experiments / r / "run.json").exists()]
    assert len(new) <= 1
    return new[0] if new else None


def test_sigkill_at_every_fault_point(store):
    project, _, expected = store
    current = None
    for point, _ in CHAIN:
        before, ids = finished_files(project), set(project.run_ids())
        resume = (f"resume={current}",) if current else ()
        r = project.run("train.py", *ARGS, *resume, env={"TEMPLATE_FAULT": point})
        assert r.returncode == -signal.SIGKILL, (point, r.stderr[-1500:])
        after_kill(project, before)
        current = new_run(project, ids)
        assert project.status(current) == "killed", point
    r = project.run("inference.py", "inference_device=cpu")  # resume: null still works
    assert r.returncode == 0 and "val_acc" in r.stdout, r.stderr
    last = project.train(f"resume={current}", *ARGS)  # epochs comes from the command line, not the parent
    assert project.info(last)["weights"]["sha256"] == expected, "8 kills later, the same weights"
    for point, _ in AFTER_FINISH:
        before, ids = finished_files(project), set(project.run_ids())
        r = project.run("train.py", *ARGS, env={"TEMPLATE_FAULT": point})
        assert r.returncode == -signal.SIGKILL, (point, r.stderr[-1500:])
        after_kill(project, before)
        run_id = new_run(project, ids)
        assert project.status(run_id) == "finished" and project.info(run_id)["weights"]["sha256"] == expected
    r = project.run("inference.py", "inference_device=cpu")
    assert r.returncode == 0, r.stderr


def test_random_sigkills(store):
    """10 SIGKILLs at random moments along lineages; each continuation resumes the killed run."""
    project, _, expected = store
    rng = random.Random(1234)
    current, kills = None, 0
    while kills < 10:
        before, ids = finished_files(project), set(project.run_ids())
        resume = (f"resume={current}",) if current else ()
        proc = project.popen("train.py", *ARGS, "checkpoint_every_steps=3", *resume)
        while proc.poll() is None and not set(project.run_ids()) - ids:
            time.sleep(0.02)  # start-up (imports) takes ~4 s: kill at a random moment after it
        time.sleep(rng.uniform(0.0, 2.5))  # the run itself takes ~2.5 s
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        after_kill(project, before)
        run_id = new_run(project, ids)
        kills += proc.returncode == -signal.SIGKILL
        if run_id and project.status(run_id) == "finished":  # a lineage complete: start another
            assert project.info(run_id)["weights"]["sha256"] == expected
            current = None
        else:
            current = run_id or current
    r = project.run("inference.py", "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    if current:
        last = project.train(f"resume={current}", *ARGS)
        assert project.info(last)["weights"]["sha256"] == expected


def test_two_runs_started_at_once_both_finish(project):
    procs = [project.popen("train.py", "epochs=1") for _ in range(2)]
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    ids = project.run_ids()
    assert len(ids) == 2 and all(project.info(r)["status"] == "finished" for r in ids)
    check_view(project)
    shown = json.loads((project.checkpoints / "run.json").read_text())["id"]
    latest = max(ids, key=lambda r: project.info(r)["start_utc"])
    assert shown == latest, "the view shows the run that started last"


def test_continuing_a_running_run_is_refused(project):
    proc = project.popen("train.py", "epochs=50")
    try:
        deadline = time.time() + 120
        while not list(project.experiments.glob("*/metrics.csv")) and time.time() < deadline:
            time.sleep(0.1)
        (run_id,) = project.run_ids()
        r = project.run("train.py", f"resume={run_id}", "epochs=60")
        assert r.returncode == 2 and "still running" in r.stderr
        assert "running" in project.run("train.py", "--list").stdout
    finally:
        proc.kill()
        proc.communicate()
    assert "killed" in project.run("train.py", "--list").stdout


def test_failed_write_during_a_save(project):
    base = project.train("epochs=1")
    before = finished_files(project)
    r = project.run("train.py", "epochs=2", env={"TEMPLATE_FAULT": "replace:4:enospc"})
    assert r.returncode == 1 and "No space left on device" in r.stderr and "python train.py resume=" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert finished_files(project) == before
    (failed,) = set(project.run_ids()) - {base}
    assert project.info(failed)["status"] == "failed"
    assert project.run("train.py", f"resume={failed}", "epochs=2").returncode == 0


def test_read_only_experiments(project, tmp_path):
    base = project.train("epochs=1")
    before = project.snapshot()
    mount = subprocess.run(["mount", "--bind", str(project.experiments), str(project.experiments)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip("bind mounts are not allowed here (needed to make experiments/ read-only for root)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(project.experiments)], capture_output=True).returncode:
            pytest.skip("read-only remounts are not allowed here")
        r = project.run("train.py", "epochs=1")
        assert r.returncode == 1 and "cannot create a run folder" in r.stderr and "Read-only" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        r = project.run("inference.py", f"resume={base}", "inference_device=cpu")
        assert r.returncode == 1 and "Read-only" in r.stderr, r.stderr
    finally:
        subprocess.run(["umount", str(project.experiments)], check=True)
    assert project.snapshot() == before
