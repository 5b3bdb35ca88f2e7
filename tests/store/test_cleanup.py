"""Runs you can find, name, clean up and look at: labels, name:<name>, --list filters/sort/json,
--delete / --restore / --prune-states, and what every remaining run can still do afterwards."""
import json
import signal
import subprocess
import sys

import pytest
from filelock import FileLock

import store.runs as rs
from store import cleanup, listing
from tasks import configs
from tests.conftest import copy_project
from tests.store.test_report import make_runs
from utils.errors import UsageError


def list_command(words, sort=None, as_json=False):
    return listing.list_command(words, sort, as_json, configs)


def test_a_running_run_is_not_deleted(store):
    (run_id, *_) = make_runs(store, 2)
    info = json.loads((store / run_id / "run.json").read_text()) | {"status": "running"}
    rs.write_json(store / run_id / "run.json", info)
    with FileLock(store / run_id / "lock"):
        with pytest.raises(UsageError, match=f"run {run_id} is running; stop it first"):
            cleanup.delete_runs([run_id])
    assert (store / run_id).is_dir()


def test_names_tags_and_notes(store, capsys):
    ids = make_runs(store, 6)  # names run0..run4, run0 again for the 6th
    assert rs.find_run("name:run0", "resume", lambda r: True, "")["id"] == ids[5]  # the newest with that name
    with pytest.raises(UsageError, match="no run named 'nope'.*names in use: run0, run1"):
        rs.find_run("name:nope", "resume", lambda r: True, "")
    with pytest.raises(UsageError, match="not a run id"):
        rs.find_run("name:../x", "resume", lambda r: True, "")
    before = {p: p.read_bytes() for p in (store / ids[2]).iterdir()}
    cleanup.add_labels("name:run2", tags=["keep", "keep", "best"])
    cleanup.add_labels(ids[2], note="lr too high")
    assert {p: p.read_bytes() for p in before} == before  # run.json, config, weights keep their bytes
    run = rs.read_run(store / ids[2])
    assert run["tags"] == ["keep", "best"] and run["notes"] == ["lr too high"]
    with pytest.raises(UsageError, match="'a b' is not a tag"):
        cleanup.add_labels(ids[2], tags=["a b"])
    capsys.readouterr()
    list_command(["tag=keep"], as_json=True)
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [ids[2]]


def test_list_filters_sort_and_errors(store, capsys):
    ids = make_runs(store, 8)
    list_command(["status=finished", "model=small_cnn", "tag=sweep"], sort="val_acc", as_json=True)
    rows = json.loads(capsys.readouterr().out)
    accs = [r["metrics"]["val_acc"] for r in rows]
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), key=lambda i: accs[[x["id"] for x in rows].index(i)])
    assert accs == sorted(accs) and {r["id"] for r in rows} == set(ids[1::2])  # best last
    list_command([f"parent={ids[2]}"])
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 and ids[3] in table[1] and "lr=0.004" in table[1]
    for words, message in ((["status=done"], "not one of"), (["colour=red"], "cannot filter by 'colour'"),
                           (["lr=fast"], "lr=fast: expected a number"), (["tag"], "is not a filter KEY=VALUE")):
        with pytest.raises(UsageError, match=message):
            listing.parse_filters(words, configs)
    with pytest.raises(UsageError, match="--sort: 'acc' is not a column"):
        list_command([], sort="acc")


def test_list_of_a_thousand_runs_never_imports_torch(tmp_path):
    project = copy_project(tmp_path / "proj")
    make_runs(project.experiments, 1000)
    code = ("import runpy, sys; code = runpy.run_path('train.py')['main'](['--list', 'tag=sweep', '--sort', 'val_acc', '--json']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
    r = subprocess.run([sys.executable, "-c", code], cwd=project.root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 500


# ---------------------------------------------------------------- end to end, on real runs
def sha(project, run_id):
    return project.info(run_id)["weights"]["sha256"]


def infer_acc(project, run_id):
    r = project.run("inference.py", f"resume={run_id}", "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    return json.loads((project.experiments / run_id / "inference" / "val_metrics.json").read_text())["val_acc"]


@pytest.mark.slow
def test_delete_restore_prune_leave_every_other_run_usable(project):
    """A store with finished, continued and killed runs: F1 -> F2 (continued, finished) -> K2 (killed before
    its first save: it needs F2's state.pt); U finished; K1 killed mid-epoch. R = F2 continued uninterrupted."""
    f1 = project.train("epochs=2", "name=base", "tags=baseline")
    f2 = project.train(f"resume='{f1[:10]}_{f1[11:].replace('-', ':')}'", "epochs=3")  # quoted, as YAML reads it
    r_ = project.train(f"resume={f2}", "epochs=4")
    u = project.train("epochs=2", "seed=1")
    assert project.run("train.py", "epochs=2", "seed=1", "checkpoint_every_steps=5",
                       env={"TEMPLATE_FAULT": "step:33"}).returncode == -signal.SIGKILL
    k1 = project.run_ids()[-1]
    assert project.run("train.py", f"resume={f2}", "epochs=4", env={"TEMPLATE_FAULT": "step:3"}).returncode == -signal.SIGKILL
    k2 = project.run_ids()[-1]
    assert project.info(f2)["name"] == "base" and project.info(k2)["tags"] == ["baseline"]  # inherited
    accs = {run_id: infer_acc(project, run_id) for run_id in (f1, f2, u)}

    before = project.snapshot()
    for args, message in (([f"--delete={f2}"], f"holds the state that {k2} would continue from"),
                          (["--delete", "2026-01-01_00-00-00"], "no run '2026-01-01_00-00-00'"),
                          (["--restore", f1], f"no run '{f1}' in experiments/.trash/"),
                          (["--delete", "../x"], "is not a run id"), (["--list", "status=ok"], "not one of"),
                          (["--prune-states", "epochs=3"], "takes no KEY=VALUE")):
        r = project.run("train.py", *args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    for args in (["--delete", f1, u, "--dry-run"], ["--prune-states", "--dry-run"]):
        assert project.run("train.py", *args).returncode == 0
    assert project.snapshot() == before  # refusals and dry runs change nothing

    r = project.run("train.py", "--delete", k2)  # the newest: checkpoints/ must stop showing it
    assert r.returncode == 0 and (project.experiments / ".trash" / k2).is_dir()
    assert json.loads((project.checkpoints / "run.json").read_text())["id"] == k1
    assert project.run("train.py", "--delete", f1, u).returncode == 0
    listed = [r["id"] for r in json.loads(project.run("train.py", "--list", "--json").stdout)]
    assert f1 not in listed and u not in listed and f2 in listed
    assert project.run("train.py", "--restore", f1, u, k2).returncode == 0
    assert json.loads((project.checkpoints / "run.json").read_text())["id"] == k2

    r = project.run("train.py", "--prune-states")
    assert r.returncode == 0 and f"kept: {f2} (needed by {k2})" in r.stdout, r.stdout
    freed = int(r.stdout.split("freed ")[1].split(" bytes")[0])
    assert freed > 0 and not (project.experiments / f1 / "state.pt").exists() and (project.experiments / f2 / "state.pt").exists()
    r = project.run("train.py", f"resume={f1}", "epochs=5")
    assert r.returncode == 2 and f"init_from={f1}" in r.stderr

    assert {run_id: infer_acc(project, run_id) for run_id in (f1, f2, u)} == accs  # inference as before
    assert sha(project, project.train(f"resume={k1}", "epochs=2")) == sha(project, u)  # continuation, bit-identical
    assert sha(project, project.train(f"resume={k2}", "epochs=4")) == sha(project, r_)
    assert "index.html" in {p.name for p in project.experiments.iterdir()}


def test_aliases_resolve_everywhere_and_guard_their_runs(store, capsys):
    """alias:NAME is a run spec like name:NAME; --list shows the aliases; --delete refuses an aliased run;
    a move appends to the history before aliases.json is replaced."""
    from store.aliases import alias_lock, move_alias, read_aliases, read_history

    ids = make_runs(store, 3)
    with pytest.raises(UsageError, match="no alias 'prod'; aliases: none yet"):
        rs.find_run("alias:prod", "resume", lambda r: True, "")
    with pytest.raises(UsageError, match="not a run id"):
        rs.find_run("alias:../x", "resume", lambda r: True, "")
    with alias_lock(store):
        move_alias("prod", ids[0], {"gate": "first"}, store)
        move_alias("prod", ids[1], {"gate": "forced", "note": "why"}, store)
    assert rs.find_run("alias:prod", "resume", lambda r: True, "")["id"] == ids[1]
    assert read_aliases(store)["prod"]["moves"] == 2
    assert [(h["from"], h["to"], h["gate"]) for h in read_history(store)] == [(None, ids[0], "first"), (ids[0], ids[1], "forced")]
    list_command([])
    assert f"alias prod -> {ids[1]}" in capsys.readouterr().out
    list_command([], as_json=True)
    assert {r["id"]: r["aliases"] for r in json.loads(capsys.readouterr().out)}[ids[1]] == ["prod"]
    with pytest.raises(UsageError, match=f"alias prod points at run {ids[1]}"):
        cleanup.delete_runs([ids[1]])
    assert (store / ids[1]).is_dir()
    (store / "aliases.json").write_text("{broken")
    with pytest.raises(UsageError, match="cannot be read"):
        rs.find_run("alias:prod", "resume", lambda r: True, "")
