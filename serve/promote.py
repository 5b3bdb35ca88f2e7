"""inference.py --promote RUN --alias NAME [--margin M] [--force --note TEXT]: move an alias by evidence.

RUN is compared with the alias's run by the task's own A/B (inference.py --compare ALIAS_RUN RUN, on
the same held-out samples), and the alias moves only when RUN is not worse: the lower bound of the
paired 95% interval of B - A (accuracy, or mean Dice) lies above -margin. Otherwise exit 1 with the
report's verdict, and aliases.json is not touched. The first promotion of an alias needs no A/B;
--force --note TEXT moves it whatever the A/B would say, and the note is kept.

The check and the move happen under one lock (store/aliases.py), so two promotions run one after
the other, and each compares against the alias as the other left it.
"""
import json
from pathlib import Path

from infer.onnx_backend import BACKENDS
from infer.runs import select_run
from store.aliases import alias_lock, check_alias, move_alias, read_aliases
from store.runs import EXPERIMENTS
from tasks import configs, task_of
from utils.config import Config, load_config
from utils.errors import RunFailure, UsageError

GATE_KEYS = ("accuracy_diff_B_minus_A", "dice_diff_B_minus_A")  # the paired B - A interval of each task's A/B report


def promote_main(args, shared) -> int:
    check_arguments(args)
    name = check_alias(args.alias)
    candidate = select_run(args.promote, "--promote")
    task = task_of(candidate)
    cfg = load_config(args.config, args.overrides, configs, task.name)
    with alias_lock(EXPERIMENTS):
        current = (read_aliases(EXPERIMENTS).get(name) or {}).get("run")
        if current == candidate["id"]:
            print(f"alias {name} already points at run {candidate['id']}; nothing to do")
            return 0
        if current is None:
            record = {"gate": "first promotion of the alias: no A/B", "report": None, "verdict": None}
        elif args.force:
            record = {"gate": "forced", "note": args.note, "report": None, "verdict": None}
        else:
            record = gate(cfg, select_run(current, f"alias:{name}"), candidate, args.margin, name)
        entry = move_alias(name, candidate["id"], record, EXPERIMENTS)
    print(f"alias {name}: {entry['from'] or '(new)'} -> {candidate['id']} ({record['gate']}); recorded in "
          "experiments/aliases.history.jsonl")
    return 0


def check_arguments(args) -> None:
    if not args.promote or not args.alias:
        raise UsageError("--promote RUN and --alias NAME go together: python inference.py --promote RUN --alias production")
    if args.force and not (args.note or "").strip():
        raise UsageError("--force needs --note TEXT: why the A/B is overridden (kept in experiments/aliases.history.jsonl)")
    if args.note and not args.force:
        raise UsageError("--note goes with --force (a promotion that passes its A/B records the report instead)")
    if args.margin < 0:
        raise UsageError(f"--margin must be 0 or more (how much worse RUN may be), not {args.margin}")
    if args.serve or args.input or args.compare or args.export:
        raise UsageError("--promote takes no --serve, --input, --compare or --export")


def gate(cfg: Config, current: dict, candidate: dict, margin: float, name: str) -> dict:
    """Run the A/B (A: the alias's run, B: the candidate); the history record, or exit 1 when B is worse."""
    task = task_of(current, candidate)
    task.compare(cfg, current, candidate, (cfg.backend, cfg.backend), None)
    path = report_path(current["id"], candidate["id"], cfg.backend)
    report = json.loads(path.read_text())
    key = next((k for k in GATE_KEYS if k in report), None)
    if key is None:
        raise UsageError(f"--promote: the A/B of task {task.name} has no paired interval to gate on; move the alias with "
                         "--force --note TEXT")
    value, (lo, hi) = report[key]["value"], report[key]["ci95"]
    verdict = report.get("reading") or report.get("verdict") or ""
    passed = lo > -margin
    summary = f"{key.split('_diff')[0]} B - A {value:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}], margin {margin:g}"
    if not passed:
        raise RunFailure(f"--promote: run {candidate['id']} may be worse than run {current['id']} (alias {name}): {summary}; "
                         f"the lower bound is not above -{margin:g}, so the alias stays. {verdict} Report: {path}. "
                         "Override with --force --note TEXT")
    print(f"the A/B passed the gate: {summary}")
    return {"gate": f"A/B passed: {summary}", "report": str(path.relative_to(EXPERIMENTS.parent)), "verdict": verdict,
            "metric": key, "value": value, "ci95": [lo, hi], "margin": margin}


def report_path(a: str, b: str, backend: str) -> Path:
    """Where the task's compare wrote its JSON (infer/report.py: under B's inference/)."""
    suffix = BACKENDS[backend]
    return EXPERIMENTS / b / "inference" / f"compare_{a}{suffix}_vs_{b}{suffix}.json"
