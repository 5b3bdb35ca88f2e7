"""The skeleton every task's A/B report shares: picking the two runs, what differs between their
configs and model sources, and writing the report as .md, .json and .png under B's inference/."""
from collections.abc import Callable
from pathlib import Path

from infer.onnx_backend import split_spec
from infer.runs import is_finished, select_run
from store.runs import find_run, list_runs, write_json, write_text
from utils.config import Config
from utils.errors import UsageError


def select_pair(cfg: Config, runs: list[str]) -> tuple[dict, dict, tuple[str, str]]:
    """The two finished runs of inference.py --compare A [B] (B: the run `resume` selects), and the
    backend of each: a run written RUN@onnx is served by onnxruntime from its export, others by `backend`."""
    if len(runs) > 2:
        raise UsageError(f"--compare takes one or two run ids, got {len(runs)}")
    spec_a, backend_a = split_spec(runs[0], cfg.backend)
    spec_b, backend_b = split_spec(runs[1], cfg.backend) if len(runs) > 1 else (cfg.resume, cfg.backend)
    run_a = find_run(spec_a, "--compare", is_finished, "that finished",
                     lambda r: None if is_finished(r) else f"has no final weights (status {r.get('status')}); pick a finished run")
    run_b = select_run(spec_b, "--compare" if len(runs) > 1 else "resume")
    if run_a["id"] == run_b["id"] and backend_a == backend_b:
        raise UsageError(f"--compare {' '.join(runs)}: that compares run {run_a['id']} with itself"
                         f"{' (it is also the run resume selects)' if len(runs) == 1 else ''}; name two runs: "
                         f"--compare {other_run(run_a['id'])} {run_a['id']} (A, then B)")
    return run_a, run_b, (backend_a, backend_b)


def other_run(run_id: str) -> str:
    """The newest finished run other than `run_id`, to suggest as the other side of an A/B."""
    others = [r for r in list_runs() if is_finished(r) and r["id"] != run_id]
    alone = [r for r in others if not r.get("group")]  # a group's member is better compared as part of its group
    return (alone or others)[-1]["id"] if others else "<another run id>"


def config_diff(a: Config, b: Config) -> dict:
    """The config keys whose values differ (a key only one run has counts as differing), resume aside."""
    va, vb = vars(a), vars(b)
    keys = [k for k in dict.fromkeys([*va, *vb]) if k != "resume"]
    return {k: {"A": va.get(k), "B": vb.get(k)} for k in keys if va.get(k) != vb.get(k)}


def config_lines(diff: dict) -> list[str]:
    """The config diff as markdown lines."""
    if not diff:
        return ["The two configs are the same (apart from resume)."]
    return ["Config keys that differ:", ""] + [f"- `{k}`: A {v['A']!r}, B {v['B']!r}" for k, v in diff.items()]


def model_source_changed(run_a: dict, run_b: dict) -> bool:
    """Whether the source of the model classes differs between the runs (run.json's hash)."""
    return run_a.get("model_source_sha256") != run_b.get("model_source_sha256")


def model_source_line(changed: bool) -> str:
    return "The model class source " + ("changed between the runs." if changed else "is the same in both runs.")


def write_report(stem: Path, markdown: str, report: dict, plot: Callable[[Path], None]) -> None:
    """Print the report and write it as stem.md, stem.json and stem.png (each atomically)."""
    print(markdown)
    write_text(stem.with_suffix(".md"), markdown)
    write_json(stem.with_suffix(".json"), report)
    plot(stem.with_suffix(".png"))
    print(f"wrote {stem}.md, .json and .png")
