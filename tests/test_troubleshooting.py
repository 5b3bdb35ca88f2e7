"""docs/troubleshooting.md quotes the messages a user sees; each quoted message of an exit-2 row is
checked here against the real output of the command that provokes it (placeholders such as X, N,
FILE stand for any word, '...' for any text)."""
import re

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # train.py processes (each refuses before anything is written)

TABLE = (ROOT / "docs" / "troubleshooting.md").read_text().split("## Exit statuses")[0]
CASES = {  # the start of a row's first cell -> the train.py arguments that provoke it
    "misspelt key or model": ["epoch=3"],
    "malformed YAML": ["--config", "broken.yaml"],
    "`resume` or `init_from` that is a path": ["resume=../x"],
    "continuing a finished run without a larger `epochs`": ["resume={run}", "epochs=2"],
    "missing or empty `data_dir`": ["dataset=image_folder", "data_dir=no/such/folder"],
    "an unknown augmentation or monitor": ["augment=flipflop"],
    "`device: cuda` without a GPU": ["device=cuda"],
    "`batch_size` not divisible": ["batch_size=63", "grad_accum_steps=2"],
}


def quoted(row_start: str) -> str:
    """The first message the row quotes (its 'what you see' cell)."""
    row = next(line for line in TABLE.splitlines() if line.startswith(f"| {row_start}"))
    return re.findall(r"`([^`]+)`", row.split(" | ")[1])[0].replace("\\|", "|")  # a table escapes its pipes


def pattern(message: str) -> re.Pattern:
    parts = [re.escape(p.strip()) for p in message.split("...")]
    parts = [re.sub(r"\b[A-Z]{1,4}\b", r"\\S+", p) for p in parts]
    return re.compile(".*".join(p for p in parts if p))


def test_the_pattern_reads_placeholders():
    assert pattern("error: epochs: run X has done N epochs (finished); ... set epochs above N").search(
        "error: epochs: run 2026-01-01_00-00-00 has done 2 epochs (finished); to continue it set epochs above 2, e.g. epochs=7")
    assert not pattern("error: config: unknown key 'epoch'").search("error: config: unknown key 'epochz'")


@pytest.mark.parametrize("row", list(CASES))
def test_each_quoted_message_is_the_real_one(trained, row):
    project, run_id = trained
    if row.startswith("`device"):
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    (project.root / "broken.yaml").write_text("epochs: [3\n")
    r = project.run("train.py", *[a.format(run=run_id) for a in CASES[row]])
    message = quoted(row)
    assert r.returncode == 2, r.stderr
    assert pattern(message).search(r.stderr.strip()), f"docs quote {message!r}; the real message is {r.stderr.strip()!r}"
