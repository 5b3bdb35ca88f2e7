"""Groups: seeds and k-fold cross-validation trained as groups of ordinary runs, listed, resumed after
a SIGKILL, evaluated, and compared group against group."""
import csv
import json
import signal
from collections import Counter

import pytest

from data.loading import fold_assignment
from tests.conftest import copy_project, make_image_folder

GROUP = ("seeds=0,1", "folds=3", "epochs=2")


def groups(project) -> list[str]:
    root = project.experiments / "groups"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def group_json(project, gid: str) -> dict:
    return json.loads((project.experiments / "groups" / gid / "group.json").read_text())


def train_group(project, *args: str, env: dict | None = None) -> str:
    before = set(groups(project))
    r = project.run("train.py", *args, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (gid,) = set(groups(project)) - before
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith(f"group {gid}: new") and lines[-1].startswith(f"group {gid}: finished"), (lines[0], lines[-1])
    return gid


def test_folds_are_stratified_cover_every_sample_once_and_follow_split_seed():
    labels = [i % 3 for i in range(100)] + [3] * 7
    folds = fold_assignment(labels, 5, 0)
    assert len(folds) == len(labels) and set(folds) == set(range(5))
    sizes = Counter(folds)
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for c in set(labels):  # each class spread evenly over the folds
        per = Counter(f for f, label in zip(folds, labels) if label == c)
        assert max(per.values()) - min(per.get(k, 0) for k in range(5)) <= 1
    assert fold_assignment(labels, 5, 0) == folds and fold_assignment(labels, 5, 1) != folds


@pytest.mark.parametrize("args, words", [
    (("folds=1",), "folds: 1 fold"), (("fold=2",), "fold: 2 needs folds"), (("folds=3", "fold=3"), "must be below folds=3"),
    (("seeds=0,0",), "repeats a seed"), (("seeds=0,1", "batch_size=5000"), "batch_size: 5000"), (("folds=3000",), "folds: 3000"),
    (("seeds=0,1", "resume=latest"), "drop resume"), (("seeds=0,1", "folds=3", "fold=1"), "drop fold=1"), (("seeds=a",), "seeds:"),
])
def test_bad_group_keys_exit_2_before_anything_is_written(project, args, words):
    r = project.run("train.py", *args)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert project.run_ids() == [] and groups(project) == []


@pytest.fixture(scope="module")
def ab(tmp_path_factory):
    """Group A (2 epochs) and B (4 epochs) of the same seeds and folds, and C: A again under another name."""
    project = copy_project(tmp_path_factory.mktemp("groups") / "proj")
    a = train_group(project, *GROUP)
    b = train_group(project, "seeds=0,1", "folds=3", "epochs=4")
    c = train_group(project, *GROUP, "name=again")
    return project, a, b, c


@pytest.mark.slow
def test_a_group_is_one_ordinary_run_per_seed_and_fold(ab):
    project, a, _, _ = ab
    g = group_json(project, a)
    assert g["status"] == "finished" and [(m["seed"], m["fold"]) for m in g["members"]] == [(s, f) for s in (0, 1) for f in range(3)]
    folds_csv = project.experiments / "groups" / a / "folds.csv"
    import hashlib
    assert hashlib.sha256(folds_csv.read_bytes()).hexdigest() == g["fold_sha256"]
    infos = [project.info(m["run"]) for m in g["members"]]
    assert all(i["status"] == "finished" and i["fold_sha256"] == g["fold_sha256"] for i in infos)
    assert [i["group"] for i in infos] == [{"id": a, "seed": m["seed"], "fold": m["fold"]} for m in g["members"]]
    assert sum(i["val_size"] for i in infos[:3]) == 1797 and all(i["train_size"] + i["val_size"] == 1797 for i in infos)
    assert len({i["val_hash"] for i in infos}) == 3, "each fold validates on its own held-out part"
    assert (project.experiments / "groups" / a / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_out_of_fold_predictions_cover_every_sample_once_per_seed(ab):
    project, a, _, _ = ab
    with open(project.experiments / "groups" / a / "oof_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(project.experiments / "groups" / a / "folds.csv", newline="") as f:
        fold_of = {r["index"]: r["fold"] for r in csv.DictReader(f)}
    for seed in ("0", "1"):
        mine = [r for r in rows if r["seed"] == seed]
        assert sorted(int(r["index"]) for r in mine) == list(range(1797))
        assert all(fold_of[r["index"]] == r["fold"] for r in mine), "predicted by the member that held it out"
    g = group_json(project, a)
    acc = sum(int(r["correct"]) for r in rows if r["seed"] == "0" and r["fold"] == "0") / sum(
        1 for r in rows if r["seed"] == "0" and r["fold"] == "0")
    assert acc == pytest.approx(g["members"][0]["metrics"]["val_acc"])


@pytest.mark.slow
def test_group_compare_finds_a_real_improvement_and_not_a_no_op(ab):
    project, a, b, c = ab
    r = project.run("inference.py", "--compare", a, b, "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    report = json.loads((project.experiments / "groups" / b / f"compare_{a}_vs_{b}.json").read_text())
    assert len(report["pairs"]) == 6 and report["test"] == "Wilcoxon signed-rank"
    lo, hi = report["bootstrap_ci95"]
    assert 0 < lo <= report["mean_difference"] <= hi and report["verdict"].startswith("B is better")
    assert report["mcnemar"]["pairs"] == 2 * 1797 and report["mcnemar"]["p_value"] < 0.05
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert lines[-2].startswith("B is better") and lines[-1].startswith("wrote "), "the report ends with its verdict"
    assert f"groups/{b}/compare_{a}_vs_{b}.md" in (project.experiments / "index.html").read_text()
    r = project.run("inference.py", "--compare", a, c, "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    report = json.loads((project.experiments / "groups" / c / f"compare_{a}_vs_{c}.json").read_text())
    lo, hi = report["bootstrap_ci95"]
    assert lo <= 0 <= hi and report["verdict"].startswith("No difference") and set(report["config_diff"]) == {"name"}


@pytest.mark.slow
def test_group_refusals_exit_2_and_write_nothing(ab):
    project, a, _, _ = ab
    other_seeds = train_group(project, "seeds=5", "folds=3", "epochs=1")  # 3 members each: what differs is found first
    other_folds = train_group(project, "seeds=0,1", "folds=2", "epochs=1")
    other_split = train_group(project, "folds=3", "epochs=1", "split_seed=1")
    run = project.train("epochs=1")
    before = project.snapshot()
    for args, words in (((a, other_seeds), "the seeds differ"), ((a, other_folds), "the folds differ"),
                        ((a, other_split), "fold assignments differ"), ((a, run), "is a group and"),
                        ((run, a), "is a group and"), ((a,), "compare it with another group"), ((run,), "with itself"),
                        ((a, a), "with itself")):
        r = project.run("inference.py", "--compare", *args, "inference_device=cpu")
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert project.snapshot() == before


@pytest.mark.slow
def test_list_and_index_fold_members_under_their_group(ab):
    project, a, _, _ = ab
    r = project.run("train.py", "--list")
    rows = [line for line in r.stdout.splitlines() if a in line]
    assert len(rows) == 1 and "6/6 members" in rows[0] and "±" in rows[0], r.stdout
    g = group_json(project, a)
    assert f"{g['aggregate']['val_acc']['mean']:.4f}" in rows[0]
    assert not any(m["run"] in r.stdout for m in g["members"]), "members are folded into the group's row"
    r = project.run("train.py", "--list", f"group={a}")
    table = [line for line in r.stdout.strip().splitlines() if not line.startswith("* the run checkpoints/ shows")]  # the marker's key
    assert all(m["run"] in r.stdout for m in g["members"]) and len(table) == 7
    r = project.run("train.py", f"resume={a}")
    assert r.returncode == 2 and "is a group" in r.stderr
    r = project.run("train.py", "--list", "group=2020-01-01_00-00-00")
    assert r.returncode == 2 and "no group" in r.stderr
    page = (project.experiments / "index.html").read_text()
    start = page.index(f'id="group-{a}"')
    assert all(page.index(f'data-group="{a}" id="run-{m["run"]}"') > start for m in g["members"])


@pytest.mark.slow
def test_inference_on_a_group_evaluates_every_member(ab):
    project, a, _, _ = ab
    colons = a[:10] + "_" + a[11:].replace("-", ":")  # the same id written with colons
    r = project.run("inference.py", f"resume={colons}", "inference_device=cpu")
    assert r.returncode == 0 and "evaluated 6 of 6 members" in r.stdout, r.stderr
    for m in group_json(project, a)["members"]:
        metrics = json.loads((project.experiments / m["run"] / "inference" / "val_metrics.json").read_text())
        assert metrics["val_acc"] == pytest.approx(m["metrics"]["val_acc"])


@pytest.mark.slow
def test_ensemble_predicts_with_the_mean_of_the_members(project, tmp_path):
    data = make_image_folder(tmp_path / "imgs", per_class=10)
    gid = train_group(project, "seeds=0,1,2", "epochs=2", "dataset=image_folder", f"data_dir={data}", "batch_size=8")
    r = project.run("inference.py", f"resume={gid}", "--input", str(data / "dog"), "inference_device=cpu")
    assert r.returncode == 0, r.stderr
    with open(project.experiments / "groups" / gid / "inference" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    members = [m["run"] for m in group_json(project, gid)["members"]]
    assert len(rows) == 10 and all(set(members) <= set(row) for row in rows)
    assert all(row["predicted"] in ("cat", "dog") and 0.5 <= float(row["confidence"]) <= 1 for row in rows)


@pytest.mark.slow
def test_a_killed_member_continues_exactly_and_only_missing_members_train(project):
    args = ("seeds=0,1", "folds=2", "epochs=2", "checkpoint_every_steps=5")  # batch_size auto: 32, 28 steps an epoch
    whole = train_group(project, *args)
    r = project.run("train.py", *args, env={"TEMPLATE_FAULT": "step:64"})  # member 2 (seed 0, fold 1), mid-epoch 1
    assert r.returncode == -signal.SIGKILL
    (killed,) = set(groups(project)) - {whole}
    first = group_json(project, killed)["members"]
    done_before = set(project.run_ids())
    r = project.run("train.py", *args)
    assert r.returncode == 0 and r.stdout.startswith(f"group {killed}: continuing"), r.stderr
    assert set(groups(project)) == {whole, killed}, "the same command continued the group"
    g = group_json(project, killed)
    new = set(project.run_ids()) - done_before
    assert len(new) == 3 and g["members"][0]["run"] == first[0]["run"], "the finished member was not trained again"
    tip = project.info(g["members"][1]["run"])
    assert tip["parent"]["id"] in done_before and tip["parent"]["step"] > 0, "continued from its state, mid-epoch"
    reference = {(m["seed"], m["fold"]): project.info(m["run"])["weights"]["sha256"] for m in group_json(project, whole)["members"]}
    assert {(m["seed"], m["fold"]): project.info(m["run"])["weights"]["sha256"] for m in g["members"]} == reference
    assert g["status"] == "finished" and all(project.status(r) != "running" for r in project.run_ids())
    from store.runs import read_metrics
    from utils.stats import interval95
    rows = [read_metrics(project.experiments / m["run"])[-1] for m in g["members"]]
    assert g["aggregate"]["val_acc"] == interval95([row["val_acc"] for row in rows])


@pytest.mark.slow
def test_ctrl_c_marks_the_group_interrupted_and_the_same_command_continues_it(project):
    import time
    proc = project.popen("train.py", "seeds=0,1", "epochs=15")
    deadline = time.time() + 120
    while time.time() < deadline and not any((project.experiments / r / "state.pt").exists() for r in project.run_ids()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    (gid,) = groups(project)
    g = group_json(project, gid)
    assert g["status"] == "interrupted", g["status"]
    (member,) = project.run_ids()
    assert project.info(member)["status"] == "interrupted" and project.info(member)["group"]["seed"] == 0
    # continuing the member by hand keeps it in its group, so the group does not train it again
    r = project.run("train.py", f"resume={member}", "epochs=15")
    assert r.returncode == 0, r.stderr[-2000:]
    (tip,) = set(project.run_ids()) - {member}
    assert project.info(tip)["group"] == project.info(member)["group"]
