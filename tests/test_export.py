"""Export for services: inference.py --export onnx|pt2, parity, backend=onnxruntime, serve/predict_onnx.py.

The quick tests call the functions; the slow ones (marked) train tiny runs once per module and use the mains."""
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.loading import DataInfo, load_image
from infer.onnx_backend import checked_file, read_export
from tasks.classify.export import FILES, export_model
from tests.conftest import ROOT, copy_project, make_image_folder
from utils.errors import RunFailure, UsageError

SERVE = ROOT / "serve" / "predict_onnx.py"
# Runs a script with torch and torchvision made unimportable: python -c NO_TORCH script.py args...
NO_TORCH = """import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def serve_module():
    spec = importlib.util.spec_from_file_location("predict_onnx", SERVE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_images(folder: Path, x: np.ndarray) -> Path:
    """(N, C, H, W) floats in [0, 1] as PNG, JPEG and BMP files of other sizes and colour modes than the model's."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate((x * 255).round().astype(np.uint8)):
        a = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        im = Image.fromarray(a)
        im.save(folder / f"{i:02d}_same.png")
        im.convert("RGB").resize((a.shape[1] * 3, a.shape[0] * 3), Image.NEAREST).save(folder / f"{i:02d}_big_rgb.png")
        im.convert("L").resize((a.shape[1] * 2 + 1, a.shape[0] * 2)).save(folder / f"{i:02d}_gray.jpg", quality=95)
        im.convert("RGB").save(folder / f"{i:02d}_rgb.bmp")
    return folder


# ---------------------------------------------------------------- quick
@pytest.mark.parametrize("channels", [1, 3])
def test_the_service_preprocessing_is_load_image_to_the_bit(tmp_path, channels):
    serve = serve_module()
    rng = np.random.default_rng(channels)
    imgs = write_images(tmp_path / "imgs", rng.random((3, 3, 11, 7)))
    mean, std = ((0.5,), (0.5,)) if channels == 1 else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for size in (5, 11, 24):
        info = DataInfo(["a"], channels, size, mean, std)
        spec = {"channels": channels, "image_size": size, "mean": list(mean), "std": list(std)}
        for path in sorted(imgs.iterdir()):
            assert np.array_equal(serve.preprocess(path, spec), load_image(path, info).numpy()), (path.name, size)


def test_the_service_resize_is_torchvisions():
    from torchvision.transforms.v2.functional import resize

    serve, rng = serve_module(), np.random.default_rng(0)
    for _ in range(60):
        c, h, w, side = rng.choice([1, 3]), *rng.integers(2, 70, 2), int(rng.integers(4, 50))
        a = rng.integers(0, 256, (c, h, w)).astype(np.uint8)
        assert np.array_equal(serve.resize(a, side), resize(torch.from_numpy(a), [side, side], antialias=True).numpy())


def test_missing_export_packages_are_exit_2_with_the_install_command(monkeypatch):
    import inference
    from infer.onnx_backend import onnxruntime

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    for call in (lambda: inference.main(["--export", "onnx"]), onnxruntime):
        with pytest.raises(UsageError, match=r"pip install -r requirements-export.txt"):
            call()


def test_an_op_with_no_onnx_form_is_exit_1_naming_it(tmp_path):
    class Bessel(torch.nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x).flatten(1)

    with pytest.raises(RunFailure) as e:
        export_model(Bessel().eval(), "onnx", torch.rand(2, 1, 4, 4), tmp_path / "m.onnx")
    assert "bessel_j0" in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_backend_config_checks():
    from tasks.classify.config import ClassifyConfig
    from utils.config import build_config

    assert build_config({}, ClassifyConfig).backend == "torch"
    with pytest.raises(UsageError, match="backend"):
        build_config({"backend": "onnx"}, ClassifyConfig)
    with pytest.raises(UsageError, match="inference_device"):
        build_config({"backend": "onnxruntime", "inference_device": "cuda"}, ClassifyConfig)


def test_a_changed_model_file_is_refused_by_sha256(tmp_path):
    folder = tmp_path / "run"
    (folder / "export").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"--export onnx resume=X"):
        read_export(folder, "X")
    (folder / "export" / "model.onnx").write_bytes(b"not a model")
    meta = {"source_run": "X", "formats": {"onnx": {}}, "files": {"model.onnx": {"sha256": "0" * 64}}}
    (folder / "export" / "export.json").write_text(json.dumps(meta))
    with pytest.raises(RunFailure, match=r"expected sha256 0{64}, found [0-9a-f]{64}"):
        checked_file(folder, read_export(folder, "X"), "model.onnx")
    (folder / "export" / "preprocess.json").write_text(json.dumps({"files": meta["files"]}))
    r = subprocess.run([sys.executable, str(SERVE), str(folder / "export"), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and "does not match preprocess.json" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """small_cnn and mlp on digits, resnet18 on a 16 px image folder (fp32: amp=none), each exported to both formats."""
    base = tmp_path_factory.mktemp("export")
    project = copy_project(base / "proj")
    folder = make_image_folder(base / "imgs", per_class=6, size=16)
    runs = {"small_cnn": project.train("epochs=3", "amp=none"),
            "mlp": project.train("epochs=3", "amp=none", "base_model=mlp"),
            "resnet18": project.train("epochs=1", "amp=none", "base_model=resnet18", "dataset=image_folder",
                                      f"data_dir={folder}", "image_size=16", "batch_size=4")}
    before = project.snapshot()
    for run_id in runs.values():
        r = project.run("inference.py", "--export", "onnx", "pt2", f"resume={run_id}")  # onnx, then pt2 beside it
        assert r.returncode == 0, r.stderr
        assert "parity onnx vs eager fp32" in r.stdout and "parity pt2 vs eager fp32" in r.stdout
    return project, runs, before, folder


def export_dir(project, run_id: str) -> Path:
    return project.experiments / run_id / "export"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["small_cnn", "mlp", "resnet18"])
def test_both_formats_have_parity_and_the_run_is_unchanged(exported, model):
    project, runs, before, _ = exported
    folder = export_dir(project, runs[model])
    parity = json.loads((folder / "parity.json").read_text())
    meta = json.loads((folder / "export.json").read_text())
    pre = json.loads((folder / "preprocess.json").read_text())
    assert set(parity) == set(meta["formats"]) == {"onnx", "pt2"}
    for fmt, p in parity.items():
        assert p["max_abs_diff"] <= 1e-4 and p["argmax_agreement"] == 1.0 and p["passed"], (fmt, p)
        assert p["samples"] == min(512, project.info(runs[model])["val_size"])
    for name in meta["files"]:
        assert checked_file(folder.parent, meta, name)
    assert pre["files"] == {f: meta["files"][f] for f in FILES.values()}
    assert meta["weights_sha256"] == pre["weights_sha256"] == project.info(runs[model])["weights"]["sha256"]
    assert pre["class_names"] == project.info(runs[model])["class_names"] and meta["formats"]["onnx"]["opset"] >= 18
    after = project.snapshot()
    assert {k: v for k, v in after.items() if "/export/" not in k} == before, "the source runs keep their bytes"
    assert not list(folder.parent.glob("export.*")), "no temporary folders left"


@pytest.mark.slow
def test_export_twice_gives_the_same_bytes(exported):
    project, runs, _, _ = exported
    folder = export_dir(project, runs["small_cnn"])
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert project.run("inference.py", "--export", "onnx", "pt2", f"resume={runs['small_cnn']}").returncode == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first


def predictions(project, run_id: str, name: str) -> list[list[str]]:
    with open(project.experiments / run_id / "inference" / name) as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_onnxruntime_backend_predicts_as_eager_torch(exported, tmp_path):
    project, runs, _, _ = exported
    run_id = runs["small_cnn"]
    from data.loading import build_data
    from tasks.classify.config import ClassifyConfig
    from utils.config import build_config

    data = build_data(build_config({}, ClassifyConfig))
    imgs = write_images(tmp_path / "digits", data.val.source.x[data.val.positions[:12]].numpy())
    out = {}
    for backend in ("torch", "onnxruntime"):
        r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu", f"backend={backend}")
        assert r.returncode == 0, r.stderr
        val = predictions(project, run_id, "val_predictions.csv")
        r = project.run("inference.py", f"resume={run_id}", f"backend={backend}", "--input", str(imgs))
        assert r.returncode == 0, r.stderr
        out[backend] = ([row[2] for row in val], [row[:2] for row in predictions(project, run_id, "predictions.csv")])
    assert out["torch"] == out["onnxruntime"]
    assert len(set(row[1] for row in out["torch"][1][1:])) > 3, "the images get several classes"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["small_cnn", "resnet18"])
def test_the_torch_free_program_gives_the_classes_of_inference_input(exported, tmp_path, model):
    project, runs, _, folder = exported
    if model == "resnet18":
        imgs = folder
    else:
        from data.loading import build_data
        from tasks.classify.config import ClassifyConfig
        from utils.config import build_config

        data = build_data(build_config({}, ClassifyConfig))
        imgs = write_images(tmp_path / "digits", data.val.source.x[data.val.positions[:12]].numpy())
    r = project.run("inference.py", f"resume={runs[model]}", "inference_device=cpu", "--input", str(imgs))
    assert r.returncode == 0, r.stderr
    expected = [row[:2] for row in predictions(project, runs[model], "predictions.csv")[1:]]
    r = subprocess.run([sys.executable, "-c", NO_TORCH, "serve/predict_onnx.py", str(export_dir(project, runs[model])), str(imgs)],
                       cwd=project.root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "path,class,confidence"
    assert [line.split(",")[:2] for line in lines[1:]] == expected


@pytest.mark.slow
def test_compare_a_runs_export_with_the_run(exported):
    project, runs, _, _ = exported
    run_id = runs["small_cnn"]
    r = project.run("inference.py", "--compare", f"{run_id}@onnx", run_id, "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    stem = project.experiments / run_id / "inference" / f"compare_{run_id}@onnx_vs_{run_id}"
    report = json.loads(stem.with_suffix(".json").read_text())
    assert report["backend"] == {"A": "onnxruntime", "B": "torch"} and report["disagreements"]["count"] == 0
    assert r.stdout.splitlines()[0] == f"# A/B: {run_id}@onnx (A) vs {run_id} (B)" and "| backend | onnxruntime | torch |" in r.stdout


@pytest.mark.slow
def test_a_damaged_export_is_refused_and_a_failed_parity_keeps_the_old_one(exported, monkeypatch):
    project, runs, _, _ = exported
    run_id = runs["mlp"]
    folder = export_dir(project, run_id)
    kept = {p.name: p.read_bytes() for p in folder.iterdir()}
    import infer.runs
    import tasks.classify.export
    from tasks.classify import Classify

    monkeypatch.setattr(infer.runs, "EXPERIMENTS", project.experiments)
    monkeypatch.setattr(tasks.classify.export, "MAX_ABS_DIFF", -1.0)  # no export can pass
    loaded = infer.runs.load_run(project.info(run_id), torch.device("cpu"), Classify())
    with pytest.raises(RunFailure, match="failed the parity check"):
        tasks.classify.export.export_run(loaded, "onnx")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == kept and not list(folder.parent.glob("export.*"))

    model = folder / "model.onnx"
    model.chmod(0o644)
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    r = project.run("inference.py", f"resume={run_id}", "backend=onnxruntime")
    assert r.returncode == 1 and "does not match export.json (expected sha256" in r.stderr, r.stderr
    r = project.run("serve/predict_onnx.py", str(folder), str(project.root / "config"))
    assert r.returncode == 1 and "does not match preprocess.json" in r.stderr
    assert project.run("inference.py", "--export", "onnx", f"resume={run_id}").returncode == 0  # replaces the damaged export
    assert (folder / "model.onnx").read_bytes() == kept["model.onnx"] and (folder / "model.pt2").read_bytes() == kept["model.pt2"]
