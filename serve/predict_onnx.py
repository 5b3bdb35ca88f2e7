"""Predict with an exported run, without torch: copy this file next to model.onnx and preprocess.json.

    pip install onnxruntime numpy pillow
    python predict_onnx.py EXPORT_DIR IMAGE_OR_FOLDER [...]      ->  path,class,confidence  per line

It checks model.onnx against the sha256 in preprocess.json before loading it (exit 1 on a mismatch),
then preprocesses each image exactly as the template's utils/dataloader.load_image does (decode, resize,
scale, normalise; see preprocess.json), so it predicts the same classes as `inference.py --input`.
Imports only the standard library, numpy, Pillow and onnxruntime; for a volume classifier (its
preprocess.json has "volume"), nibabel too: `.nii.gz`, `.nii` and `.npy` files are reoriented to RAS,
resampled trilinearly and their intensities normalised as utils/volumes.load_volume does.

A segmentation run (preprocess.json has "segmentation"; pip install nibabel too):

    python predict_onnx.py EXPORT_DIR CASE.nii.gz|imagesTs/ [...] --out labels/   ->  labels/<case>.nii.gz

runs tasks/segment/window.py's Gaussian sliding window over model.onnx and writes each label map in
its input's own geometry (shape, affine, axis order), as `inference.py --input` does.
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TORCHVISION_DECODED = (".png", ".jpg", ".jpeg")  # decoded by torchvision.io in the template, others by PIL
PNG_GRAY = (9794, 19234, 3740)  # libpng's fixed-point weights for torchvision's 0.2989 R + 0.587 G (sum 32768)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def load(export_dir: Path, threads: int = 0) -> tuple:
    """(session, preprocess spec), after checking model.onnx's sha256 against preprocess.json."""
    try:
        spec = json.loads((export_dir / "preprocess.json").read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"error: cannot read {export_dir / 'preprocess.json'} ({e}); give the export folder of a run")
    model = export_dir / "model.onnx"
    expected = spec["files"]["model.onnx"]["sha256"]
    found = sha256_file(model) if model.exists() else "missing"
    if found != expected:
        sys.exit(f"error: {model} does not match preprocess.json (expected sha256 {expected}, found {found}); export it again")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]), spec


def decode(path: Path, channels: int) -> np.ndarray:
    """An image file -> (C, H, W) uint8, as the template decodes it."""
    with Image.open(path) as im:
        fmt = im.format if path.suffix.lower() in TORCHVISION_DECODED else None
        if channels == 1 and fmt == "JPEG":
            im.draft("L", im.size)  # the decoder's own luma, as libjpeg gives it to torchvision
        if channels == 1 and fmt == "PNG" and im.mode not in ("L", "LA", "1"):
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint32)
            a = (rgb @ np.array(PNG_GRAY, dtype=np.uint32)) >> 15
            a = np.where((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 0] == rgb[..., 2]), rgb[..., 0], a).astype(np.uint8)
        else:
            a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _weights(n_in: int, n_out: int) -> tuple:
    """torch's antialiased bilinear resize weights for uint8: (n_out, n_in) int16-valued matrix, precision bits."""
    scale = n_in / n_out
    support, inv = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    rows = []
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        w = [max(0.0, 1.0 - abs((j + lo - center + 0.5) * inv)) for j in range(min(int(center + support + 0.5), n_in) - lo)]
        total = sum(w)
        rows.append((lo, [v / total for v in w] if total != 0.0 else w))
    top = max(max(w) for _, w in rows)
    bits = 0
    while bits < 22 and int(0.5 + top * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    mat = np.zeros((n_out, n_in), dtype=np.int64)
    for i, (lo, w) in enumerate(rows):
        for j, v in enumerate(w):
            v *= 1 << bits
            mat[i, lo + j] = int(v - 0.5) if v < 0 else int(v + 0.5)
    return mat, bits


def _resize_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    mat, bits = _weights(a.shape[axis], n_out)
    moved = np.moveaxis(a.astype(np.int64), axis, -1)
    out = (moved @ mat.T + (1 << (bits - 1))) >> bits
    return np.moveaxis(np.clip(out, 0, 255).astype(np.uint8), -1, axis)


def resize(a: np.ndarray, side: int) -> np.ndarray:
    """(C, H, W) uint8 -> (C, side, side): torchvision's antialiased bilinear resize, width then height."""
    if a.shape[2] != side:
        a = _resize_axis(a, side, 2)
    if a.shape[1] != side:
        a = _resize_axis(a, side, 1)
    return a


def preprocess(path: Path, spec: dict) -> np.ndarray:
    """An image file -> the model's input for it: (C, S, S) float32, normalised."""
    a = resize(decode(path, spec["channels"]), spec["image_size"])
    shape = (-1, 1, 1)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(shape)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(shape)
    return (a.astype(np.float32) / np.float32(255.0) - mean) / std


# ---------------------------------------------------------------- volumes (preprocess.json has "volume")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".npy")


def read_volume(path: Path) -> np.ndarray:
    """A .nii/.nii.gz file (nibabel, reoriented to the closest canonical RAS+) or a .npy array: (X, Y, Z) float32."""
    if path.name.lower().endswith(".npy"):
        data = np.load(path, allow_pickle=False)
    else:
        import nibabel as nib

        data = np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)
    data = data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data
    if data.ndim != 3 or not np.isfinite(data).all():
        raise OSError(f"{path} is not a 3D volume of finite voxels")
    return data.astype(np.float32)


def intensity(data: np.ndarray, rule: str) -> np.ndarray:
    """The template's per-volume intensity rules (data/volumes.py): zscore, percentile or minmax."""
    if rule == "zscore":
        out = (data - data.mean()) / max(float(data.std()), 1e-8)
    else:
        lo, hi = np.percentile(data, (1, 99)) if rule == "percentile" else (data.min(), data.max())
        out = np.clip((data - lo) / max(float(hi - lo), 1e-8), 0.0, 1.0)
    return out.astype(np.float32)


def linear_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Linear resampling of one axis as torch's interpolate (align_corners=False): trilinear is one per axis."""
    n_in = a.shape[axis]
    if n_in == n_out:
        return a
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (src - lo).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = n_out
    return np.take(a, lo, axis) * (1 - w).reshape(shape) + np.take(a, hi, axis) * w.reshape(shape)


def preprocess_volume(path: Path, spec: dict) -> np.ndarray:
    """A volume file -> the model's input for it: (1, X, Y, Z) float32, normalised."""
    a = read_volume(path)
    for axis, n in enumerate(spec["volume"]["size"]):
        a = linear_axis(a, n, axis)
    a = intensity(a, spec["volume"]["intensity"])
    return ((a - np.float32(spec["mean"][0])) / np.float32(spec["std"][0]))[None].astype(np.float32)


def predict(session, spec: dict, paths: list, batch_size: int = 64) -> list:
    """(path, class name, confidence) for each image."""
    rows = []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        x = np.stack([preprocess_volume(p, spec) if "volume" in spec else preprocess(p, spec) for p in chunk])
        (logits,) = session.run([spec["output"]["name"]], {spec["input"]["name"]: x})
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs = e / e.sum(1, keepdims=True)
        rows += [(str(p), spec["class_names"][k], float(probs[j, k])) for j, (p, k) in enumerate(zip(chunk, probs.argmax(1)))]
    return rows


def images(paths: list, volumes: bool = False) -> list:
    """The files to predict on: the files given, and the images (or volumes) in the folders given."""
    def wanted(f: Path) -> bool:
        return f.name.lower().endswith(VOLUME_EXTENSIONS) if volumes else f.suffix.lower() in EXTENSIONS
    out = []
    for p in map(Path, paths):
        out += sorted(f for f in p.rglob("*") if wanted(f) and f.is_file()) if p.is_dir() else [p]
    return out


# ---------------------------------------------------------------- segmentation (preprocess.json has "segmentation")
def case_inputs(paths: list, seg: dict, channels: int) -> list:
    """[(case id, [channel files])]: single files (one channel), or folders in imagesTs layout (<case>_0000<ending>, ...)."""
    ending, out = seg["file_ending"], []
    for p in map(Path, paths):
        if p.is_file():
            name = p.name[:-len(ending)] if p.name.endswith(ending) else p.stem
            out.append((name[:-5] if name.endswith("_0000") else name, [p]))
            continue
        for first in sorted(p.glob(f"*_0000{ending}")):
            case = first.name[:-len(ending) - 5]
            out.append((case, [p / f"{case}_{c:04d}{ending}" for c in range(channels)]))
    return out


def normalise_channel(x: np.ndarray, rule: dict) -> np.ndarray:
    """One channel by its recorded rule (the template's data/cases.py): zscore per case, or ct with the recorded numbers."""
    if rule["rule"] == "ct":
        return ((np.clip(x, *rule["clip"]) - rule["mean"]) / rule["std"]).astype(np.float32)
    return ((x - x.mean()) / max(float(x.std()), 1e-8)).astype(np.float32)


def gaussian(patch: list, sigma_scale: float = 0.125) -> np.ndarray:
    axes = [np.exp(-0.5 * ((np.arange(p) - (p - 1) / 2) / (p * sigma_scale)) ** 2) for p in patch]
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    g[g == 0] = g[g > 0].min()
    return g.astype(np.float32)


def starts(size: int, patch: int, overlap: float) -> list:
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / (patch * (1 - overlap)))) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def sliding_window(session, x: np.ndarray, patch: list, classes: int, overlap: float, mirror: bool, batch: int = 4) -> np.ndarray:
    """(C, X, Y, Z) -> logits (classes, X, Y, Z), Gaussian-weighted, as the template's tasks/segment/window.py."""
    pads = [(max(0, p - n) // 2, max(0, p - n) - max(0, p - n) // 2) for n, p in zip(x.shape[1:], patch)]
    xp = np.pad(x, [(0, 0)] + pads)
    shape = xp.shape[1:]
    weight = gaussian(patch)
    total, norm = np.zeros((classes, *shape), np.float32), np.zeros(shape, np.float32)
    corners = [(a, b, c) for a in starts(shape[0], patch[0], overlap) for b in starts(shape[1], patch[1], overlap)
               for c in starts(shape[2], patch[2], overlap)]
    flips = [()] + ([(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)] if mirror else [])
    for i in range(0, len(corners), batch):
        group = corners[i:i + batch]
        tiles = np.stack([xp[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in group]).astype(np.float32)
        logits = sum(np.flip(session.run(None, {"input": np.ascontiguousarray(np.flip(tiles, f))})[0], f) for f in flips) / len(flips)
        for (a, b, c), tile in zip(group, logits):
            total[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] += tile * weight
            norm[a:a + patch[0], b:b + patch[1], c:c + patch[2]] += weight
    out = total / norm
    (x0, _), (y0, _), (z0, _) = pads
    return out[:, x0:x0 + x.shape[1], y0:y0 + x.shape[2], z0:z0 + x.shape[3]]


def segment_case(session, spec: dict, files: list) -> tuple:
    """A case's channel files -> (label map in the first file's own voxel order, that file's nibabel image)."""
    import nibabel as nib

    seg, first = spec["segmentation"], nib.load(str(files[0]))
    ornt = nib.orientations.io_orientation(first.affine)
    canon = [nib.as_closest_canonical(nib.load(str(f))) for f in files]
    spacing = np.linalg.norm(canon[0].affine[:3, :3], axis=0)
    x = np.stack([normalise_channel(np.asarray(c.dataobj, dtype=np.float32), r) for c, r in zip(canon, seg["channel_rules"])])
    grid = x.shape[1:]
    target = [max(1, int(round(n * s / t))) for n, s, t in zip(grid, spacing, seg["spacing_mm"])]
    for axis, n in enumerate(target):
        x = linear_axis(x, n, axis + 1)
    logits = sliding_window(session, x, seg["patch"], len(spec["class_names"]), seg["window"]["overlap"], seg["window"]["mirror"])
    probs = np.exp(logits - logits.max(0, keepdims=True))
    probs /= probs.sum(0, keepdims=True)
    for axis, n in enumerate(grid):
        probs = linear_axis(probs, n, axis + 1)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(probs.argmax(0).astype(np.uint8), back)), first


def write_label(label: np.ndarray, like, path: Path) -> None:
    """The label map with the input file's header and affine, as the template's inference.py --input writes it."""
    import nibabel as nib

    header = like.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(label, like.affine, header)
    out.set_qform(like.affine, code=int(like.header["qform_code"]) or 1)
    out.set_sform(like.affine, code=int(like.header["sform_code"]) or 1)
    nib.save(out, str(path))


def segment(session, spec: dict, inputs: list, out_dir: Path) -> list:
    """Write <case>.nii.gz label maps into out_dir; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for case, files in case_inputs(inputs, spec["segmentation"], spec["channels"]):
        label, like = segment_case(session, spec, files)
        write_label(label, like, out_dir / f"{case}.nii.gz")
        written.append(out_dir / f"{case}.nii.gz")
    return written


def main(argv: list = None) -> int:
    parser = argparse.ArgumentParser(description="Predict classes with an exported run's model.onnx (no torch).")
    parser.add_argument("export_dir", type=Path, help="the export folder: model.onnx and preprocess.json")
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--out", type=Path, default=Path("labels"), help="segmentation: where <case>.nii.gz label maps go")
    args = parser.parse_args(argv)
    session, spec = load(args.export_dir, args.threads)
    if "segmentation" in spec:
        for path in segment(session, spec, args.inputs, args.out):
            print(path)
        return 0
    try:
        rows = predict(session, spec, images(args.inputs, "volume" in spec))
    except OSError as e:
        sys.exit(f"error: cannot read an image ({e}); remove or fix the file")
    print("path,class,confidence")
    for path, name, conf in rows:
        print(f"{path},{name},{conf:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
