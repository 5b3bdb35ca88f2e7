"""task_dict: the one registry of tasks. A task is a package, tasks/<name>/, whose Task subclass
(tasks/base.py) holds everything specific to what the loop trains (docs/tasks.md, "Adding a task");
train.py, inference.py and the Trainer call only its members, so the run store, state.pt, resume,
DDP, AMP and the reports work for every task. Importing this module does not import torch."""
from tasks.alpha_wgan_gp import AlphaWganGp
from tasks.base import Task
from tasks.classify import Classify
from tasks.segment import Segment
from tasks.wgan_gp import WganGp
from utils.errors import UsageError, a_an

task_dict: dict[str, type[Task]] = {
    "classify": Classify,
    "wgan_gp": WganGp,
    "alpha_wgan_gp": AlphaWganGp,
    "segment": Segment,
}
configs = {name: task.config for name, task in task_dict.items()}  # each task's config class, for utils/config.py


def task_of(*runs: dict) -> Task:
    """The task of the runs (run.json's "task"). Runs of different tasks are compared only by a task
    that names the other in its `compares_with` (alpha_wgan_gp takes a 3D wgan_gp run: the paper's ablation)."""
    names = [run["task"] for run in runs]
    for run, name in zip(runs, names):
        if name not in task_dict:
            raise UsageError(f"run {run['id']} is {a_an(name)} run, a task this version does not have")
    hosts = [name for name in names if set(names) - {name} <= set(task_dict[name].compares_with)]
    if not hosts:
        raise UsageError(f"--compare: run {runs[0]['id']} is {a_an(names[0])} run and {runs[1]['id']} {a_an(names[1])} run; "
                         "compare runs of the same task")
    return task_dict[hosts[0]]()
