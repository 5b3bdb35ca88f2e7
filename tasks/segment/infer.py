"""What inference.py does with a segmentation run.

`resume=ID`: every validation case by sliding window (the config's overlap and mirror), Dice and
HD95 (mm, on the resampled grid of the run's spacing) per case and class: inference/cases.csv,
cases.json, and worst_cases.png (the mid slices of the lowest-Dice cases, truth and prediction).

`--input FILE|FOLDER`: label maps written in each input's own geometry. A case is read as in
training (data/cases.py: canonical orientation, each channel's recorded intensity rule, the run's
spacing); the probabilities are resampled back onto the canonical grid of the file (trilinear),
the label is their argmax, and it is reoriented to the file's own axis order and written with the
file's header and affine: inference/labels/<case>.nii.gz, the same shape, affine and orientation
as the input. A group's members (resume=<group id>) are ensembled: the mean of their probabilities.
"""
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.cases import normalise_channels, read_image, resample_image, target_shape
from data.volumes import nibabel
from infer.onnx_backend import inference_device
from infer.runs import LoadedRun, amp_dtype, checked_data, inference_dir, load_run
from store.runs import write_json, write_text
from tasks.segment.metrics import dice_per_class, hd95_per_class
from tasks.segment.window import sliding_window
from utils.errors import UsageError
from utils.plots import new_figure, save_figure


@dataclass
class CaseInput:
    id: str
    files: list[Path]  # one per channel


def probabilities(members: list[LoadedRun], image: torch.Tensor, device: torch.device, overlap: float, mirror: bool) -> torch.Tensor:
    """(classes, X, Y, Z) softmax of the sliding window, the mean over the members."""
    out = 0
    for m in members:
        with torch.autocast(device.type, dtype=amp_dtype(m.cfg, device), enabled=amp_dtype(m.cfg, device) is not None):
            logits = sliding_window(m.model, image.to(device), tuple(m.cfg.patch_size), len(m.info.class_names), overlap, mirror)
        out = out + logits.softmax(0).cpu()
    return out / len(members)


# ---------------------------------------------------------------- the validation cases
def evaluate_cases(task, cfg, run: dict) -> dict:
    """Dice and HD95 of every validation case; prints the per-class means and writes the files."""
    device = inference_device(cfg)
    loaded = load_run(run, device, task, cfg.weights)
    data = checked_data(loaded)
    names, spacing = loaded.info.class_names, tuple(loaded.cfg.spacing)
    rows, shown = [], []
    for image, label, case in data.val.cases():
        pred = probabilities([loaded], image, device, cfg.overlap, cfg.mirror).argmax(0)
        dice = dice_per_class(pred, label, len(names))
        hd = hd95_per_class(pred, label, len(names), spacing)
        rows += [{"case": case, "class": name, "dice": d, "hd95_mm": h} for name, d, h in zip(names[1:], dice, hd)]
        shown.append((case, image[0], label, pred, float(np.nanmean(dice)) if not all(map(math.isnan, dice)) else 0.0))
    report = summarise(run, cfg, names, rows)
    out = inference_dir(loaded)
    write_text(out / "cases.csv", "case,class,dice,hd95_mm\n" + "".join(
        f"{r['case']},{r['class']},{_num(r['dice'])},{_num(r['hd95_mm'])}\n" for r in rows))
    write_json(out / "cases.json", report)
    try:  # a side output: a picture that cannot be drawn never fails the evaluation
        plot_worst(sorted(shown, key=lambda s: s[4])[:4], names, out / "worst_cases.png")
    except Exception as e:  # noqa: BLE001 - whatever the plotting library raises
        print(f"warning: worst_cases.png could not be drawn ({type(e).__name__}: {e})", file=sys.stderr)
    for name, r in report["per_class"].items():
        print(f"{name:>20}  Dice {_num(r['dice_mean'])}  HD95 {_num(r['hd95_mean_mm'])} mm  ({r['cases']} cases)")
    print(f"mean foreground Dice {_num(report['dice_mean'])} over {len(shown)} validation cases; wrote {out}/cases.csv, "
          "cases.json, worst_cases.png")
    return report


def _num(v: float) -> str:
    return "nan" if v is None or math.isnan(v) else f"{v:.4f}"


def summarise(run: dict, cfg, names: list, rows: list) -> dict:
    """cases.json: the settings, each class's means (NaN cases left out) and every row."""
    per_class = {}
    for name in names[1:]:
        dice = [r["dice"] for r in rows if r["class"] == name and not math.isnan(r["dice"])]
        hd = [r["hd95_mm"] for r in rows if r["class"] == name and not math.isnan(r["hd95_mm"])]
        per_class[name] = {"dice_mean": float(np.mean(dice)) if dice else float("nan"),
                           "hd95_mean_mm": float(np.mean(hd)) if hd else float("nan"), "cases": len(dice)}
    means = [v["dice_mean"] for v in per_class.values() if not math.isnan(v["dice_mean"])]
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    return {"run": run["id"], "weights": cfg.weights, "overlap": cfg.overlap, "mirror": cfg.mirror,
            "dice_mean": float(np.mean(means)) if means else float("nan"),
            "per_class": {k: {kk: (None if isinstance(vv, float) and math.isnan(vv) else vv) for kk, vv in v.items()}
                          for k, v in per_class.items()}, "cases": clean}


def plot_worst(shown: list, names: list, path: Path) -> None:
    """Per case (rows): the axial mid slice with the truth, then with the prediction, overlaid."""
    from matplotlib.colors import ListedColormap

    colours = ListedColormap([(0, 0, 0, 0), (1, 0.2, 0.2, 0.45), (0.2, 0.5, 1, 0.45), (0.2, 0.9, 0.2, 0.45),
                              (1, 0.8, 0, 0.45), (0.8, 0.2, 1, 0.45)][:max(2, len(names))])
    fig = new_figure(8, 3.6 * len(shown), layout="tight")
    axes = np.atleast_2d(fig.subplots(len(shown), 2))
    for row, (case, image, label, pred, dice) in zip(axes, shown):
        z = image.shape[2] // 2
        for ax, overlay, what in ((row[0], label, "truth"), (row[1], pred, f"prediction (Dice {dice:.3f})")):
            ax.imshow(image[:, :, z].T.numpy(), cmap="gray", origin="lower")
            ax.imshow(overlay[:, :, z].T.numpy(), cmap=colours, vmin=0, vmax=colours.N - 1, origin="lower", interpolation="nearest")
            ax.set(title=f"{case}: {what}", xticks=[], yticks=[])
    save_figure(fig, path, dpi=90)


# ---------------------------------------------------------------- label maps of files
def list_case_inputs(path: Path, channels: int, ending: str) -> list[CaseInput]:
    """The cases at `path`: a file (one channel), or a folder in imagesTs layout (<case>_0000<ending>, ...)."""
    if path.is_file():
        if channels != 1:
            raise UsageError(f"--input: {path} is one file, but the run takes {channels} channels; give the folder of "
                             f"<case>_0000{ending} ... files")
        name = path.name[:-len(ending)] if path.name.endswith(ending) else path.stem
        return [CaseInput(name[:-5] if name.endswith("_0000") else name, [path])]
    if not path.is_dir():
        raise UsageError(f"--input: '{path}' does not exist; give a NIfTI file or a folder in imagesTs layout")
    ids = sorted({p.name[:-len(ending) - 5] for p in path.iterdir() if p.name.endswith(f"_0000{ending}")})
    if not ids:
        raise UsageError(f"--input: no <case>_0000{ending} files in {path} (nnU-Net's imagesTs layout)")
    cases = []
    for case in ids:
        files = [path / f"{case}_{c:04d}{ending}" for c in range(channels)]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise UsageError(f"{missing[0]}: missing; the run takes {channels} channels, so case {case} needs it")
        cases.append(CaseInput(case, files))
    return cases


def predict_case(members: list[LoadedRun], case: CaseInput, device: torch.device, overlap: float, mirror: bool) -> tuple:
    """(label (X, Y, Z) uint8, probabilities (classes, X, Y, Z) float32), both in the file's own voxel order."""
    nib = nibabel()
    geometry = members[0].run["data"]["geometry"]
    image, grid = read_image(case.files)
    shape = target_shape(grid, tuple(members[0].cfg.spacing))
    x = resample_image(normalise_channels(image, geometry["channels"]), shape)
    probs = probabilities(members, x, device, overlap, mirror)
    probs = torch.nn.functional.interpolate(probs[None], size=grid.shape, mode="trilinear", align_corners=False)[0]
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), grid.ornt)
    label = nib.orientations.apply_orientation(probs.argmax(0).numpy().astype(np.uint8), back)
    probs = np.stack([nib.orientations.apply_orientation(p, back) for p in probs.numpy()])
    return np.ascontiguousarray(label), np.ascontiguousarray(probs, dtype=np.float32)


def write_like(array: np.ndarray, source: Path, path: Path) -> None:
    """array written with the header and affine of the file `source` (its dtype set to the array's)."""
    nib = nibabel()
    image = nib.load(str(source))
    header = image.header.copy()
    header.set_data_dtype(array.dtype)
    out = nib.Nifti1Image(array, image.affine, header)
    out.set_qform(image.affine, code=int(image.header["qform_code"]) or 1)
    out.set_sform(image.affine, code=int(image.header["sform_code"]) or 1)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # nibabel reads the format off the ending
    nib.save(out, str(tmp))
    tmp.replace(path)


def predict_files(task, cfg, runs: list[dict], input_path: str, out_dir: "Path | None" = None) -> int:
    """Label maps (and with save_probabilities, probabilities) of every case at input_path, in each
    input's own geometry; the members' mean for several runs."""
    device = inference_device(cfg)
    members = [load_run(run, device, task, cfg.weights) for run in runs]
    if len({tuple(m.info.class_names) for m in members}) > 1 or len({tuple(m.cfg.spacing) for m in members}) > 1:
        raise UsageError("--input: the runs have different labels or spacing; predict with one of them")
    geometry = members[0].run["data"]["geometry"]
    cases = list_case_inputs(Path(input_path).expanduser(), members[0].info.in_channels, geometry.get("file_ending", ".nii.gz"))
    out = (out_dir or inference_dir(members[0])) / "labels"
    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        label, probs = predict_case(members, case, device, cfg.overlap, cfg.mirror)
        write_like(label, case.files[0], out / f"{case.id}.nii.gz")
        if cfg.save_probabilities:
            write_like(np.moveaxis(probs, 0, -1), case.files[0], out / f"{case.id}_prob.nii.gz")
        counts = np.bincount(label.ravel(), minlength=len(members[0].info.class_names))
        print(f"{case.id}: " + "  ".join(f"{n} {c}" for n, c in zip(members[0].info.class_names, counts.tolist())) + " voxels")
    what = f"ensemble of {len(members)} members (mean probabilities): " if len(members) > 1 else ""
    print(f"{what}wrote {len(cases)} label map(s) to {out}, each in its input's geometry")
    return 0


def held_out_scores(task, cfg, runs: list[dict]) -> str:
    """CSV of each member's mean foreground Dice on every case it held out (final weights, sliding
    window without mirroring): index, id, fold, seed, score. A group A/B pairs these by case."""
    device = inference_device(cfg)
    rows = ["index,id,fold,seed,score"]
    for run in runs:
        loaded = load_run(run, device, task)
        data = checked_data(loaded)
        g = run["group"]
        for position, (image, label, case) in zip(data.val.positions, data.val.cases()):
            pred = probabilities([loaded], image, device, loaded.cfg.overlap, False).argmax(0)
            dice = [d for d in dice_per_class(pred, label, len(loaded.info.class_names)) if not math.isnan(d)]
            rows.append(f"{position},{case},{'' if g['fold'] is None else g['fold']},{g['seed']},"
                        f"{float(np.mean(dice)) if dice else 0.0:.6f}")
    return "\n".join(rows) + "\n"
