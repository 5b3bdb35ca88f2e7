"""experiments/index.html: built from synthetic run folders, then opened in a real headless
Chromium driven over the DevTools protocol (on a pipe, no extra packages): rows render, no
console errors, and clicking a column header reorders the rows."""
import json
import os
import shutil
import subprocess
import time

import pytest

import store.runs as rs
from store.page import write_index

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def make_runs(experiments, n: int) -> list[str]:
    """n finished runs with 3 epochs of metrics each; run i's val_acc is a scrambled function of i,
    so start order and metric order differ. Every 4th run continues the one before it."""
    ids = []
    for i in range(n):
        run_id = f"2026-01-01_{i // 3600:02d}-{i // 60 % 60:02d}-{i % 60:02d}"
        folder = experiments / run_id
        folder.mkdir()
        acc = 0.5 + ((i * 37) % n) / (2 * n)
        rows = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_acc": acc * e / 3} for e in (1, 2, 3)]
        (folder / "metrics.csv").write_text("epoch,train_loss,val_loss,val_acc\n" +
                                            "".join(f"{r['epoch']},{r['train_loss']},{r['val_loss']},{r['val_acc']}\n" for r in rows))
        parent = {"id": ids[-1], "epoch": 3, "step": 30} if i % 4 == 3 else None
        info = {"id": run_id, "status": "finished", "start_utc": f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
                "end_utc": f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}.5+00:00", "model": "small_cnn",
                "epochs": 3, "epochs_done": 3, "parent": parent, "name": f"run{i % 5}", "tags": ["sweep"] if i % 2 else [],
                "notes": "<script>alert(1)</script> a note" if i == 0 else None, "changed": {"lr": 0.001 * (i + 1)},
                "config": {"monitor": "val_acc"}, "metrics": {"val_acc": acc, "val_loss": 0.7},
                "best": {"epoch": 3, "metrics": {"val_acc": acc}}, "weights": {"size": 3}}
        (folder / "model.safetensors").write_bytes(b"abc")
        rs.write_json(folder / "run.json", info)
        ids.append(run_id)
    (experiments / ids[1] / "inference").mkdir()
    (experiments / ids[1] / "inference" / f"compare_{ids[0]}_vs_{ids[1]}.md").write_text("# report\n")
    return ids


def test_index_lists_every_run_with_curves_lineage_and_reports(store):
    ids = make_runs(store, 12)
    page = write_index().read_text()
    assert page.count('<tr id="run-') == 12 and all(f'id="run-{i}"' in page for i in ids)
    assert "<polyline" in page and f"compare_{ids[0]}_vs_{ids[1]}.md" in page and "<h2>Lineage</h2>" in page
    assert f'<a href="#run-{ids[2]}">' in page  # run 3 continues run 2
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page  # user text is escaped
    assert "http://" not in page and "https://" not in page and "src=" not in page  # nothing from elsewhere


class Browser:
    """Chromium with --remote-debugging-pipe: DevTools commands as NUL-terminated JSON on fd 3, answers on fd 4."""

    def __init__(self, profile):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def fds():  # in the child: the pipe ends on fds 3 and 4, inheritable (os.pipe's may be 3 and 4 already)
            ends = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)
        self.proc = subprocess.Popen([CHROMIUM, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                                      "--no-first-run", f"--user-data-dir={profile}", "about:blank"],
                                     preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer, self.next_id, self.events = b"", 0, []

    def send(self, method: str, session: str = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def read(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            assert time.monotonic() < deadline, "no answer from chromium"
            chunk = os.read(self.from_chrome, 1 << 16)
            assert chunk, "chromium closed the pipe"
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method: str) -> dict:
        while True:
            found = next((e for e in self.events if e.get("method") == method), None)
            if found:
                return found
            self.events.append(self.read())

    def close(self):
        try:
            self.send("Browser.close")
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def errors(events: list[dict]) -> list:
    return [e for e in events if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium where it can)")
def test_index_in_a_real_browser_sorts_by_clicking_a_header(store, tmp_path):
    ids = make_runs(store, 300)  # a few hundred runs stay one page that renders at once
    index = write_index()
    browser = Browser(tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            browser.send(domain, session)
        browser.send("Page.navigate", session, url=index.as_uri())
        browser.wait_for("Page.loadEventFired")

        def evaluate(js: str):
            return browser.send("Runtime.evaluate", session, expression=js, returnByValue=True)["result"]["value"]
        order = "[...document.querySelectorAll('#runs tbody tr')].map(r => r.id.slice(4))"
        assert evaluate(order) == ids  # every run, oldest first
        box = evaluate("(() => { const th = [...document.querySelectorAll('#runs th')].find(t => t.textContent === 'final');"
                       "th.scrollIntoView(); const r = th.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):  # a real click, as a user's
            browser.send("Input.dispatchMouseEvent", session, type=kind, x=box[0], y=box[1], button="left", clickCount=1)
        finals = evaluate("[...document.querySelectorAll('#runs tbody tr')].map(r => parseFloat(r.cells[6].textContent))")
        assert evaluate(order) != ids and finals == sorted(finals) and len(finals) == 300
        for kind in ("mousePressed", "mouseReleased"):  # a second click: descending
            browser.send("Input.dispatchMouseEvent", session, type=kind, x=box[0], y=box[1], button="left", clickCount=1)
        finals = evaluate("[...document.querySelectorAll('#runs tbody tr')].map(r => parseFloat(r.cells[6].textContent))")
        assert finals == sorted(finals, reverse=True)
        evaluate("0")  # flush events that arrived while the page ran
        assert errors(browser.events) == [], errors(browser.events)
    finally:
        browser.close()
