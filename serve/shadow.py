"""Shadow traffic: a second run sees every request, off the response path, and both answers are logged.

    --serve --shadow RUN|alias:NAME [--shadow-log FILE]    (default experiments/shadow/<utc time>.jsonl)

The log is JSON lines: first {"start": ...} with both runs (id, weights sha256, class names), then
one line per sample: {"id", "time", "route", "primary": {"run", "sha256", "predicted", "latency_ms"},
"shadow": {...}}, and for label maps "voxel_agreement". The shadow runs in a thread of its own; when
it falls MAX_BACKLOG requests behind, further requests are not shadowed (counted in the last line).

    --shadow-report LOG [--labels CSV]

Agreement, the confusion of the two runs' classes, latency p50/p99 of each; with a CSV of labels
collected later (columns id,label: a class name or index), each run's accuracy on those requests,
McNemar's test and the paired bootstrap interval of accuracy(shadow) - accuracy(primary), as --compare.
"""
import csv
import gzip
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from infer.served import FileAnswer, ServedModel
from store.aliases import utc
from utils.errors import UsageError
from utils.files import write_json, write_text
from utils.stats import mcnemar

MAX_BACKLOG = 256


class Shadow:
    def __init__(self, model: ServedModel, primary: ServedModel, log: Path):
        self.model, self.log = model, log
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self.lock, self.backlog, self.skipped = threading.Lock(), 0, 0
        log.parent.mkdir(parents=True, exist_ok=True)
        self.write({"start": utc(), "primary": self.describe(primary), "shadow": self.describe(model)})

    @staticmethod
    def describe(m: ServedModel) -> dict:
        return {"run": m.run_id, "sha256": m.weights_sha256, "task": m.task, "class_names": m.parameters.get("class_names")}

    def write(self, line: dict) -> None:
        with self.lock, open(self.log, "a") as f:
            f.write(json.dumps(line) + "\n")

    def submit(self, work, *args) -> bool:
        with self.lock:
            if self.backlog >= MAX_BACKLOG:
                self.skipped += 1
                return False
            self.backlog += 1
        self.pool.submit(self.done_after, work, *args)
        return True

    def done_after(self, work, *args) -> None:
        try:
            work(*args)
        except Exception as e:  # noqa: BLE001 - the shadow never fails a request; say what went wrong
            print(f"serve: shadow run {self.model.run_id} failed on a request: {e}", file=sys.stderr, flush=True)
        finally:
            with self.lock:
                self.backlog -= 1

    def observe_tensor(self, rid: str, x: np.ndarray, answer, primary_ms: float) -> None:
        self.submit(self.shadow_tensor, rid, x, answer, primary_ms)

    def shadow_tensor(self, rid: str, x: np.ndarray, answer, primary_ms: float) -> None:
        t0 = time.perf_counter()
        out = self.model.infer(x)
        ms = 1000 * (time.perf_counter() - t0)
        for i in range(len(x)):
            line = {"id": rid if len(x) == 1 else f"{rid}:{i}", "time": utc(), "route": "infer",
                    "primary": self.side(answer.model, answer.outputs, i, primary_ms), "shadow": self.side(self.model, out, i, ms)}
            if "labels" in out:
                line["voxel_agreement"] = float((out["labels"][i] == answer.outputs["labels"][i]).mean())
            self.write(line)

    def side(self, m: ServedModel, outputs: dict, i: int, ms: float) -> dict:
        names = m.parameters.get("class_names") or []
        return entry(m, names[int(outputs["predicted"][i])] if "predicted" in outputs else None, ms)

    def observe_file(self, rid: str, path: Path, tmp: tempfile.TemporaryDirectory, primary: ServedModel, answer: FileAnswer,
                     primary_ms: float) -> None:
        if not self.submit(self.shadow_file, rid, path, tmp, primary, answer, primary_ms):
            tmp.cleanup()

    def shadow_file(self, rid: str, path: Path, tmp, primary: ServedModel, answer: FileAnswer, primary_ms: float) -> None:
        try:
            t0 = time.perf_counter()
            theirs = self.model.predict_file(path)
            ms = 1000 * (time.perf_counter() - t0)
        finally:
            tmp.cleanup()
        line = {"id": rid, "time": utc(), "route": "predict",
                "primary": entry(primary, answer.row.get("predicted"), primary_ms),
                "shadow": entry(self.model, theirs.row.get("predicted"), ms)}
        if answer.body and theirs.body:
            line["voxel_agreement"] = float((label_map(answer.body) == label_map(theirs.body)).mean())
        self.write(line)

    def close(self) -> None:
        """Finish what is queued (on shutdown), then note what was not shadowed."""
        self.pool.shutdown(wait=True)
        self.write({"end": utc(), "skipped": self.skipped})


def entry(m: ServedModel, predicted, ms: float) -> dict:
    """One run's side of a log line."""
    return {"run": m.run_id, "sha256": m.weights_sha256, "predicted": predicted, "latency_ms": round(ms, 3)}


def label_map(body: bytes) -> np.ndarray:
    from data.volumes import nibabel

    return np.asarray(nibabel().Nifti1Image.from_bytes(gzip.decompress(body)).dataobj)


def default_log() -> Path:
    from store.runs import EXPERIMENTS

    return EXPERIMENTS / "shadow" / (time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime()) + ".jsonl")


# ---------------------------------------------------------------- the report
def read_log(path: Path) -> tuple[dict, list[dict]]:
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise UsageError(f"--shadow-report: cannot read {path} ({e}); give a log that --serve --shadow wrote") from None
    start = next((line for line in lines if "start" in line), None)
    if start is None:
        raise UsageError(f"--shadow-report: {path} is not a shadow log (no start line); give a log that --serve --shadow wrote")
    return start, [line for line in lines if "id" in line]


def read_labels(path: Path, names: list) -> dict:
    """{request id: class name} from a CSV with columns id,label (a class name, or its index)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UsageError(f"--labels: cannot read {path} ({e.strerror})") from None
    if rows and not {"id", "label"} <= set(rows[0]):
        raise UsageError(f"--labels: {path} needs the columns id,label (it has {', '.join(rows[0])})")
    labels = {}
    for r in rows:
        label = r["label"].strip()
        labels[r["id"].strip()] = names[int(label)] if label.isdigit() and label not in names and int(label) < len(names) else label
    return labels


def latency(values: list) -> dict:
    v = np.array([x for x in values if x is not None], dtype=float)
    return {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))} if len(v) else {}


def shadow_report(log: Path, labels_csv: Optional[Path]) -> dict:
    start, lines = read_log(log)
    if not lines:
        raise UsageError(f"--shadow-report: {log} holds no shadowed request yet; send requests to the server first")
    a = [line["primary"]["predicted"] for line in lines]
    b = [line["shadow"]["predicted"] for line in lines]
    names = start["primary"].get("class_names") or []
    report = {"log": str(log), "primary": start["primary"]["run"], "shadow": start["shadow"]["run"], "requests": len(lines),
              "runs_seen": {"primary": sorted({line["primary"]["run"] for line in lines}),
                            "shadow": sorted({line["shadow"]["run"] for line in lines})},
              "latency": {"primary": latency([line["primary"]["latency_ms"] for line in lines]),
                          "shadow": latency([line["shadow"]["latency_ms"] for line in lines])}}
    if any(x is not None for x in a):
        report["agreement"] = float(np.mean([x == y for x, y in zip(a, b)]))
        report["confusion"] = {"rows": "primary", "columns": "shadow", "classes": names,
                               "counts": [[sum(1 for x, y in zip(a, b) if x == p and y == s) for s in names] for p in names]}
    agreements = [line["voxel_agreement"] for line in lines if "voxel_agreement" in line]
    if agreements:
        report["voxel_agreement"] = {"mean": float(np.mean(agreements)), "min": float(np.min(agreements))}
    if labels_csv is not None:
        report["labelled"] = labelled_ab(lines, read_labels(labels_csv, names), report)
    return report


def labelled_ab(lines: list[dict], labels: dict, report: dict) -> dict:
    """The paired A/B (primary = A, shadow = B) on the requests that have a label."""
    rows = [line for line in lines if line["id"] in labels]
    if not rows:
        raise UsageError(f"--labels: none of its ids is a request in the log (log ids look like {lines[0]['id']!r})")
    from tasks.classify.compare import BOOTSTRAP_SAMPLES, bootstrap_diff, reading  # the A/B of --compare, on these requests

    ca = np.array([line["primary"]["predicted"] == labels[line["id"]] for line in rows])
    cb = np.array([line["shadow"]["predicted"] == labels[line["id"]] for line in rows])
    lo, hi = bootstrap_diff(ca, cb)
    test = mcnemar(ca, cb)
    return {"samples": len(rows), "accuracy": {"primary": float(ca.mean()), "shadow": float(cb.mean())}, "mcnemar": test,
            "accuracy_diff_shadow_minus_primary": {"value": float(cb.mean() - ca.mean()), "ci95": [lo, hi],
                                                   "bootstrap_samples": BOOTSTRAP_SAMPLES, "seed": 0},
            "reading": f"{reading(test, report['primary'], report['shadow'])} Shadow - primary accuracy "
                       f"{cb.mean() - ca.mean():+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}]"}


def to_markdown(r: dict) -> str:
    lat = r["latency"]
    lines = [f"# Shadow report: {r['shadow']} (shadow) beside {r['primary']} (primary)", "",
             f"{r['requests']} requests in {r['log']}.", ""]
    if "agreement" in r:
        lines += [f"Agreement on the predicted class: {100 * r['agreement']:.2f}%.", "", "Confusion (rows primary, columns shadow):", "",
                  "| | " + " | ".join(r["confusion"]["classes"]) + " |", "|---" * (len(r["confusion"]["classes"]) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(map(str, row)) + " |" for c, row in zip(r["confusion"]["classes"], r["confusion"]["counts"])]
        lines.append("")
    if "voxel_agreement" in r:
        va = r["voxel_agreement"]
        lines += [f"Voxel agreement of the label maps: mean {va['mean']:.4f}, lowest {va['min']:.4f}.", ""]
    for side in ("primary", "shadow"):
        if lat[side]:
            lines.append(f"- {side} latency: p50 {lat[side]['p50_ms']:.2f} ms, p99 {lat[side]['p99_ms']:.2f} ms")
    if "labelled" in r:
        ab = r["labelled"]
        lines += ["", f"On {ab['samples']} labelled requests: accuracy primary {ab['accuracy']['primary']:.4f}, shadow "
                  f"{ab['accuracy']['shadow']:.4f}. {ab['reading']}."]
    return "\n".join(lines) + "\n"


def report_main(args) -> int:
    """inference.py --shadow-report LOG [--labels CSV]: print the report, write LOG's stem .report.md and .json beside it."""
    if not args.shadow_report:
        raise UsageError("--labels goes with --shadow-report LOG: python inference.py --shadow-report LOG --labels CSV")
    log = Path(args.shadow_report).expanduser()
    report = shadow_report(log, Path(args.labels).expanduser() if args.labels else None)
    text = to_markdown(report)
    print(text, end="")
    stem = log.with_suffix("")
    write_text(stem.with_name(stem.name + ".report.md"), text)
    write_json(stem.with_name(stem.name + ".report.json"), report)
    print(f"wrote {stem}.report.md and .json")
    return 0
