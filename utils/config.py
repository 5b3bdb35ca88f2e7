"""The config: typed dataclasses, read from YAML and KEY=VALUE overrides, checked in one place.

`Config` holds the keys every task shares, one field each with its default, its meaning and its
checks. A task's own keys live with the task: its config is a subclass of `Config`
(tasks/<name>/config.py) that adds its keys and may give shared keys other defaults (its
recipe). The functions here take the registry of those classes (`configs`: task name -> class)
from the mains, so this module names no task. A run's config.yaml holds the shared keys and its
own task's keys, nothing else.
"""
import argparse
import dataclasses
import datetime
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from utils.errors import UsageError, a_an

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"

DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")  # a run's name and each tag: safe in a path, a URL, a shell
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder", "fake", "volume_folder", "mni152",
            "mni152_tissue")
VOLUME_DATASETS = ("volume_folder", "mni152", "mni152_tissue")  # 3D: (C, D, H, W) samples
FOLDER_DATASETS = ("image_folder", "volume_folder")  # data_dir is a folder of class sub-folders
NAMED_DATASETS = DATASETS[1:5]  # read from files in data_dir


def key(default: Any, help: str, *, choices: Optional[tuple] = None, at_least: Optional[float] = None,
        above: Optional[float] = None, below: Optional[float] = None, at_most: Optional[float] = None,
        model: bool = False, auto: bool = False, auto_int: bool = False, triple: bool = False) -> Any:
    """A config field: its default, its meaning (--help), and its checks (check_config applies them;
    on a list, to each element). model: the value is a key of model_dict. auto: a three-way setting,
    `auto | true | false`, held as None | True | False (None until resolved at the start of a run).
    auto_int: `auto` or an integer, auto held as None until resolved at the start of a run.
    triple: a list of three integers, one integer standing for three equal ones."""
    checks = {"choices": choices, "at_least": at_least, "above": above, "below": below, "at_most": at_most,
              "model": model, "auto": auto, "auto_int": auto_int, "triple": triple}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **checks})
    return field(default=default, metadata={"help": help, **checks})


# The `task` key's description: each task's config repeats the field with its own default.
TASK_HELP = "what the loop trains: {tasks} (a key of task_dict, tasks/; default its first); its own keys follow it"


@dataclass
class Config:
    """The keys every task shares. A task's config class adds its own keys (tasks/<name>/config.py)."""
    resume: Optional[str] = key(None, "null: new run / infer with the latest run; a run id (or latest): continue it / infer with it")
    device: str = key("auto", "training device: auto | cpu | cuda | cuda:N | mps")
    inference_device: str = key("auto", "device for inference.py only (set cpu to serve on CPU)")
    epochs: int = key(10, "total epochs of the run, counted across its resumed parents", at_least=1)
    batch_size: Optional[int] = key(None, "global batch per optimizer step, whatever the number of processes; auto: 64, halved "
                                    "(not below 4) until the training split gives at least 20 steps an epoch",
                                    at_least=1, auto_int=True)
    lr: float = key(3e-3, "peak learning rate", above=0)
    optimizer: str = key("adamw", "sgd | adam | adamw", choices=("sgd", "adam", "adamw"))
    momentum: float = key(0.9, "momentum (sgd only)", at_least=0, below=1)
    weight_decay: float = key(1e-4, "weight decay (not applied to biases and norm weights)", at_least=0)
    scheduler: str = key("cosine", "none | step | cosine (stepped every optimizer step)", choices=("none", "step", "cosine"))
    step_size: int = key(3, "epochs between lr drops (scheduler: step)", at_least=1)
    gamma: float = key(0.1, "lr factor at each drop (scheduler: step)", above=0, at_most=1)
    seed: int = key(0, "seed of the weights, the data order, augmentation and dropout", at_least=0)
    split_seed: int = key(0, "seed of the train/validation split (fixed across seeds)", at_least=0)
    seeds: list[int] = key([], "a group of runs, one per seed: [0, 1, 2] or seeds=0,1,2 (with folds: one per seed and fold); "
                           "[]: one run with `seed`", at_least=0)
    folds: int = key(0, "k-fold cross-validation: K >= 2 trains a group of K runs, each validated on its held-out fold "
                     "(stratified by class, fixed by split_seed); 0: the usual split", at_least=0)
    fold: Optional[int] = key(None, "with folds: the fold one run holds out (a group sets it for each member); null: all K "
                              "(a group)", at_least=0)
    deterministic: bool = key(True, "bit-identical results on the same machine (slower paths on GPU)")
    dataset: str = key("digits", "digits (sklearn's 8x8) | mnist | fashion_mnist | cifar10 | cifar100 | image_folder | fake "
                       "| volume_folder (3D: NIfTI or .npy volumes) | mni152 (3D brain patches, offline) | mni152_tissue (the 3D brain "
                       "with a tissue label per voxel, offline)", choices=DATASETS)
    data_dir: Optional[str] = key(None, "files of mnist ... cifar100, or class sub-folders (optionally in train/, val/): image_folder")
    download: bool = key(False, "mnist ... cifar100: fetch missing files into data_dir with torchvision's helpers")
    image_size: Optional[int] = key(None, "square side images are resized to; null: the data's own (an image_folder's median side)",
                                    at_least=4, at_most=4096)
    val_fraction: float = key(0.2, "share held out for validation when there is no val/ folder (named sets: their test split)",
                              above=0, below=1)
    fake_size: int = key(512, "number of samples (dataset: fake)", at_least=1)
    volume_size: Optional[list[int]] = key(None, "volumes are resampled (trilinear) to this: one side or three (X, Y, Z); "
                                           "null: the data's median shape", at_least=4, at_most=1024, triple=True)
    intensity: str = key("percentile", "volumes' intensities, per volume: percentile (1st..99th to [0, 1], clipped) | minmax | "
                         "zscore", choices=("percentile", "minmax", "zscore"))
    cache_mb: int = key(4096, "image_folder, volume_folder: decode once and keep in memory when the data fit in this many "
                        "MiB (volumes above it: decoded once to a temporary file and streamed; 0: off)", at_least=0)
    num_workers: int = key(0, "data loading processes (0: in the main process, best for data held in memory)", at_least=0)
    augment: str = key("auto", "auto | none | translate | crop_flip | trivialaugment | volume | volume_flip (auto: the task's "
                       "choice for the data)", choices=("auto", "none", "translate", "crop_flip", "trivialaugment", "volume",
                                                        "volume_flip"))
    flip_axes: list[int] = key([0], "augment: volume, volume_flip: the axes flipped at random (0: left-right in RAS, 1: front-back, "
                               "2: up-down)",
                               at_least=0, at_most=2)
    random_erasing: float = key(0.0, "probability of erasing a random box of a training image", at_least=0, at_most=1)
    warmup_epochs: float = key(1.0, "linear learning-rate warmup, then the schedule", at_least=0)
    grad_clip: float = key(0.0, "clip the gradient norm of each optimizer's parameters to this (0: off); the norm before "
                           "clipping goes to metrics.csv", at_least=0)
    bn_stats_samples: int = key(8192, "BatchNorm statistics are recomputed before each validation, for the weights evaluated, "
                                "over the epoch's first this many training samples (all when fewer; 0: keep the running "
                                "averages)", at_least=0)
    ema_decay: float = key(0.0, "EMA of the weights (e.g. 0.999; 0: off); evaluated and saved as the final weights when on",
                           at_least=0, below=1)
    monitor: str = key("auto", "the validation metric that picks the best epoch (best.safetensors): auto (the task's) or one of "
                       "the task's validation metrics")
    early_stop_patience: int = key(0, "end the run when `monitor` has not improved for this many epochs (0: off)", at_least=0)
    weights: str = key("final", "inference.py and --compare: final | best (the best epoch's weights)", choices=("final", "best"))
    backend: str = key("torch", "inference.py: torch | onnxruntime (the run's export/model.onnx on CPU; see --export)",
                       choices=("torch", "onnxruntime"))
    amp: str = key("auto", "mixed precision: auto | none | bf16 | fp16 (auto: bf16 where the device runs it natively)",
                   choices=("auto", "none", "bf16", "fp16"))
    grad_accum_steps: int = key(1, "micro-batches per optimizer step", at_least=1)
    channels_last: Optional[bool] = key(None, "auto | true | false: channels_last memory format (auto: on for convolutional "
                                        "models)", auto=True)
    compile: bool = key(False, "torch.compile the model")
    checkpoint_every_steps: int = key(0, "also save state.pt every N optimizer steps (0: at epoch ends only)", at_least=0)
    init_from: Optional[str] = key(None, "a run id: start a new run from its weights (fine-tuning)")
    progress: bool = key(True, "progress within each epoch: a bar in a terminal; piped or in a log, a line (steps, rate, "
                               "time left) every 30 s")
    tensorboard: bool = key(False, "also write TensorBoard scalars to experiments/<id>/tb/")
    name: Optional[str] = key(None, "a short label for the run (letters, digits . _ + -); name:<name> picks the newest run with it")
    tags: list[str] = key([], "labels to filter runs by: [baseline, sweep1] or tags=a,b")
    notes: Optional[str] = key(None, "free text kept with the run (more can be added later: train.py --note ID TEXT)")
    task: str = key("", TASK_HELP)


# Keys that describe the machine a run is on, not the experiment.
MACHINE_KEYS = ("device", "inference_device", "num_workers", "checkpoint_every_steps", "progress", "tensorboard",
                "download", "cache_mb", "weights", "backend")
# A continuation takes these from config/config.yaml and the command line, all others from its parent.
CONTINUATION_KEYS = ("resume", "epochs", *MACHINE_KEYS)
# Labels of a run, not of the experiment: a continuation keeps its parent's name and tags unless given new ones.
LABEL_KEYS = ("name", "tags", "notes")
SHARED_KEYS = [f.name for f in dataclasses.fields(Config)]
HELP_COLUMN = 10


# ---------------------------------------------------------------- what a config class declares
def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def defaults_of(cls: type) -> dict[str, Any]:
    return {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(cls)}


def own_keys(cls: type) -> list[str]:
    """A task's keys and the shared keys whose defaults it changes (its name aside), in declaration order."""
    shared = defaults_of(Config)
    return [k for k, v in defaults_of(cls).items() if k != "task" and (k not in shared or shared[k] != v)]


def owner_of(name: str, configs: dict[str, type]) -> Optional[str]:
    """The task whose config declares key `name` (not a shared key), or None."""
    return next((task for task, cls in configs.items() if name in fields_of(cls) and name not in SHARED_KEYS), None)


def every_key(configs: dict[str, type]) -> list[str]:
    return list(dict.fromkeys([*SHARED_KEYS, *(k for cls in configs.values() for k in fields_of(cls))]))


def suggest(word: str, options: list[str]) -> str:
    """' (did you mean X?)' for the closest option, or ''."""
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---------------------------------------------------------------- converting values
def base_type(cls: type, name: str) -> tuple[type, bool]:
    """The key's declared type without Optional (list for any list), and whether it may be null."""
    tp = get_type_hints(cls)[name]
    optional = get_origin(tp) is Union
    tp = get_args(tp)[0] if optional else tp
    return (list if get_origin(tp) is list else tp), optional


def element_type(cls: type, name: str) -> type:
    """The type of a list key's elements."""
    tp = get_type_hints(cls)[name]
    tp = get_args(tp)[0] if get_origin(tp) is Union else tp
    return get_args(tp)[0]


def _type_name(cls: type, name: str) -> str:
    if fields_of(cls)[name].metadata.get("auto"):
        return "auto, true or false"
    base, optional = base_type(cls, name)
    if fields_of(cls)[name].metadata.get("auto_int"):
        return "auto or " + ("an integer" if base is int else _type_name_plain(cls, name, base))
    return _type_name_plain(cls, name, base) + (" or null" if optional else "")


def _type_name_plain(cls: type, name: str, base: type) -> str:
    if fields_of(cls)[name].metadata.get("triple"):
        kind = "a number" if element_type(cls, name) is float else "an integer"
        text = f"{kind} or a list of three"
    else:
        text = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}[base]
    return text


def convert(cls: type, name: str, value: Any) -> Any:
    """Convert a value read by yaml.safe_load to the key's declared type, or raise ValueError."""
    if fields_of(cls)[name].metadata.get("auto"):
        return _three_way(cls, name, value)
    if fields_of(cls)[name].metadata.get("auto_int") and (value is None or str(value).lower() == "auto"):
        return None
    base, optional = base_type(cls, name)
    if value is None:
        if optional:
            return None
    elif base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is list:  # tags: [a, b], or a,b as typed on the command line
        return _list(cls, name, value)
    elif base is str:
        return _string(name, value)
    raise ValueError(f"expected {_type_name(cls, name)}, got {value!r}")


def _list(cls: type, name: str, value: Any) -> list:
    """A list key's value: [a, b] or a,b; of strings (each once) or of integers (three for a triple key)."""
    if element_type(cls, name) is str:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(dict.fromkeys(value))
    else:
        triple = fields_of(cls)[name].metadata.get("triple")
        if isinstance(value, str):
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        kinds = (int, float) if element_type(cls, name) is float else (int,)
        value = [value] if isinstance(value, kinds) and not isinstance(value, bool) else value
        value = value * 3 if triple and isinstance(value, list) and len(value) == 1 else value
        if isinstance(value, list) and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value) \
                and (not triple or len(value) == 3):
            return [float(v) for v in value] if float in kinds else value
    raise ValueError(f"expected {_type_name(cls, name)}, got {value!r}")


def _three_way(cls: type, name: str, value: Any) -> Optional[bool]:
    """auto -> None, true/false (YAML booleans, or the strings older config.yaml files wrote) -> bool."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("auto", "true", "false"):
        return None if text == "auto" else text == "true"
    raise ValueError(f"expected {_type_name(cls, name)}, got {value!r}")


def _string(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, datetime.datetime):  # `resume: 2026-11-29 14:03:27`
        return value.strftime("%Y-%m-%d_%H-%M-%S")
    if isinstance(value, int) and not isinstance(value, bool) and name in ("resume", "init_from"):
        raise ValueError(f"YAML read this value as the number {value} (a time like 12:00:00 is a number in YAML); quote it")
    raise ValueError(f"expected a string, got {value!r}")


def parse_override(text: str, configs: dict[str, type]) -> tuple[str, Any]:
    """'KEY=VALUE' -> (key, value). String keys keep their text as typed (without matching quotes
    around it, as YAML reads them); others go through yaml.safe_load so that `amp=bf16`,
    `lr=1e-3`, `deterministic=false` all work."""
    if "=" not in text:
        raise UsageError(f"'{text}' is not KEY=VALUE; e.g. epochs=5 (see --help for the keys)")
    name, raw = (part.strip() for part in text.split("=", 1))
    cls = next((c for c in [Config, *configs.values()] if name in fields_of(c)), None)
    if cls is None:
        raise UsageError(f"unknown key '{name}'{suggest(name, every_key(configs))}; see --help for the keys")
    base, optional = base_type(cls, name)
    if (base is str or base is list) and not fields_of(cls)[name].metadata.get("auto"):
        if base is list and raw.startswith("["):
            return name, _safe_load(raw)
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            return name, raw[1:-1]
        # `none` is a value of amp and augment; only an optional key reads it as null
        return name, None if optional and raw.lower() in ("null", "none", "~", "") else raw
    return name, _safe_load(raw)


def _safe_load(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def read_yaml(path: Path) -> dict:
    """A config file as a mapping; every problem is a UsageError naming the file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror}; pass an existing file with --config") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"{path}: malformed YAML{line}: {problem}; fix the file (plain `key: value` lines)") from None
    if data is None:
        raise UsageError(f"{path} is empty; it needs `key: value` lines (see --help)")
    if not isinstance(data, dict):
        raise UsageError(f"{path} holds a {type(data).__name__}, not a mapping; write `key: value` lines")
    return data


# ---------------------------------------------------------------- building and checking
def build_config(values: dict, cls: type = Config) -> Config:
    """cls's defaults, then `values`; every value converted and checked, every problem reported."""
    problems = []
    merged = defaults_of(cls)
    for name, value in values.items():
        if name not in merged:
            problems.append(f"unknown key '{name}'{suggest(name, list(merged))}")
            continue
        try:
            merged[name] = convert(cls, name, value)
        except ValueError as e:
            problems.append(f"{name}: {e}")
    if not problems:
        cfg = cls(**merged)
        problems = check_config(cfg)
    if problems:
        raise UsageError("config: " + "; ".join(dict.fromkeys(problems)))
    return cfg


def check_config(cfg: Config) -> list[str]:
    """Every check of a config, in one place: each field's declared checks, then the checks that
    involve several keys. Returns the problems found."""
    problems = [p for f in dataclasses.fields(cfg) for p in field_problems(f, getattr(cfg, f.name))]
    for name in ("device", "inference_device"):
        if not DEVICE_RE.match(getattr(cfg, name)):
            problems.append(f"{name}: '{getattr(cfg, name)}' is not auto | cpu | cuda | cuda:N | mps")
    if cfg.batch_size is not None and cfg.batch_size % cfg.grad_accum_steps:
        problems.append(f"batch_size: {cfg.batch_size} is not a multiple of grad_accum_steps={cfg.grad_accum_steps}")
    if cfg.dataset in NAMED_DATASETS and not cfg.data_dir:
        problems.append(f"data_dir: dataset {cfg.dataset} needs data_dir, the folder of its files (with download: true, where they go)")
    if cfg.dataset in FOLDER_DATASETS:
        if not cfg.data_dir:
            problems.append(f"data_dir: dataset {cfg.dataset} needs data_dir, a folder of class sub-folders")
        elif not Path(cfg.data_dir).expanduser().is_dir():
            problems.append(f"data_dir: '{cfg.data_dir}' is not a folder; point it at a folder of class sub-folders")
    for label in ([cfg.name] if cfg.name is not None else []) + cfg.tags:
        if not LABEL_RE.match(label):
            problems.append(f"{'tags' if label in cfg.tags else 'name'}: '{label}' is not a label; use up to 64 letters, "
                            "digits and . _ + -")
    if cfg.backend == "onnxruntime" and cfg.inference_device not in ("auto", "cpu"):
        problems.append(f"inference_device: backend=onnxruntime serves on cpu, got '{cfg.inference_device}'; set inference_device=cpu")
    problems += fold_problems(cfg)
    if cfg.resume is not None and cfg.init_from is not None:
        problems.append("init_from: cannot be combined with resume; set one of them to null")
    return problems


def fold_problems(cfg: Config) -> list[str]:
    """The checks of seeds, folds and fold together."""
    problems = []
    if cfg.folds == 1:
        problems.append("folds: 1 fold leaves nothing to validate on; use 0 (the usual split) or at least 2")
    if cfg.fold is not None and not cfg.folds:
        problems.append(f"fold: {cfg.fold} needs folds (the number of folds), e.g. folds=5 fold={cfg.fold}")
    elif cfg.fold is not None and cfg.fold >= cfg.folds:
        problems.append(f"fold: must be below folds={cfg.folds} (folds are numbered 0 to {cfg.folds - 1}), got {cfg.fold}")
    if cfg.seeds and cfg.fold is not None:
        problems.append(f"fold: a group of seeds trains every fold; drop fold={cfg.fold}, or drop seeds to train fold "
                        f"{cfg.fold} alone")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        problems.append(f"seeds: {cfg.seeds} repeats a seed; give each seed once")
    if (cfg.seeds or (cfg.folds and cfg.fold is None)) and (cfg.resume is not None or cfg.init_from is not None):
        problems.append("seeds, folds: a group starts its members itself; drop resume and init_from (to continue a group, "
                        "run the same command again)")
    return problems


def field_problems(f: dataclasses.Field, value: Any) -> list[str]:
    """What is wrong with `value` by the checks field f declares (key())."""
    m, name = f.metadata, f.name
    if isinstance(value, list):
        return [p for v in value if not isinstance(v, str) for p in field_problems(f, v)]
    if value is None or isinstance(value, bool):
        return []
    if m.get("choices") and value not in m["choices"]:
        return [f"{name}: '{value}' is not one of {' | '.join(m['choices'])}{suggest(value, list(m['choices']))}"]
    if m.get("model"):
        from model import model_dict  # the registry; imported here so --help stays fast
        if value not in model_dict:
            return [f"{name}: '{value}' is not in model_dict{suggest(value, list(model_dict))}; choose one of {', '.join(model_dict)}"]
    bounds = [(m.get("at_least"), lambda v, b: v >= b, "at least"), (m.get("above"), lambda v, b: v > b, "greater than"),
              (m.get("below"), lambda v, b: v < b, "less than"), (m.get("at_most"), lambda v, b: v <= b, "at most")]
    wrong = [f"{word} {bound:g}" for bound, ok, word in bounds if bound is not None and not ok(value, bound)]
    return [f"{name}: must be {' and '.join(wrong)}, got {value}"] if wrong else []


# ---------------------------------------------------------------- the config a main runs with
def load_config(config_file: Optional[str], overrides: list[str], configs: dict[str, type], task: Optional[str] = None) -> Config:
    """The config a main runs with: `config_file` (default config/config.yaml), then overrides,
    as the config class of the task they select (or of `task`, the task of the run inference.py uses).

    The file may hold the keys of every task: another task's keys in it are skipped. When the
    task is another than the file's, the file's values that are the file task's defaults are
    skipped too, so that the task's own defaults (its recipe) apply. A key of another task on the
    command line is an error that names its task."""
    path = Path(config_file) if config_file else DEFAULT_CONFIG
    from_file = read_yaml(path)
    from_line = dict(parse_override(o, configs) for o in overrides)
    if task is not None and from_line.get("task", task) != task:
        raise UsageError(f"task: the run is {a_an(task)} run, not {from_line['task']}; drop task=")
    first = next(iter(configs))  # the registry's first task is the default
    task = task or from_line.get("task", from_file.get("task", first))
    file_task = from_file.get("task", first)
    cls = task_config(task, configs, "task")
    values = {}
    for name, value in from_file.items():
        if name in fields_of(cls) and not (task != file_task and _is_default(configs.get(file_task), name, value)):
            values[name] = value
        elif name not in fields_of(cls) and owner_of(name, configs) is None:
            raise UsageError(f"{path}: unknown key '{name}'{suggest(name, every_key(configs))}; see --help for the keys")
    for name, value in from_line.items():
        owner = owner_of(name, configs)
        if name not in fields_of(cls):
            raise UsageError(f"{name}: a key of task {owner}, not of task {task}; set task={owner}, or drop {name}=")
        values[name] = value
    return build_config(values, cls)


def shared_config(config_file: Optional[str], overrides: list[str], configs: dict[str, type]) -> Config:
    """The shared keys alone (every task's keys are accepted and left aside): what inference.py
    needs to pick a run, before the run's task says which keys apply."""
    from_file = read_yaml(Path(config_file) if config_file else DEFAULT_CONFIG)
    values = {**from_file, **dict(parse_override(o, configs) for o in overrides)}
    unknown = [k for k in values if k not in every_key(configs)]
    if unknown:
        raise UsageError(f"unknown key '{unknown[0]}'{suggest(unknown[0], every_key(configs))}; see --help for the keys")
    return build_config({k: v for k, v in values.items() if k in SHARED_KEYS and k != "task"})


def _is_default(cls: Optional[type], name: str, value: Any) -> bool:
    if cls is None or name not in fields_of(cls):
        return False
    try:
        return convert(cls, name, value) == defaults_of(cls)[name]
    except ValueError:
        return False


def task_config(task: Any, configs: dict[str, type], where: str) -> type:
    """The config class of `task`, or a UsageError naming the registered tasks."""
    if task not in configs:
        raise UsageError(f"{where}: '{task}' is not a task{suggest(str(task), list(configs))}; choose one of "
                         f"{' | '.join(configs)}")
    return configs[task]


def is_group(cfg: Config) -> bool:
    """Whether the config asks for a group: several seeds, or every fold of a k-fold split."""
    return bool(cfg.seeds) or (cfg.folds >= 2 and cfg.fold is None)


def experiment_spec(cfg: Config) -> dict:
    """The experiment a group or a sweep is: its config without the machine's keys (the same command on another
    device or with more workers continues the same group)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in (*MACHINE_KEYS, "resume", "notes")}


def changed_keys(cfg: Config) -> dict:
    """The experiment's keys whose values differ from its task's defaults (not the machine's, not labels)."""
    skip = (*CONTINUATION_KEYS, *LABEL_KEYS)
    defaults = defaults_of(type(cfg))
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip and v != defaults[k]}


def yaml_value(cfg_or_cls: Any, name: str, value: Any) -> Any:
    """A value as config.yaml writes it: a three-way setting's (or an auto integer's) None as `auto`."""
    m = fields_of(cfg_or_cls)[name].metadata
    return "auto" if value is None and (m.get("auto") or m.get("auto_int")) else value


def to_yaml(cfg: Config, header: str = "") -> str:
    """The full resolved config as YAML, one key a line in declaration order."""
    lines = [f"# {header}"] if header else []
    lines += [f"{k}: {yaml.safe_dump(v, default_flow_style=True).strip()}" if isinstance(v, list)  # tags: [a, b]
              else yaml.safe_dump({k: yaml_value(cfg, k, v)}, default_flow_style=False, sort_keys=False).rstrip()
              for k, v in dataclasses.asdict(cfg).items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the command line
def meaning(cls: type, name: str, configs: dict[str, type]) -> str:
    """A key's one description, for --help and config/config.yaml's comment (a test keeps them equal):
    the field's help, with {tasks} standing for the registered tasks."""
    return fields_of(cls)[name].metadata["help"].replace("{tasks}", " | ".join(configs))


def keys_help(configs: dict[str, type]) -> str:
    """Every key with its default and meaning, for --help: the shared keys, then each task's own."""
    width = max(map(len, every_key(configs)))

    def row(cls: type, name: str) -> str:
        default = yaml.safe_dump(yaml_value(cls, name, defaults_of(cls)[name])).splitlines()[0]
        return f"  {name:<{width}}  {default:<{HELP_COLUMN}} {meaning(cls, name, configs)}"
    parts = ["config keys (KEY=VALUE overrides one; default, then meaning):", *(row(Config, k) for k in SHARED_KEYS)]
    for task, cls in configs.items():
        parts += ["", f"keys of task {task} (set task={task}; its defaults replace the shared ones above):"]
        parts += [row(cls, k) for k in own_keys(cls)]
    return "\n".join(parts)


def make_parser(prog: str, description: str, configs: dict[str, type]) -> argparse.ArgumentParser:
    """The argument parser both mains start from."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=keys_help(configs),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="config file (default: config/config.yaml)")
    parser.add_argument("--list", action="store_true", help="print a table of the runs and exit; KEY=VALUE words filter it: "
                        "status=finished tag=baseline model=resnet18 lr=0.001 ...")
    parser.add_argument("--sort", metavar="KEY", help="with --list: order by a metric (the best run last), a column or a config key")
    parser.add_argument("--json", action="store_true", help="with --list: print the runs as JSON, for scripts")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override one config key")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Optional[list[str]] = None) -> argparse.Namespace:
    """parse_args that raises UsageError (exit 2, one line) instead of printing usage."""
    def fail(message: str) -> None:
        raise UsageError(f"{message}; see {parser.prog} --help")
    parser.error = fail  # type: ignore[method-assign]
    return parser.parse_intermixed_args(argv)  # KEY=VALUE words may follow --input PATH
