"""The config: one typed dataclass, read from YAML and KEY=VALUE overrides, validated in one place.

Every key has one field here, with its default and its meaning; `config/config.yaml` repeats
them with comments, and `--help` prints them.
"""
import argparse
import dataclasses
import datetime
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, get_origin, get_type_hints

import yaml

from utils.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"

DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")  # a run's name and each tag: safe in a path, a URL, a shell


def _key(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    resume: Optional[str] = _key(None, "null: new run / infer with the latest run; a run id (or latest): continue it / infer with it")
    device: str = _key("auto", "training device: auto | cpu | cuda | cuda:N | mps")
    inference_device: str = _key("auto", "device for inference.py only (set cpu to serve on CPU)")
    epochs: int = _key(10, "total epochs of the run, counted across its resumed parents")
    batch_size: int = _key(64, "global batch per optimizer step, whatever the number of processes")
    lr: float = _key(3e-3, "peak learning rate")
    optimizer: str = _key("adamw", "sgd | adam | adamw")
    momentum: float = _key(0.9, "momentum (sgd only)")
    weight_decay: float = _key(1e-4, "weight decay")
    scheduler: str = _key("cosine", "none | step | cosine (stepped every optimizer step)")
    step_size: int = _key(3, "epochs between lr drops (scheduler: step)")
    gamma: float = _key(0.1, "lr factor at each drop (scheduler: step)")
    seed: int = _key(0, "seed of the weights, the data order, augmentation and dropout")
    split_seed: int = _key(0, "seed of the train/validation split (fixed across seeds)")
    deterministic: bool = _key(True, "bit-identical results on the same machine (slower paths on GPU)")
    dataset: str = _key("digits", "digits (sklearn's 8x8) | mnist | fashion_mnist | cifar10 | cifar100 | image_folder | fake")
    data_dir: Optional[str] = _key(None, "files of mnist ... cifar100, or class sub-folders (optionally in train/, val/): image_folder")
    download: bool = _key(False, "mnist ... cifar100: fetch missing files into data_dir with torchvision's helpers")
    image_size: Optional[int] = _key(None, "square side images are resized to; null: the data's own (an image_folder's median side)")
    val_fraction: float = _key(0.2, "share held out for validation when there is no val/ folder (named sets: their test split)")
    fake_size: int = _key(512, "number of samples (dataset: fake)")
    cache_mb: int = _key(4096, "image_folder: keep decoded images in memory as uint8 when they fit in this many MiB (0: off)")
    num_workers: int = _key(0, "data loading processes (0: in the main process, best for data held in memory)")
    augment: str = _key("auto", "auto | none | translate | crop_flip | trivialaugment (auto: crop_flip for fashion_mnist, cifar)")
    random_erasing: float = _key(0.0, "probability of erasing a random box of a training image")
    mixup_alpha: float = _key(0.0, "mixup with Beta(alpha, alpha) weights (0: off)")
    cutmix_alpha: float = _key(0.0, "cutmix with Beta(alpha, alpha) areas (0: off; with mixup, half the samples each)")
    label_smoothing: float = _key(0.1, "label smoothing of the training loss")
    warmup_epochs: float = _key(1.0, "linear learning-rate warmup, then the schedule")
    grad_clip: float = _key(0.0, "clip the gradient norm to this (0: off); the norm before clipping goes to metrics.csv")
    ema_decay: float = _key(0.0, "EMA of the weights (e.g. 0.999; 0: off); evaluated and saved as the final weights when on")
    monitor: str = _key("auto", "the validation metric that picks the best epoch (best.safetensors): auto (the task's: val_acc; "
                        "a GAN: val_fd, else val_wdist) | val_acc | val_loss | val_fd | val_wdist")
    early_stop_patience: int = _key(0, "end the run when `monitor` has not improved for this many epochs (0: off)")
    weights: str = _key("final", "inference.py and --compare: final | best (the best epoch's weights)")
    backend: str = _key("torch", "inference.py: torch | onnxruntime (the run's export/model.onnx on CPU; see --export)")
    amp: str = _key("auto", "mixed precision: auto | none | bf16 | fp16 (auto: bf16 where the device runs it natively)")
    grad_accum_steps: int = _key(1, "micro-batches per optimizer step")
    channels_last: str = _key("auto", "auto | true | false: channels_last memory format (auto: on for convolutional models)")
    compile: bool = _key(False, "torch.compile the model")
    checkpoint_every_steps: int = _key(0, "also save state.pt every N optimizer steps (0: at epoch ends only)")
    init_from: Optional[str] = _key(None, "a run id: start a new run from its weights (fine-tuning)")
    pretrained: bool = _key(False, "resnets: start from torchvision's ImageNet weights")
    dropout: float = _key(0.1, "dropout before the classifier")
    progress: bool = _key(True, "a progress bar per epoch (only when stdout is a terminal)")
    tensorboard: bool = _key(False, "also write TensorBoard scalars to experiments/<id>/tb/")
    name: Optional[str] = _key(None, "a short label for the run (letters, digits . _ + -); name:<name> picks the newest run with it")
    tags: list[str] = field(default_factory=list, metadata={"help": "labels to filter runs by: [baseline, sweep1] or tags=a,b"})
    notes: Optional[str] = _key(None, "free text kept with the run (more can be added later: train.py --note ID TEXT)")
    task: str = _key("classify", "classify | wgan_gp (a generator and a critic trained with the gradient penalty; tasks/)")
    generator: str = _key("dcgan_generator", "wgan_gp: the generator, a key of model_dict")
    critic: str = _key("dcgan_critic", "wgan_gp: the critic, a key of model_dict")
    latent_dim: int = _key(64, "wgan_gp: size of the generator's latent code")
    n_critic: int = _key(2, "wgan_gp: critic steps per generator step (each takes one batch; the paper: 5, 2 does better here)")
    gp_weight: float = _key(10.0, "wgan_gp: weight of the gradient penalty")
    critic_lr: Optional[float] = _key(None, "wgan_gp: the critic's peak learning rate (null: lr)")
    fid_features: Optional[str] = _key(None, "wgan_gp: a classifier run (id | latest | name:<name>) on the same data whose "
                                       "features give the Frechet distance, each epoch and in inference.py")
    fid_samples: int = _key(1000, "wgan_gp: generated samples for the Frechet distance and the class histogram")
    sample_seed: int = _key(0, "wgan_gp: seed of the latent codes of samples.png and of the generated samples measured")
    base_model: str = _key("small_cnn", "a key of model_dict (task classify)")


KEYS = [f.name for f in dataclasses.fields(Config)]
TYPES = get_type_hints(Config)
HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(Config)}
DEFAULTS = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(Config)}
# Keys that describe the machine a run is on, not the experiment.
MACHINE_KEYS = ("device", "inference_device", "num_workers", "checkpoint_every_steps", "progress", "tensorboard",
                "download", "cache_mb", "weights", "backend")
# A continuation takes these from config/config.yaml and the command line, all others from its parent.
CONTINUATION_KEYS = ("resume", "epochs", *MACHINE_KEYS)
# Labels of a run, not of the experiment: a continuation keeps its parent's name and tags unless given new ones.
LABEL_KEYS = ("name", "tags", "notes")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder", "fake")
CHOICES = {
    "optimizer": ("sgd", "adam", "adamw"),
    "scheduler": ("none", "step", "cosine"),
    "dataset": DATASETS,
    "augment": ("auto", "none", "translate", "crop_flip", "trivialaugment"),
    "amp": ("auto", "none", "bf16", "fp16"),
    "channels_last": ("auto", "true", "false"),
    "monitor": ("val_acc", "val_loss", "val_fd", "val_wdist", "auto"),  # the task checks which are its own
    "task": ("classify", "wgan_gp"),
    "weights": ("final", "best"),
    "backend": ("torch", "onnxruntime"),
}
# Keys that were booleans in older run folders' config.yaml, and what each boolean means now.
FROM_BOOL = {"augment": {True: "translate", False: "none"}, "channels_last": {True: "true", False: "false"}}


def suggest(word: str, options: list[str]) -> str:
    """' (did you mean X?)' for the closest option, or ''."""
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def base_type(key: str) -> tuple[type, bool]:
    """The key's declared type without Optional, and whether it may be null."""
    tp = TYPES[key]
    if get_origin(tp) is list:
        return list, False
    args = getattr(tp, "__args__", None)
    return (args[0], True) if args else (tp, False)


def _type_name(key: str) -> str:
    base, optional = base_type(key)
    name = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}[base]
    return name + (" or null" if optional else "")


def convert(key: str, value: Any) -> Any:
    """Convert a value read by yaml.safe_load to the key's declared type, or raise ValueError."""
    base, optional = base_type(key)
    if value is None:
        if optional:
            return None
        raise ValueError(f"expected {_type_name(key)}, got null")
    if base is bool:
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
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(dict.fromkeys(value))
    elif base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and key in FROM_BOOL:
            return FROM_BOOL[key][value]
        if isinstance(value, datetime.datetime):  # `resume: 2026-11-29 14:03:27`
            return value.strftime("%Y-%m-%d_%H-%M-%S")
        if isinstance(value, int) and not isinstance(value, bool) and key in ("resume", "init_from"):
            raise ValueError(f"YAML read this value as the number {value} (a time like 12:00:00 "
                             "is a number in YAML); quote it")
    raise ValueError(f"expected {_type_name(key)}, got {value!r}")


def parse_override(text: str) -> tuple[str, Any]:
    """'KEY=VALUE' -> (key, value). String keys keep their text as typed (without matching quotes
    around it, as YAML reads them); others go through yaml.safe_load so that `amp=bf16`,
    `lr=1e-3`, `deterministic=false` all work."""
    if "=" not in text:
        raise UsageError(f"'{text}' is not KEY=VALUE; e.g. epochs=5 (see --help for the keys)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in TYPES:
        raise UsageError(f"unknown key '{key}'{suggest(key, KEYS)}; see --help for the keys")
    raw = raw.strip()
    base, optional = base_type(key)
    if key in FROM_BOOL and isinstance(yaml.safe_load(raw), bool):  # augment=false, as older configs wrote it
        return key, yaml.safe_load(raw)
    if base is str or base is list:
        if base is list and raw.startswith("["):
            return key, _safe_load(raw)
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            return key, raw[1:-1]
        # `none` is a value of amp and augment; only an optional key reads it as null
        return key, None if optional and raw.lower() in ("null", "none", "~", "") else raw
    return key, _safe_load(raw)


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


def build_config(values: dict) -> Config:
    """Defaults, then `values`; every value converted and checked, every problem reported."""
    problems = []
    merged = {k: list(v) if isinstance(v, list) else v for k, v in DEFAULTS.items()}
    for key, value in values.items():
        if key not in TYPES:
            problems.append(f"unknown key '{key}'{suggest(key, KEYS)}")
            continue
        try:
            merged[key] = convert(key, value)
        except ValueError as e:
            problems.append(f"{key}: {e}")
    if not problems:
        cfg = Config(**merged)
        problems = validate(cfg)
    if problems:
        raise UsageError("config: " + "; ".join(problems))
    return cfg


def validate(cfg: Config) -> list[str]:
    """Every range and choice check, in one place. Returns the problems found."""
    from model import model_dict  # the registry; imported here so --help stays fast

    p = []
    for key, choices in CHOICES.items():
        value = getattr(cfg, key)
        if value not in choices:
            p.append(f"{key}: '{value}' is not one of {' | '.join(choices)}{suggest(value, list(choices))}")
    for key in ("base_model", "generator", "critic"):
        name = getattr(cfg, key)
        if name not in model_dict:
            p.append(f"{key}: '{name}' is not in model_dict{suggest(name, list(model_dict))}; choose one of {', '.join(model_dict)}")
    for key in ("device", "inference_device"):
        if not DEVICE_RE.match(getattr(cfg, key)):
            p.append(f"{key}: '{getattr(cfg, key)}' is not auto | cpu | cuda | cuda:N | mps")
    positive = ("epochs", "batch_size", "step_size", "grad_accum_steps", "fake_size", "latent_dim", "n_critic", "fid_samples")
    p += [f"{k}: must be at least 1, got {getattr(cfg, k)}" for k in positive if getattr(cfg, k) < 1]
    non_negative = ("seed", "split_seed", "num_workers", "checkpoint_every_steps", "weight_decay", "cache_mb", "random_erasing",
                    "mixup_alpha", "cutmix_alpha", "warmup_epochs", "grad_clip", "early_stop_patience", "gp_weight", "sample_seed")
    p += [f"{k}: must be 0 or more, got {getattr(cfg, k)}" for k in non_negative if getattr(cfg, k) < 0]
    if not cfg.lr > 0:
        p.append(f"lr: must be greater than 0, got {cfg.lr}")
    if cfg.critic_lr is not None and not cfg.critic_lr > 0:
        p.append(f"critic_lr: must be greater than 0 or null, got {cfg.critic_lr}")
    for key, lo, hi in (("val_fraction", 0.0, 1.0), ("dropout", -1e-9, 1.0), ("momentum", -1e-9, 1.0),
                        ("label_smoothing", -1e-9, 1.0), ("ema_decay", -1e-9, 1.0)):
        if not lo < getattr(cfg, key) < hi:
            p.append(f"{key}: must be in [{max(lo, 0)}, {hi}), got {getattr(cfg, key)}")
    if cfg.random_erasing > 1:
        p.append(f"random_erasing: a probability, must be at most 1, got {cfg.random_erasing}")
    if not 0 < cfg.gamma <= 1:
        p.append(f"gamma: must be in (0, 1], got {cfg.gamma}")
    if cfg.image_size is not None and not 4 <= cfg.image_size <= 4096:
        p.append(f"image_size: must be between 4 and 4096 or null, got {cfg.image_size}")
    if cfg.batch_size % cfg.grad_accum_steps:
        p.append(f"batch_size: {cfg.batch_size} is not a multiple of grad_accum_steps={cfg.grad_accum_steps}")
    if cfg.dataset in DATASETS[1:5] and not cfg.data_dir:
        p.append(f"data_dir: dataset {cfg.dataset} needs data_dir, the folder of its files (with download: true, where they go)")
    if cfg.dataset == "image_folder":
        if not cfg.data_dir:
            p.append("data_dir: dataset image_folder needs data_dir, a folder of class sub-folders")
        elif not Path(cfg.data_dir).expanduser().is_dir():
            p.append(f"data_dir: '{cfg.data_dir}' is not a folder; point it at a folder of class sub-folders")
    for label in ([cfg.name] if cfg.name is not None else []) + cfg.tags:
        if not LABEL_RE.match(label):
            p.append(f"{'tags' if label in cfg.tags else 'name'}: '{label}' is not a label; use up to 64 letters, digits and . _ + -")
    if cfg.backend == "onnxruntime" and cfg.inference_device not in ("auto", "cpu"):
        p.append(f"inference_device: backend=onnxruntime serves on cpu, got '{cfg.inference_device}'; set inference_device=cpu")
    if cfg.resume is not None and cfg.init_from is not None:
        p.append("init_from: cannot be combined with resume; set one of them to null")
    return p


def changed_keys(values: dict) -> dict:
    """The experiment's keys whose values differ from the defaults (not the machine's, not labels)."""
    skip = (*CONTINUATION_KEYS, *LABEL_KEYS)
    return {k: v for k, v in values.items() if k in DEFAULTS and k not in skip and v != DEFAULTS[k]}


def saved_config(values: dict) -> Config:
    """The Config of a run folder's config.yaml. Folders written before the training recipe existed
    lack its keys: their runs trained without label smoothing and warmup, and with the first
    small_cnn, so those are what their missing keys mean."""
    if "label_smoothing" not in values:
        values = {"label_smoothing": 0.0, "warmup_epochs": 0.0, **values}
        if values.get("base_model") == "small_cnn":
            values["base_model"] = "small_cnn_v1"
    return build_config(values)


def load_config(config_file: Optional[str], overrides: list[str]) -> Config:
    """The config a main runs with: `config_file` (default config/config.yaml), then overrides."""
    values = read_yaml(Path(config_file) if config_file else DEFAULT_CONFIG)
    values.update(dict(parse_override(o) for o in overrides))
    return build_config(values)


def to_yaml(cfg: Config, header: str = "") -> str:
    """The full resolved config as YAML, one key a line in declaration order."""
    lines = [f"# {header}"] if header else []
    lines += [yaml.safe_dump({k: v}, default_flow_style=False, sort_keys=False).rstrip() for k, v in dataclasses.asdict(cfg).items()]
    return "\n".join(lines) + "\n"


def keys_help() -> str:
    """Every key with its default and meaning, for --help."""
    width = max(map(len, KEYS))
    rows = [f"  {k:<{width}}  {yaml.safe_dump(DEFAULTS[k]).splitlines()[0]:<10} {HELP[k]}" for k in KEYS]
    return "config keys (KEY=VALUE overrides one; default, then meaning):\n" + "\n".join(rows)


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser both mains start from."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=keys_help(),
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
    return parser.parse_args(argv)
