"""Runs written by an earlier version (format 1, tests/fixtures/old_runs/, made by commit af842fa)
still load for inference and --compare, and a killed one continues bit-identically."""
import json
import shutil
from pathlib import Path

import pytest

from store.upgrade import run_format, upgrade_run, upgrade_state

FIXTURES = Path(__file__).parent.parent / "fixtures" / "old_runs"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def test_formats_and_upgrades_are_numbered():
    old = json.loads((FIXTURES / EXPECTED["finished_classifier"]["id"] / "run.json").read_text())
    assert "format" not in old and run_format(old) == 1
    assert upgrade_run(old)["task"] == "classify" and upgrade_run(old)["modes"]["val_acc"] == "max"
    assert run_format({"config": {}}) == 0 and run_format({"format": 2}) == 2
    state = {"optimizer": {"a": 1}, "scheduler": {"b": 2}, "step": 4,
             "sums": {"loss_sum": 8.0, "correct": 6, "grad_norm_sum": 0.0, "count": 10, "seconds": 1.5}}
    new = upgrade_state(state)
    assert new["optimizers"] == {"model": {"a": 1}} and new["schedulers"] == {"model": {"b": 2}}
    assert new["sums"] == {"metrics": {"train_loss": 8.0, "train_acc": 6.0}, "counts": {"train_loss": 10, "train_acc": 10},
                           "seconds": 1.5}


@pytest.mark.slow
def test_old_runs_load_compare_and_continue(project):
    for name in ("finished_classifier", "killed_classifier"):
        shutil.copytree(FIXTURES / EXPECTED[name]["id"], project.experiments / EXPECTED[name]["id"])
    old = EXPECTED["finished_classifier"]
    r = project.run("inference.py", f"resume={old['id']}", "inference_device=cpu")
    assert r.returncode == 0 and f"val_acc {old['inference']['val_acc']:.4f}" in r.stdout, r.stderr
    metrics = json.loads((project.experiments / old["id"] / "inference" / "val_metrics.json").read_text())
    assert metrics["val_acc"] == old["inference"]["val_acc"]
    killed = EXPECTED["killed_classifier"]
    child = project.train(*killed["continue"])
    assert project.info(child)["weights"]["sha256"] == killed["sha256"] == old["sha256"]
    r = project.run("inference.py", "--compare", old["id"], child, "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    assert "| accuracy | 77.99% | 77.99% |" in r.stdout and "- `name`: A 'old_clf', B None\n\nThe model" in r.stdout
