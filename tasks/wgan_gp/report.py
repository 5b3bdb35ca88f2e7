"""What inference.py does with a WGAN-GP run: samples.png and its numbers (the Frechet distance in
a classifier run's features, the confident class shares), and the A/B report of two GAN runs."""
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from infer.report import config_diff, config_lines, model_source_changed, model_source_line, write_report
from infer.runs import LoadedRun, inference_dir, load_run, run_config
from store.runs import find_run, write_json
from tasks.base import Task
from tasks.wgan_gp.measure import (
    CONFIDENT,
    class_shares,
    features_and_probs,
    frechet,
    frechet_interval,
    generate,
    load_classifier,
    picture_grid,
    real_confident_share,
    real_images,
    save_grid,
)
from tasks.wgan_gp.training import latent, stream
from train.device import resolve_device
from utils.config import Config
from utils.errors import UsageError


def find_classifier(spec: str, cfg: Config) -> dict:
    """The finished classifier run fid_features names, trained on the same data (set, size, channels)."""
    def usable(run: dict) -> bool:
        return (run.get("status") == "finished" and run.get("task") == "classify"
                and (run.get("config") or {}).get("dataset") == cfg.dataset
                and (run.get("config") or {}).get("data_dir") == cfg.data_dir)

    def refuse(run: dict):
        return None if usable(run) else (f"is not a finished classifier run on {cfg.dataset}; train one with "
                                         f"python train.py task=classify dataset={cfg.dataset}")
    try:
        return find_run(spec, "fid_features", usable, f"of a classifier on {cfg.dataset}", refuse)
    except UsageError as e:
        raise UsageError(f"{e}. The Frechet distance needs a classifier trained on the same data: "
                         f"python train.py task=classify dataset={cfg.dataset}, then fid_features=latest") from None


# ---------------------------------------------------------------- inference and A/B
@dataclass
class Measurement:
    """A GAN run measured: what gan_metrics.json and the A/B report say, and what they are computed from."""
    loaded: LoadedRun
    figures: dict             # run, weights, classifier, samples, Frechet distance, class shares ...
    images: torch.Tensor      # (N, C, H, W) generated samples in [0, 1]
    real: np.ndarray          # (M, F) the classifier's features of the validation images
    fake: np.ndarray          # (N, F) and of the samples


def measure(task: Task, cfg: Config, run: dict, device: torch.device, classifier: Optional[LoadedRun]) -> Measurement:
    """fid_samples images from sample_seed's codes, their Frechet distance to the validation images
    in the classifier's feature space, and the classifier's confident class shares (on the samples,
    and on the real images, which bounds what a generator can reach). Without a classifier, the samples alone."""
    loaded = load_run(run, device, task, cfg.weights)
    codes = latent(loaded.cfg, cfg.fid_samples, stream(cfg.sample_seed, 0, "samples"))
    images = generate(loaded.model.generator, codes, device)
    if classifier is None:
        figures = {"run": run["id"], "weights": cfg.weights, "fid_features": None, "samples": len(codes), "sample_seed": cfg.sample_seed}
        return Measurement(loaded, figures, images, np.zeros((0, 0)), np.zeros((0, 0)))
    fake, probs = features_and_probs(classifier, images, device)
    real, real_probs = features_and_probs(classifier, real_images(loaded.cfg), device)
    if min(len(real), len(fake)) <= real.shape[1]:
        print(f"note: {min(len(real), len(fake))} samples for {real.shape[1]} features: the Frechet distance of run "
              f"{run['id']} is rough; more validation images or fid_samples make it steadier", file=sys.stderr)
    figures = {"run": run["id"], "weights": cfg.weights, "fid_features": classifier.run["id"], "samples": len(codes),
               "sample_seed": cfg.sample_seed, "frechet_distance": frechet(real, fake),
               **class_shares(probs, classifier.info.class_names),
               "real_confident": real_confident_share(classifier, real_probs)}
    return Measurement(loaded, figures, images, real, fake)


def classifier_for(task: Task, cfg: Config, run: dict, device: torch.device, required: bool) -> Optional[LoadedRun]:
    """The classifier run that measures a GAN run: fid_features from the command line or config,
    else the one the run trained with, else the latest on the same data; else None with a note,
    or, when `required`, exit 2."""
    saved = run_config(run, task)
    spec = cfg.fid_features or saved.fid_features
    try:
        return load_classifier(find_classifier(spec or "latest", saved)["id"], device)
    except UsageError as e:
        if spec or required:
            raise
        print(f"note: no measure of run {run['id']}'s samples: {e}", file=sys.stderr)
        return None


def torch_only(backend: str, run: dict) -> None:
    if backend != "torch":
        raise UsageError(f"backend: a wgan_gp run ({run['id']}) is served by torch only; set backend=torch (drop @onnx)")


def share_line(figures: dict) -> str:
    return "  ".join(f"{k} {100 * v:.1f}%" for k, v in figures["per_class"].items())


def calibration_note(figures: dict) -> str:
    """Why the confident share may be low for the classifier's sake, not the generator's."""
    if figures["real_confident"] >= 0.9:
        return ""
    return (f"note: classifier run {figures['fid_features']} is confident (>= {CONFIDENT}) on only "
            f"{100 * figures['real_confident']:.1f}% of the real validation images, so the samples' share is capped there "
            "(label smoothing keeps a classifier's confidence low); for a measuring classifier train one with "
            "label_smoothing=0, e.g. python train.py name=digits_clf label_smoothing=0 epochs=30, then fid_features=name:digits_clf")


def evaluate_run(task: Task, cfg: Config, run: dict, input_path) -> None:
    """samples.png (an 8x8 grid from sample_seed's codes; volumes: 16 as their mid-slices, and 8 as
    NIfTI files in samples/) and gan_metrics.json under the run's inference/."""
    torch_only(cfg.backend, run)
    if input_path:
        raise UsageError(f"--input: a wgan_gp run generates images and takes none; python inference.py resume={run['id']} "
                         "writes samples.png and measures the run")
    device = resolve_device(cfg.inference_device, "inference_device")
    m = measure(task, cfg, run, device, classifier_for(task, cfg, run, device, required=False))
    out = inference_dir(m.loaded)
    volumes = m.images.ndim == 5
    save_grid(m.images[:16 if volumes else 64], out / "samples.png", columns=4 if volumes else 8,
              title=f"run {run['id']}, sample_seed {cfg.sample_seed}")
    if volumes:
        write_volumes(m.images[:8], run, out / "samples")
    write_json(out / "gan_metrics.json", m.figures)
    f = m.figures
    if f["fid_features"] is None:
        print(f"wrote {out}/samples.png and gan_metrics.json (samples only)")
        return
    print(f"run {run['id']} ({cfg.weights} weights) on {device}: Frechet distance {f['frechet_distance']:.4f} "
          f"({f['samples']} samples, features of classifier run {f['fid_features']})")
    print(f"  {100 * f['confident']:.1f}% of the samples classified with confidence >= {CONFIDENT} (real images: "
          f"{100 * f['real_confident']:.1f}%); per class: {share_line(f)}")
    if calibration_note(f):
        print(calibration_note(f), file=sys.stderr)
    print(f"wrote {out}/samples.png and gan_metrics.json")


def write_volumes(volumes: torch.Tensor, run: dict, folder) -> None:
    """Generated volumes (N, 1, X, Y, Z) in [0, 1] as NIfTI files 0.nii.gz ... in the data's geometry
    (run.json's data.geometry: the first training file's grid), for a viewer beside the real scans."""
    from data.volumes import save_nifti

    folder.mkdir(exist_ok=True)
    affine = ((run.get("data") or {}).get("geometry") or {}).get("affine", np.eye(4).tolist())
    for i, volume in enumerate(volumes):
        save_nifti(volume[0].numpy(), affine, folder / f"{i}.nii.gz")


def compare(task: Task, cfg: Config, run_a: dict, run_b: dict, backends: tuple, input_path) -> int:
    """Two GAN runs measured by the same classifier on the same codes: both Frechet distances with
    bootstrap intervals, both class histograms, both grids side by side, the config diff."""
    for backend in backends:
        torch_only(backend, run_a)
    if input_path:
        raise UsageError("--input: two wgan_gp runs are compared on generated samples; drop --input")
    device = resolve_device(cfg.inference_device, "inference_device")
    classifier = classifier_for(task, cfg, run_b, device, required=True)
    ms = {"A": measure(task, cfg, run_a, device, classifier), "B": measure(task, cfg, run_b, device, classifier)}
    for m in ms.values():
        m.figures["ci95"] = frechet_interval(m.real, m.fake)
    report = {"a": run_a["id"], "b": run_b["id"], "task": "wgan_gp", "A": ms["A"].figures, "B": ms["B"].figures,
              "config_diff": config_diff(ms["A"].loaded.cfg, ms["B"].loaded.cfg),
              "model_source_changed": model_source_changed(run_a, run_b)}
    write_report(inference_dir(ms["B"].loaded) / f"compare_{run_a['id']}_vs_{run_b['id']}", gan_markdown(report), report,
                 lambda path: plot_pair(ms, path))
    return 0


def gan_markdown(r: dict) -> str:
    a, b = r["A"], r["B"]
    lines = [f"# A/B: {r['a']} (A) vs {r['b']} (B), wgan_gp", "",
             f"{a['samples']} generated samples each, from the same latent codes (sample_seed {a['sample_seed']}), measured "
             f"in the features of classifier run {a['fid_features']} against the validation images.", "",
             "| | A | B |", "| --- | --- | --- |",
             f"| Frechet distance (lower is better) | {a['frechet_distance']:.4f} | {b['frechet_distance']:.4f} |",
             f"| 95% bootstrap interval | [{a['ci95'][0]:.4f}, {a['ci95'][1]:.4f}] | [{b['ci95'][0]:.4f}, {b['ci95'][1]:.4f}] |",
             f"| classified with confidence >= {CONFIDENT} | {100 * a['confident']:.1f}% | {100 * b['confident']:.1f}% |", "",
             "| class | A | B |", "| --- | --- | --- |"]
    lines += [f"| {c} | {100 * a['per_class'][c]:.1f}% | {100 * b['per_class'][c]:.1f}% |" for c in a["per_class"]]
    lines += ["", *config_lines(r["config_diff"]), "", model_source_line(r["model_source_changed"])]
    return "\n".join(lines) + "\n"


def plot_pair(ms: dict, path) -> None:
    """Both sample grids side by side (the same codes), and both class histograms."""
    from utils.plots import new_figure, save_figure

    fig = new_figure(15, 5, layout="tight")
    axes = fig.subplots(1, 3)
    for ax, key in zip(axes, ("A", "B")):
        grid = picture_grid(ms[key].images[:64 if ms[key].images.ndim == 4 else 16])
        ax.imshow(grid if grid.shape[2] == 3 else grid[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{key}: {ms[key].figures['run']}  FD {ms[key].figures['frechet_distance']:.3f}")
        ax.axis("off")
    names = list(ms["A"].figures["per_class"])
    x = np.arange(len(names))
    for offset, key in ((-0.2, "A"), (0.2, "B")):
        axes[2].bar(x + offset, [100 * ms[key].figures["per_class"][n] for n in names], width=0.4, label=key)
    axes[2].set(xticks=x, title=f"confident (>= {CONFIDENT}) samples per class, %")
    axes[2].set_xticklabels(names, rotation=90 if len(names) > 10 else 0)
    axes[2].legend()
    save_figure(fig, path)
