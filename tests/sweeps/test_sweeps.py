"""Sweeps: an Optuna study whose trials are ordinary runs; bad sweep files, counts with two workers,
SIGKILL and rerun, reproducible suggestions, pruning, the report, and a real PostgreSQL server."""
import json
import os
import signal
import sys
import textwrap

import pytest

optuna = pytest.importorskip("optuna", reason="optuna is not installed: pip install -r requirements-sweeps.txt")

SPACE = """
space:
  lr: {log_uniform: [1.0e-3, 1.0e-2]}
  dropout: {uniform: [0.0, 0.5]}
  batch_size: {choices: [32, 64]}
"""


def sweep_file(project, text: str, name: str = "sweep.yaml") -> str:
    path = project.root / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def sweep_ids(project) -> list[str]:
    root = project.experiments / "sweeps"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def run_sweep(project, path: str, *args: str, env: dict | None = None) -> str:
    before = set(sweep_ids(project))
    r = project.run("train.py", "--sweep", path, *args, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    sid = lines[0].split()[1].rstrip(":")
    assert lines[-1].startswith(f"sweep {sid}:") and (sid in before or set(sweep_ids(project)) - before == {sid})
    return sid


def study_of(project, sid: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(project.experiments / "sweeps" / sid / "journal.log")))
    return optuna.load_study(study_name=sid, storage=storage)


def trial_runs(project, sid: str) -> dict[int, list[dict]]:
    """trial number -> its runs (a killed run and its continuation), oldest first."""
    out: dict[int, list[dict]] = {}
    for rid in project.run_ids():
        info = project.info(rid)
        if (info.get("sweep") or {}).get("id") == sid:
            out.setdefault(info["sweep"]["trial"], []).append(info)
    return {k: sorted(v, key=lambda i: i["start_utc"]) for k, v in out.items()}


@pytest.mark.parametrize("text, words", [
    ("trials: 2\nspace: {lr: {log_uniform: [1.0e-3, 1.0e-2]}}\nsampler: tpx\n", "sampler 'tpx' is not one of"),
    ("trials: 2\nspace: {lr: {log_uniform: [1.0e-3, 1.0e-2]}}\npruners: median\n", "did you mean 'pruner'"),
    ("trials: 2\nspace: {lrr: {log_uniform: [1.0e-3, 1.0e-2]}}\n", "unknown key 'lrr' (did you mean 'lr'?)"),
    ("trials: 2\nspace: {lr: {log_uniform: [0, 1.0e-2]}}\n", "lr: must be greater than 0"),
    ("trials: 2\nspace: {weight_decay: {log_uniform: [0, 1.0e-2]}}\n", "log_uniform needs low > 0"),
    ("trials: 2\nspace: {batch_size: {uniform: [16, 64]}}\n", "use int: [low, high]"),
    ("trials: 2\nspace: {dropout: {uniform: [0.0, 1.5]}}\n", "dropout: must be less than 1"),
    ("trials: 2\nspace: {optimizer: {choices: [adam, adamx]}}\n", "'adamx' is not one of"),
    ("trials: 2\nspace: {grad_accum_steps: {int: [1, 4], step: 0}}\n", "step must be a whole number"),
    ("trials: 2\nmetric: val_f1\nspace: {lr: {log_uniform: [1.0e-3, 1.0e-2]}}\n", "metric 'val_f1' is not reported by task classify"),
    ("trials: 2\nsampler: grid\nspace: {lr: {log_uniform: [1.0e-3, 1.0e-2]}}\n", "grid needs a finite grid"),
    ("trials: 2\nstorage: postgresql://nobody@127.0.0.1:1/none\nspace: {lr: {log_uniform: [1.0e-3, 1.0e-2]}}\n",
     "cannot reach postgresql://nobody@127.0.0.1:1/none"),
])
def test_bad_sweep_files_exit_2_before_anything_is_written(project, text, words):
    r = project.run("train.py", "--sweep", sweep_file(project, text))
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert project.run_ids() == [] and sweep_ids(project) == []


def test_a_missing_sweep_file_is_exit_2(project):
    r = project.run("train.py", "--sweep", "nowhere.yaml")
    assert r.returncode == 2 and "no sweep file nowhere.yaml" in r.stderr and sweep_ids(project) == []


def test_without_optuna_sweep_is_exit_2_naming_the_install_command(project):
    path = sweep_file(project, "trials: 1\n" + SPACE)
    code = ("import runpy, sys; sys.modules['optuna'] = None; sys.argv = ['train.py', '--sweep', sys.argv[1]]; "
            "runpy.run_path('train.py', run_name='__main__')")
    import subprocess
    r = subprocess.run([sys.executable, "-c", code, path], cwd=project.root, capture_output=True, text=True)
    assert r.returncode == 2 and "pip install -r requirements-sweeps.txt" in r.stderr, r.stderr
    assert project.run("train.py", "--list").returncode == 0, "other commands work without it"


@pytest.mark.slow
def test_two_workers_twelve_trials_and_the_records_agree(project):
    path = sweep_file(project, "trials: 12\nsampler: random\nfixed: {epochs: 1}\n" + SPACE)
    sid = run_sweep(project, path, "--workers", "2")
    runs = trial_runs(project, sid)
    assert sorted(runs) == list(range(12)) and all(len(v) == 1 for v in runs.values()), "12 folders, 12 distinct trials"
    study = study_of(project, sid)
    trials = study.get_trials()
    assert len(trials) == 12 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2, "both workers took trials"
    listed = json.loads(project.run("train.py", "--list", f"sweep={sid}", "--json").stdout)
    assert {r["id"] for r in listed} == {t.user_attrs["run"] for t in trials}
    for t in trials:
        info = runs[t.number][0]
        assert info["sweep"]["params"] == t.params and info["metrics"]["val_acc"] == t.value
        assert all(info["config"][k] == v for k, v in t.params.items())
    # the same command again: the sweep is finished, so it starts a new one
    r = project.run("inference.py", "--sweep", sid)
    assert r.returncode == 0 and "Best: trial" in r.stdout and "Parameter importances" in r.stdout, r.stderr
    for name in ("report.md", "report.json", "history.png", "slices.png"):
        assert (project.experiments / "sweeps" / sid / name).stat().st_size > 0
    page = (project.experiments / "index.html").read_text()
    assert f'id="sweep-{sid}"' in page and page.count(f'data-group="{sid}"') == 12


@pytest.mark.slow
def test_sigkill_and_rerun_continues_the_trial_and_suggests_the_same_values(project):
    path = sweep_file(project, "trials: 4\nsampler: tpe\nsampler_seed: 3\nfixed: {epochs: 2, checkpoint_every_steps: 5}\n" + SPACE)
    whole = run_sweep(project, path)
    r = project.run("train.py", "--sweep", path, env={"TEMPLATE_FAULT": "step:60"}, timeout=900)  # in trial 1 or 2
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    (killed,) = set(sweep_ids(project)) - {whole}
    assert any(t.state.name == "RUNNING" for t in study_of(project, killed).get_trials())
    again = run_sweep(project, path)
    assert again == killed, "the same command continued the unfinished sweep"
    a, b = study_of(project, whole).get_trials(), study_of(project, killed).get_trials()
    assert len(b) == 4 and all(t.state.name == "COMPLETE" for t in b), "no trial left running, 4 in all"
    assert [t.params for t in a] == [t.params for t in b], "the same suggestions as uninterrupted"
    runs_a, runs_b = trial_runs(project, whole), trial_runs(project, killed)
    continued = [n for n, v in runs_b.items() if len(v) == 2]
    assert len(continued) == 1 and runs_b[continued[0]][1]["parent"]["step"] > 0, "continued mid-epoch from its state"
    for n in range(4):
        assert runs_b[n][-1]["weights"]["sha256"] == runs_a[n][-1]["weights"]["sha256"], n


@pytest.mark.slow
def test_pruning_ends_hopeless_trials_early(project):
    path = sweep_file(project, """
        trials: 8
        sampler: random
        pruner: median
        fixed: {epochs: 4}
        space:
          lr: {log_uniform: [1.0e-6, 1.0e-1]}
    """)
    sid = run_sweep(project, path)
    trials = study_of(project, sid).get_trials()
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and len(trials) == 8
    for t in pruned:
        info = trial_runs(project, sid)[t.number][-1]
        assert info["status"] == "finished" and info["pruned"] and info["epochs_done"] < 4
        assert (project.experiments / info["id"] / "curves.png").exists(), "pruned trials keep their curves"
    listed = json.loads(project.run("train.py", "--list", f"sweep={sid}", "status=pruned", "--json").stdout)
    assert {r["id"] for r in listed} == {t.user_attrs["run"] for t in pruned}


@pytest.mark.slow
def test_a_sweep_id_with_another_space_is_refused(project):
    path = sweep_file(project, "trials: 1\nfixed: {epochs: 1}\n" + SPACE)
    sid = run_sweep(project, path)
    other = sweep_file(project, "trials: 1\nfixed: {epochs: 1}\nspace: {lr: {log_uniform: [1.0e-4, 1.0e-2]}}\n", "other.yaml")
    before = project.snapshot()
    r = project.run("train.py", "--sweep", other, "--sweep-id", sid)
    assert r.returncode == 2 and "different search space" in r.stderr, r.stderr
    assert project.snapshot() == before


@pytest.mark.slow
def test_two_workers_share_one_study_on_a_real_postgresql_server(project):
    url = os.environ.get("SWEEP_POSTGRES_URL", "postgresql://template:template@127.0.0.1/template_sweeps")
    try:
        import psycopg
        psycopg.connect(url, connect_timeout=3).close()
    except Exception as e:  # no driver, no server, no role: say which
        pytest.skip(f"no PostgreSQL server at {url} ({type(e).__name__}: {str(e).strip()[:120]}); .ci/run starts one as root")
    path = sweep_file(project, f"trials: 4\nsampler: random\nstorage: {url}\nfixed: {{epochs: 1}}\n" + SPACE)
    sid = run_sweep(project, path, "--workers", "2")
    study = optuna.load_study(study_name=sid, storage=url.replace("postgresql://", "postgresql+psycopg://"))
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2, "both workers took trials from the one study"
    assert sorted(trial_runs(project, sid)) == [0, 1, 2, 3]
    assert "postgresql://template:***@" in (project.experiments / "sweeps" / sid / "sweep.json").read_text()


@pytest.mark.slow
def test_grid_covers_its_grid_once(project):
    path = sweep_file(project, "trials: 3\nsampler: grid\nfixed: {epochs: 1}\nspace:\n  lr: {choices: [0.001, 0.003, 0.01]}\n")
    sid = run_sweep(project, path)
    trials = study_of(project, sid).get_trials()
    assert sorted(t.params["lr"] for t in trials) == [0.001, 0.003, 0.01] and all(t.state.name == "COMPLETE" for t in trials)


def test_a_sweep_whose_every_trial_fails_is_exit_1_and_a_bad_init_from_is_exit_2(project):
    r = project.run("train.py", "--sweep", sweep_file(project, "trials: 1\n" + SPACE), "init_from=2020-01-01_00-00-00")
    assert r.returncode == 2 and "init_from" in r.stderr and sweep_ids(project) == []
    r = project.run("train.py", "--sweep", sweep_file(project, "trials: 2\nfixed: {batch_size: 4096}\n"
                                                     "space: {lr: {log_uniform: [1.0e-3, 1.0e-2]}}\n"))
    assert r.returncode == 1 and "every trial failed" in r.stderr and "batch_size" in r.stderr, r.stderr
