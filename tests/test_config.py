"""The config loader: types, conversion after yaml.safe_load, validation, messages."""
import dataclasses
import re

import pytest
import yaml

from utils.config import DEFAULT_CONFIG, DEFAULTS, KEYS, Config, build_config, keys_help, load_config, parse_override, read_yaml
from utils.errors import UsageError


def test_config_yaml_matches_the_dataclass():
    values = read_yaml(DEFAULT_CONFIG)
    assert list(values) == [k for k in KEYS if k in values] and set(values) == set(KEYS)
    assert values == DEFAULTS
    lines = [line for line in DEFAULT_CONFIG.read_text().splitlines() if re.match(r"^\w+:", line)]
    assert all("#" in line for line in lines), "every key has a comment"
    assert [line.split(":")[0] for line in lines[:5]] == ["resume", "device", "inference_device", "epochs", "batch_size"]
    assert DEFAULT_CONFIG.read_text().strip().splitlines()[-1].startswith("base_model:")


def test_help_lists_every_key_with_default():
    text = keys_help()
    for key in KEYS:
        assert re.search(rf"^  {key} ", text, re.M), key


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
    assert build_config(dict(map(parse_override, ["resume=null", "deterministic=false", "amp=bf16"]))) == dataclasses.replace(
        Config(), deterministic=False, amp="bf16")


@pytest.mark.parametrize("override, message", [
    ("epoch=3", "unknown key 'epoch' (did you mean 'epochs'?)"),
    ("batchsize=3", "did you mean 'batch_size'?"),
    ("epochs=abc", "epochs: expected an integer, got 'abc'"),
    ("epochs=2.5", "epochs: expected an integer"),
    ("epochs=0", "epochs: must be at least 1"),
    ("lr=-1", "lr: must be greater than 0"),
    ("val_fraction=1.5", "val_fraction: must be in"),
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


def test_older_boolean_values_and_quoted_strings():
    assert build_config(dict([parse_override("augment=false")])).augment == "none"
    assert build_config(dict([parse_override("augment=true"), parse_override("channels_last=true")])).channels_last == "true"
    assert build_config({"augment": True}).augment == "translate"
    assert parse_override("amp=none") == ("amp", "none") and parse_override("resume=none") == ("resume", None)
    assert parse_override("resume='2026-11-29_18:06:15'") == ("resume", "2026-11-29_18:06:15")
