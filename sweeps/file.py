"""The sweep file of `python train.py --sweep FILE`: read with yaml.safe_load and checked in one place,
before anything is written. No optuna here (sweeps/study.py runs the study). Its keys: trials,
metric (default: the task's monitor), direction (default: from the metric), sampler (tpe | random |
grid), sampler_seed, pruner (none | median | halving), storage (null: a journal file; or
postgresql://...), fixed (keys every trial gets) and space (searched keys: choices, uniform,
log_uniform, int with step). docs/sweeps.md shows a whole file.
"""
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from utils.config import (
    MACHINE_KEYS,
    Config,
    base_type,
    convert,
    field_problems,
    fields_of,
    read_yaml,
    suggest,
)
from utils.errors import UsageError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "halving")
KINDS = ("choices", "uniform", "log_uniform", "int")
FILE_KEYS = ("trials", "metric", "direction", "sampler", "sampler_seed", "pruner", "storage", "fixed", "space")
NOT_SEARCHED = ("resume", "init_from", "seeds", "folds", "fold", "task", "name", "tags", "notes", *MACHINE_KEYS)


@dataclass
class Param:
    """One searched key: choices, or a range (uniform, log_uniform, int with step)."""
    key: str
    kind: str
    low: Any = None
    high: Any = None
    step: Optional[int] = None
    choices: list = field(default_factory=list)


@dataclass
class SweepFile:
    """What a sweep file says, checked."""
    trials: int
    metric: Optional[str]       # None: the task's monitor
    direction: Optional[str]    # None: from the metric's mode
    sampler: str
    sampler_seed: int
    pruner: str
    storage: Optional[str]      # None: a journal file under experiments/sweeps/<id>/
    fixed: dict
    space: dict[str, Param]

    def canonical(self) -> str:
        """The experiment the sweep is (space, trials, metric, sampler, pruner, fixed) as one string, to
        tell whether a sweep id is reused with another search space."""
        keep = dataclasses.asdict(self)
        keep.pop("storage")
        return json.dumps(keep, sort_keys=True, default=str)


def read_sweep_file(path: str, cls: type) -> SweepFile:
    """Read and check FILE against the keys of the config class `cls` (the task's)."""
    if not Path(path).is_file():
        raise UsageError(f"--sweep: no sweep file {path}; give a YAML file with trials and space (docs/sweeps.md)")
    data = read_yaml(Path(path))
    unknown = [k for k in data if k not in FILE_KEYS]
    if unknown:
        raise UsageError(f"{path}: unknown key '{unknown[0]}'{suggest(unknown[0], list(FILE_KEYS))}; a sweep file has "
                         f"{', '.join(FILE_KEYS)}")
    trials = data.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UsageError(f"{path}: trials must be a whole number of trials, at least 1, got {trials!r}")
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        raise UsageError(f"{path}: space must map config keys to ranges, e.g. lr: {{log_uniform: [1.0e-4, 1.0e-1]}}")
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise UsageError(f"{path}: fixed must map config keys to values, e.g. fixed: {{epochs: 3}}")
    sweep = SweepFile(trials, data.get("metric"), data.get("direction"), choice(path, data, "sampler", SAMPLERS),
                      data.get("sampler_seed", 0), choice(path, data, "pruner", PRUNERS), data.get("storage"), fixed,
                      {k: read_param(path, k, v, cls) for k, v in space.items()})
    check_rest(path, sweep)
    return sweep


def choice(path: str, data: dict, name: str, options: tuple) -> str:
    value = str(data.get(name, options[0])).lower()
    if value not in options:
        raise UsageError(f"{path}: {name} '{value}' is not one of {' | '.join(options)}{suggest(value, list(options))}")
    return value


def check_rest(path: str, sweep: SweepFile) -> None:
    if not isinstance(sweep.sampler_seed, int) or isinstance(sweep.sampler_seed, bool) or sweep.sampler_seed < 0:
        raise UsageError(f"{path}: sampler_seed must be a whole number >= 0, got {sweep.sampler_seed!r}")
    if sweep.direction not in (None, "maximize", "minimize"):
        raise UsageError(f"{path}: direction '{sweep.direction}' is not maximize | minimize")
    both = sorted(set(sweep.fixed) & set(sweep.space))
    if both:
        raise UsageError(f"{path}: '{both[0]}' is both fixed and searched; keep it in one of them")
    if sweep.sampler == "grid":
        ranged = [p.key for p in sweep.space.values() if p.kind in ("uniform", "log_uniform")]
        if ranged:
            raise UsageError(f"{path}: sampler grid needs a finite grid, but {ranged[0]} is a continuous range; "
                             "give it choices or an int range, or use sampler: tpe")
    if sweep.storage is not None and not str(sweep.storage).startswith(("postgresql://", "postgresql+psycopg://")):
        raise UsageError(f"{path}: storage must be null (a journal file under experiments/sweeps/) or postgresql://user@host/db, "
                         f"got {sweep.storage!r}")


def read_param(path: str, key: str, spec: Any, cls: type) -> Param:
    """One entry of `space`, checked against the key's declared type and range."""
    every = fields_of(cls)
    if key not in every:
        raise UsageError(f"{path}: space: unknown key '{key}'{suggest(key, list(every))}; see train.py --help for the keys")
    if key in NOT_SEARCHED:
        raise UsageError(f"{path}: space: '{key}' cannot be searched (it names runs, groups or the machine); fix it with "
                         "fixed: or KEY=VALUE instead")
    kinds = [k for k in KINDS if isinstance(spec, dict) and k in spec]
    extra = [k for k in (spec if isinstance(spec, dict) else {}) if k not in (*KINDS, "step")]
    if len(kinds) != 1 or extra:
        raise UsageError(f"{path}: space: {key}: give exactly one of {' | '.join(KINDS)}, e.g. {key}: {{choices: [a, b]}}")
    kind, value = kinds[0], spec[kinds[0]]
    if kind == "choices":
        if not isinstance(value, list) or not value:
            raise UsageError(f"{path}: space: {key}: choices must be a non-empty list")
        return Param(key, kind, choices=[checked(path, key, v, cls) for v in value])
    if not isinstance(value, list) or len(value) != 2:
        raise UsageError(f"{path}: space: {key}: {kind} takes [low, high], got {value!r}")
    return ranged(path, key, kind, value, spec.get("step"), cls)


def ranged(path: str, key: str, kind: str, bounds: list, step: Any, cls: type) -> Param:
    """uniform and log_uniform on a float key, int (with step) on an int key; both bounds valid values."""
    base, _ = base_type(cls, key)
    want = int if kind == "int" else float
    if base is not want:
        other = "int: [low, high]" if base is int else "uniform or log_uniform" if base is float else "choices"
        raise UsageError(f"{path}: space: {key} is {'an integer' if base is int else 'a number' if base is float else 'not numeric'}"
                         f" key, so {kind} does not fit it; use {other}")
    low, high = (checked(path, key, v, cls) for v in bounds)
    if not low < high:
        raise UsageError(f"{path}: space: {key}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "log_uniform" and low <= 0:
        raise UsageError(f"{path}: space: {key}: log_uniform needs low > 0, got {low}")
    if kind == "int":
        step = 1 if step is None else step
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise UsageError(f"{path}: space: {key}: step must be a whole number >= 1, got {step!r}")
    elif step is not None:
        raise UsageError(f"{path}: space: {key}: step is for int ranges; drop it")
    return Param(key, kind, low, high, step if kind == "int" else None)


def checked(path: str, key: str, value: Any, cls: type) -> Any:
    """A value converted to the key's type and checked against its declared range, or exit 2."""
    try:
        value = convert(cls, key, value)
    except ValueError as e:
        raise UsageError(f"{path}: space: {key}: {e}") from None
    problems = field_problems(fields_of(cls)[key], value)
    if problems:
        raise UsageError(f"{path}: space: {problems[0]}")
    return value


def trial_config(base: Config, params: dict) -> Config:
    """The base config with a trial's values; every check of the config applied (exit 2 if a combination is invalid)."""
    from utils.config import check_config

    cfg = dataclasses.replace(base, **params)
    problems = check_config(cfg)
    if problems:
        raise UsageError("trial config: " + "; ".join(problems))
    return cfg
