"""The run store, in process: ids, durable writes, the checkpoints/ view, the table."""
import json
import os

import pytest

import store.runs as rs
from utils.errors import UsageError


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(rs, "EXPERIMENTS", tmp_path / "experiments")
    monkeypatch.setattr(rs, "CHECKPOINTS", tmp_path / "checkpoints")
    rs.EXPERIMENTS.mkdir()
    return tmp_path


@pytest.mark.parametrize("text, expected", [
    ("2026-11-29_14-03-27", "2026-11-29_14-03-27"),
    ("2026-11-29_14:03:27", "2026-11-29_14-03-27"),
    ("2026-11-29 14:03:27", "2026-11-29_14-03-27"),
    ("2026-11-29_14-03-27_2", "2026-11-29_14-03-27_2"),
    ("latest", "latest"),
])
def test_run_id_forms(store, text, expected):
    assert rs.normalize_run_id(text) == expected


@pytest.mark.parametrize("text", ["..", "../2026-11-29_14-03-27", "/etc/passwd", "2026-11-29", "2026-11-29_14-03-27/..", "latest2", ""])
def test_anything_else_is_refused(store, text):
    with pytest.raises(UsageError, match="is not a run id"):
        rs.normalize_run_id(text)


def test_ids_in_the_same_second_get_suffixes(store):
    ids = [rs.allocate_run_dir(rs.EXPERIMENTS)[0] for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(i.startswith(ids[0]) for i in ids) or len({i[:19] for i in ids}) > 1
    assert sorted(p.name for p in rs.EXPERIMENTS.iterdir() if p.is_dir()) == sorted(ids)


def test_atomic_write_keeps_the_old_file_on_failure(store):
    path = store / "f.txt"
    rs.write_text(path, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        rs.atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in store.iterdir() if p.is_file()] == ["f.txt"]


def test_state_file_loads_safely_and_skips_only_the_crc(store):
    """checkpoint.write_state drops the zip CRC32s (torch.load never reads them), leaves torch's own
    setting as it was, and writes through a temporary file; read_state loads it safely."""
    import zipfile

    import torch

    from train.checkpoint import read_state, write_state

    state = {"w": torch.arange(1000.0), "step": 3, "history": [{"epoch": 1, "val_acc": 0.5}]}
    write_state(store, state)
    loaded = read_state(store / "state.pt")
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3 and loaded["history"] == state["history"]
    assert torch.serialization.get_crc32_options() is True
    with zipfile.ZipFile(store / "state.pt") as z:
        assert z.testzip() is not None  # a CRC check by a zip tool fails: no CRC32 was computed
    assert [p.name for p in store.iterdir() if p.is_file()] == ["state.pt"]


def test_atomic_write_never_writes_into_a_linked_file(store):
    a, b = store / "a.txt", store / "b.txt"
    rs.write_text(a, "first")
    os.link(a, b)
    rs.write_text(a, "second")
    assert b.read_text() == "first" and a.read_text() == "second"


def make_run(run_id: str, start: str, status: str = "running") -> os.PathLike:
    folder = rs.EXPERIMENTS / run_id
    folder.mkdir()
    rs.write_text(folder / "config.yaml", f"# run {run_id}\n")
    rs.write_json(folder / "run.json", {"id": run_id, "status": status, "start_utc": start})
    return folder


def test_an_earlier_run_never_replaces_the_view(store):
    old = make_run("2026-01-01_00-00-00", "2026-01-01T00:00:00")
    new = make_run("2026-01-01_00-00-05", "2026-01-01T00:00:05")
    assert rs.update_view(new, "2026-01-01T00:00:05", ("config.yaml", "run.json"))
    (old / "model.safetensors").write_bytes(b"w")
    assert not rs.update_view(old, "2026-01-01T00:00:00", rs.VIEW_FILES)
    assert json.loads((rs.CHECKPOINTS / "run.json").read_text())["id"] == new.name
    assert not (rs.CHECKPOINTS / "model.safetensors").exists()
    assert os.path.samefile(rs.CHECKPOINTS / "config.yaml", new / "config.yaml")
    assert not list(rs.CHECKPOINTS.glob(".*.tmp"))


def test_list_shows_killed_and_damaged(store):
    make_run("2026-01-01_00-00-00", "2026-01-01T00:00:00", "running")  # no process holds its lock
    done = make_run("2026-01-01_00-00-05", "2026-01-01T00:00:05", "finished")
    (done / "model.safetensors").write_bytes(b"abc")
    rs.write_json(done / "run.json", {"id": done.name, "status": "finished", "start_utc": "2026-01-01T00:00:05",
                                      "weights": {"size": 4}})
    assert [r["status"] for r in rs.list_runs()] == ["killed", "damaged"]
    from store.listing import format_table
    table = format_table(rs.list_runs())
    assert "killed" in table and "damaged" in table
