"""task_dict: the one registry of tasks. A task is a class that holds everything specific to what
the loop trains (README, "Adding a task"); train.py, inference.py and the Trainer call only its
methods, so the run store, state.pt, resume, DDP, AMP and the reports work for every task."""
from tasks.classify import Classify
from tasks.wgan_gp import WganGp
from utils.errors import UsageError

task_dict = {"classify": Classify, "wgan_gp": WganGp}


def task_of(*runs: dict):
    """The task of the runs (run.json's "task"; runs from before tasks existed are classifiers);
    runs of different tasks cannot be compared."""
    names = [run.get("task", "classify") for run in runs]
    if len(set(names)) > 1:
        raise UsageError(f"--compare: run {runs[0]['id']} is a {names[0]} run and {runs[1]['id']} a {names[1]} run; "
                         "compare runs of the same task")
    return task_dict[names[0]]()
