"""inference.py --sweep <id>: the report of a sweep (sweeps/study.py): the best trial and its config, every
trial's values and metric, parameter importances, and the plots Optuna draws with matplotlib (the metric
against each parameter, the optimisation history). Written to experiments/sweeps/<id>/report.md,
report.json, history.png and slices.png."""
from pathlib import Path

from store.runs import RUN_ID_RE, write_json, write_text
from sweeps.file import SweepFile
from sweeps.study import read_sweep, require_optuna, storage_of, sweeps_dir
from utils.errors import UsageError


def load_study(sweep_id: str):
    """The sweep's record and its Optuna study; an unknown id is exit 2 naming the sweeps there are."""
    require_optuna()
    import optuna

    info = read_sweep(sweeps_dir() / sweep_id) if RUN_ID_RE.match(sweep_id) else None
    if info is None:
        ids = sorted(p.name for p in sweeps_dir().iterdir())[-5:] if sweeps_dir().is_dir() else []
        raise UsageError(f"--sweep: no sweep '{sweep_id}' in experiments/sweeps/" + (f"; recent: {', '.join(ids)}" if ids else ""))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    file = SweepFile(0, None, None, "tpe", 0, "none", info.get("storage_url"), {}, {})
    storage = storage_of(file, sweeps_dir() / sweep_id)
    return info, optuna.load_study(study_name=sweep_id, storage=storage)


def sweep_report(sweep_id: str) -> int:
    """Print and write the report of sweep `sweep_id`."""
    info, study = load_study(sweep_id)
    trials = study.get_trials(deepcopy=False)
    done = sorted([t for t in trials if t.state.name == "COMPLETE"], key=lambda t: t.value,
                  reverse=info["direction"] == "maximize")
    report = {"sweep": sweep_id, "metric": info["metric"], "direction": info["direction"], "trials": info["trials"],
              "rows": [{"trial": t.number, "state": t.state.name.lower(), "run": t.user_attrs.get("run"), "params": t.params,
                        "value": t.value} for t in trials],
              "best": None, "importances": importances(study, done)}
    if done:
        best = done[0]
        report["best"] = {"trial": best.number, "run": best.user_attrs.get("run"), "value": best.value, "params": best.params,
                          "config": config_text(best.user_attrs.get("run"))}
        report["runner_up"] = {"trial": done[1].number, "run": done[1].user_attrs.get("run")} if len(done) > 1 else None
    folder = sweeps_dir() / sweep_id
    plots = draw(study, folder, bool(done))
    text = markdown(report, plots)
    print(text)
    write_text(folder / "report.md", text)
    write_json(folder / "report.json", report)
    print(f"wrote {folder}/report.md, report.json" + "".join(f", {p}" for p in plots))
    return 0


def config_text(run_id) -> str:
    from store import runs as runstore

    try:
        return (runstore.EXPERIMENTS / run_id / "config.yaml").read_text()
    except (OSError, TypeError):
        return ""


def importances(study, done: list) -> dict:
    """Optuna's parameter importances (fANOVA); {} with fewer than two completed trials."""
    import optuna

    if len(done) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # e.g. every completed trial has the same values
        return {}


def draw(study, folder: Path, any_done: bool) -> list[str]:
    """history.png (the metric by trial, and the best so far) and slices.png (the metric against each parameter)."""
    if not any_done:
        return []
    import warnings

    import matplotlib
    import matplotlib.ticker
    from optuna.exceptions import ExperimentalWarning

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # the matplotlib plots are marked experimental
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_slice

    names = []
    for name, plot in (("history.png", plot_optimization_history), ("slices.png", plot_slice)):
        axes = plot(study)
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.set_size_inches(max(6, 3.5 * len(study.best_trial.params)) if name == "slices.png" else 7, 4)
        if name == "history.png":  # trials are whole numbers
            figure.axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if name == "slices.png":  # a log axis (lr) labelled every minor tick, overlapping: 1, 2 and 5 of each decade only
            for ax in figure.axes[:len(study.best_trial.params)]:
                if ax.get_xscale() == "log":
                    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
                    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.2g}"))
                    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.tick_params(axis="x", which="major", labelsize=7, labelrotation=40)
        figure.savefig(folder / name, dpi=90, bbox_inches="tight")
        names.append(name)
    plt.close("all")
    return names


def markdown(r: dict, plots: list[str]) -> str:
    lines = [f"# Sweep {r['sweep']}: {r['metric']} ({r['direction']}), {len(r['rows'])} of {r['trials']} trials", ""]
    if r["best"]:
        b = r["best"]
        lines += [f"Best: trial {b['trial']}, run {b['run']}, {r['metric']} {b['value']:.4f}, with "
                  + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b["params"].items()), ""]
        if r.get("runner_up"):
            lines += [f"A/B of the best against the runner-up (trial {r['runner_up']['trial']}): "
                      f"`python inference.py --compare {r['runner_up']['run']} {b['run']}`", ""]
    keys = list(dict.fromkeys(k for row in r["rows"] for k in row["params"]))
    lines += ["| trial | state | run | " + " | ".join(keys) + f" | {r['metric']} |", "| --- " * (len(keys) + 4) + "|"]
    for row in r["rows"]:
        values = [f"{row['params'][k]:.4g}" if isinstance(row["params"].get(k), float) else str(row["params"].get(k, "-"))
                  for k in keys]
        value = "-" if row["value"] is None else f"{row['value']:.4f}"
        lines.append(f"| {row['trial']} | {row['state']} | {row['run'] or '-'} | " + " | ".join(values) + f" | {value} |")
    if r["importances"]:
        lines += ["", "Parameter importances (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in r["importances"].items())]
    lines += ["", "Plots: " + (", ".join(plots) if plots else "none yet (no trial completed)"), ""]
    if r["best"]:
        lines += ["Config of the best trial:", "", "```yaml", r["best"]["config"].rstrip(), "```", ""]
    return "\n".join(lines)
