"""The config loader: types, conversion after yaml.safe_load, validation, messages, task keys."""
import dataclasses
import functools
import re

import pytest
import yaml

from store.upgrade import upgrade_config
from tasks import configs, task_dict
from tasks.classify.config import ClassifyConfig
from tasks.wgan_gp.config import WganGpConfig
from utils import config as config_module
from utils.config import DEFAULT_CONFIG, SHARED_KEYS, build_config, defaults_of, keys_help, own_keys, read_yaml, to_yaml
from utils.errors import UsageError

parse_override = functools.partial(config_module.parse_override, configs=configs)
load_config = functools.partial(config_module.load_config, configs=configs)
CLASSIFY_KEYS = list(defaults_of(ClassifyConfig))


def test_config_yaml_matches_the_dataclass():
    """The shipped file is task classify's config: the shared keys, then its own, at their defaults."""
    values = read_yaml(DEFAULT_CONFIG)
    assert list(values) == [k for k in CLASSIFY_KEYS if k in values] and set(values) == set(CLASSIFY_KEYS)
    assert {k: yaml_value(v) for k, v in values.items()} == {k: yaml_value(v) for k, v in defaults_of(ClassifyConfig).items()}
    lines = [line for line in DEFAULT_CONFIG.read_text().splitlines() if re.match(r"^\w+:", line)]
    assert all("#" in line for line in lines), "every key has a comment"
    assert [line.split(":")[0] for line in lines[:5]] == ["resume", "device", "inference_device", "epochs", "batch_size"]
    assert DEFAULT_CONFIG.read_text().strip().splitlines()[-1].startswith("base_model:")


def test_config_yaml_comments_are_the_help():
    """One description per key: each comment in config.yaml is the text --help prints for that key."""
    for line in DEFAULT_CONFIG.read_text().splitlines():
        if re.match(r"^\w+:", line):
            key, comment = line.split(":")[0], line.split("#", 1)[1].strip()
            assert comment == config_module.meaning(ClassifyConfig, key, configs), key
            assert comment in keys_help(configs), key


def yaml_value(v):
    return "auto" if v is None else v  # channels_last: auto is None until resolved


def test_help_lists_every_key_with_default_grouped_by_task():
    text = keys_help(configs)
    for key in SHARED_KEYS:
        assert re.search(rf"^  {key} ", text, re.M), key
    for name, task in task_dict.items():
        section = text.split(f"keys of task {name} ")[1].split("keys of task")[0]
        assert [line.split()[0] for line in section.splitlines()[1:] if line.strip()] == own_keys(task.config)
    assert re.search(r"^  epochs +300 ", text.split("keys of task wgan_gp")[1], re.M)  # the task's recipe, shown


def test_a_task_has_its_own_keys_and_defaults(tmp_path):
    """The command line stays flat; a key of another task is exit 2 naming its task; a run's config
    holds its own task's keys only; task=wgan_gp alone gets the task's recipe, not the file's
    shared defaults, while a value the user changed in the file is kept."""
    gan = load_config(None, ["task=wgan_gp", "n_critic=5"])
    assert type(gan) is WganGpConfig and gan.n_critic == 5 and (gan.epochs, gan.lr, gan.ema_decay) == (300, 1e-3, 0.999)
    assert "base_model" not in to_yaml(gan) and "n_critic: 5" in to_yaml(gan)
    clf = load_config(None, [])
    assert type(clf) is ClassifyConfig and "n_critic" not in to_yaml(clf) and to_yaml(clf).rstrip().endswith("base_model: small_cnn")
    with pytest.raises(UsageError, match=r"n_critic: a key of task wgan_gp, not of task classify; set task=wgan_gp"):
        load_config(None, ["n_critic=5"])
    with pytest.raises(UsageError, match=r"base_model: a key of task classify, not of task wgan_gp"):
        load_config(None, ["task=wgan_gp", "base_model=mlp"])
    f = tmp_path / "c.yaml"
    f.write_text(DEFAULT_CONFIG.read_text().replace("epochs: 10 ", "epochs: 20 "))
    assert load_config(str(f), ["task=wgan_gp"]).epochs == 20
    with pytest.raises(UsageError, match="task: 'wgan' is not a task .did you mean 'wgan_gp'"):
        load_config(None, ["task=wgan"])


def test_yaml_reads_1e_3_as_a_string_and_we_convert_it(tmp_path):
    assert yaml.safe_load("1e-3") == "1e-3"  # the PyYAML quirk this guards against
    assert parse_override("lr=1e-3") == ("lr", "1e-3")
    cfg = load_config(None, ["lr=1e-3"])
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-3\nepochs: 3\n")
    assert load_config(str(f), []).lr == 0.001


def test_yaml_reads_a_time_as_a_number():
    assert yaml.safe_load("12:00:00") == 43200  # YAML 1.1 sexagesimal
    # On the command line string keys keep their text ...
    assert build_config(dict([parse_override("resume=12:00:00")])).resume == "12:00:00"
    assert build_config(dict([parse_override("resume=2026-11-29_14:03:27")])).resume == "2026-11-29_14:03:27"
    # ... in a file the number is refused with the fix.
    with pytest.raises(UsageError, match="resume: .*43200.*quote it"):
        build_config(yaml.safe_load("resume: 12:00:00"))
    # A datetime YAML reads from 'YYYY-MM-DD HH:MM:SS' becomes the run id form.
    assert build_config(yaml.safe_load("resume: 2026-11-29 14:03:27")).resume == "2026-11-29_14-03-27"


def test_null_and_booleans():
    assert build_config(dict(map(parse_override, ["resume=null", "deterministic=false", "amp=bf16"])), ClassifyConfig) == \
        dataclasses.replace(ClassifyConfig(), deterministic=False, amp="bf16")


@pytest.mark.parametrize("override, message", [
    ("epoch=3", "unknown key 'epoch' (did you mean 'epochs'?)"),
    ("batchsize=3", "did you mean 'batch_size'?"),
    ("epochs=abc", "epochs: expected an integer, got 'abc'"),
    ("epochs=2.5", "epochs: expected an integer"),
    ("epochs=0", "epochs: must be at least 1"),
    ("lr=-1", "lr: must be greater than 0"),
    ("val_fraction=1.5", "val_fraction: must be less than 1"),
    ("channels_last=maybe", "channels_last: expected auto, true or false"),
    ("deterministic=maybe", "deterministic: expected true or false"),
    ("base_model=resnet19", "base_model: 'resnet19' is not in model_dict (did you mean 'resnet18'?)"),
    ("optimizer=adamm", "did you mean 'adam'?"),
    ("dataset=digit", "did you mean 'digits'?"),
    ("device=gpu", "device: 'gpu' is not auto"),
    ("batch_size=10", None),
    ("dataset=image_folder", "data_dir: dataset image_folder needs data_dir"),
    ("noequals", "is not KEY=VALUE"),
])
def test_bad_values_name_the_key(override, message):
    if message is None:
        load_config(None, [override])
        return
    with pytest.raises(UsageError) as e:
        load_config(None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(UsageError) as e:
        build_config({"epochs": 0, "lr": 0, "amp": "fp8"})
    assert all(k in str(e.value) for k in ("epochs:", "lr:", "amp:"))


@pytest.mark.parametrize("text, message", [
    ("epochs: [1\n", "malformed YAML"),
    ("epochs: !!python/object/apply:os.system ['touch hacked']\n", "malformed YAML"),
    ("", "is empty"),
    ("- epochs\n- 3\n", "not a mapping"),
])
def test_broken_config_files(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_config(str(f), [])
    assert not (tmp_path / "hacked").exists()


def test_missing_config_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read config file"):
        load_config(str(tmp_path / "nope.yaml"), [])


def test_three_way_settings_are_bools_and_older_values_still_read():
    assert load_config(None, ["channels_last=true"]).channels_last is True
    assert load_config(None, ["channels_last=auto"]).channels_last is None
    assert "channels_last: auto" in to_yaml(load_config(None, []))
    # config.yaml of format 1 wrote channels_last as a string and, before that, augment as a boolean
    old = upgrade_config({"augment": True, "channels_last": "true", "label_smoothing": 0.1}, 1)
    assert build_config(old, ClassifyConfig).augment == "translate" and build_config(old, ClassifyConfig).channels_last is True
    assert build_config(upgrade_config({"base_model": "small_cnn"}, 0), ClassifyConfig).base_model == "small_cnn_v1"
    assert parse_override("amp=none") == ("amp", "none") and parse_override("resume=none") == ("resume", None)
    assert parse_override("resume='2026-11-29_18:06:15'") == ("resume", "2026-11-29_18:06:15")


def test_help_answers_without_importing_torch():
    import subprocess
    import sys

    code = ("import runpy, sys\nfor main in ('train.py', 'inference.py'):\n    try:\n        runpy.run_path(main)['main'](['--help'])\n"
            "    except SystemExit:\n        pass\nassert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=DEFAULT_CONFIG.parent.parent, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "keys of task wgan_gp" in r.stdout, r.stderr
