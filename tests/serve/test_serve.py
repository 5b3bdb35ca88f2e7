"""inference.py --serve with tritonclient as the real client: health, metadata, infer and the file
route agree with inference.py --input; bad requests get their 4xx and the server goes on; SIGTERM
drains and exits 143. --promote moves an alias only on a won A/B; a server on alias:NAME swaps runs
under a client loop without a failed request, and refuses tampered weights; the shadow log and its
report; --export triton writes a config.pbtxt that parses into Triton's ModelConfig."""
import csv
import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
http = pytest.importorskip("tritonclient.http")

from conftest import copy_project  # noqa: E402

from tests.serve.server import Server, request  # noqa: E402

TOKEN = "s3cret-token-for-the-tests-0123"


def digit_images(folder: Path, n: int = 24) -> dict:
    """n of scikit-learn's digits as 8x8 PNG files; {file name: true class}."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True)
    labels = {}
    for i in range(n):
        name = f"d{i:03d}.png"
        Image.fromarray((digits.images[-1 - i] * 255 / 16).astype(np.uint8)).save(folder / name)
        labels[name] = str(digits.target[-1 - i])
    return labels


def predictions(project, run_id: str, path: Path, backend: str = "torch") -> dict:
    """inference.py --input: {file name: (class, confidence)}."""
    r = project.run("inference.py", "--input", str(path), f"resume={run_id}", "inference_device=cpu", f"backend={backend}")
    assert r.returncode == 0, r.stderr
    folder = project.experiments / run_id / "inference" / ("" if backend == "torch" else backend)
    rows = list(csv.DictReader(open(folder / "predictions.csv")))
    return {Path(row["path"]).name: (row["predicted"], float(row["confidence"])) for row in rows}


def preprocessed(files: list[Path], run: dict) -> np.ndarray:
    """The files as training read them (what a V2 client sends)."""
    from data.loading import info_from_run, load_image, normalise
    from data.volumes import load_volume

    info = info_from_run(run)
    if info.volumetric:
        return np.stack([normalise(load_volume(f, info.image_size, run["config"]["intensity"]), info).numpy() for f in files])
    return np.stack([load_image(f, info).numpy() for f in files])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A project with digit classifiers: weak (1 epoch at a tiny lr), good (2 epochs), other (2 epochs, seed 1), spare."""
    project = copy_project(tmp_path_factory.mktemp("serve") / "proj")
    ids = {"weak": project.train("epochs=1", "lr=1e-5"), "good": project.train("epochs=2"),
           "other": project.train("epochs=2", "seed=1"), "spare": project.train("epochs=1")}
    images = tmp_path_factory.mktemp("digits") / "png"
    return project, ids, images, digit_images(images)


def check_classifier(project, run_id: str, files: list[Path], server: Server, backend: str = "torch") -> None:
    """tritonclient's infer and the file route give inference.py --input's classes and confidences."""
    expected = predictions(project, run_id, files[0].parent, backend)
    client = http.InferenceServerClient(server.address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("model")
    meta = client.get_model_metadata("model")
    run = project.info(run_id)
    assert meta["versions"] == [run_id] and meta["parameters"]["weights_sha256"] == run["weights"]["sha256"]
    assert meta["parameters"]["class_names"] == run["class_names"] and meta["inputs"][0]["datatype"] == "FP32"
    x = preprocessed(files, run)
    assert meta["inputs"][0]["shape"] == [-1, *x.shape[1:]]
    for binary in (True, False):
        tensor = http.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        asked = [http.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "predicted")]
        result = client.infer("model", [tensor], outputs=asked, request_id="check")
        assert result.get_response()["model_version"] == run_id and result.get_response()["id"] == "check"
        probs, pred = result.as_numpy("probabilities"), result.as_numpy("predicted")
        for f, p, k in zip(files, probs, pred):
            assert run["class_names"][k] == expected[f.name][0]
            assert abs(p.max() - expected[f.name][1]) <= 1e-5 and abs(p.sum() - 1) <= 1e-5
    for f in files[:4]:
        status, headers, body = request(server.url(f"/v2/models/model/predict?filename={f.name}"), f.read_bytes(), method="POST")
        row = json.loads(body)
        assert status == 200 and headers["x-run-id"] == run_id and row["model_version"] == run_id
        assert (row["predicted"], row["path"]) == (expected[f.name][0], f.name) and abs(row["confidence"] - expected[f.name][1]) <= 1e-5


@pytest.mark.slow
def test_tritonclient_agrees_with_inference_input_and_sigterm_drains(runs):
    project, ids, images, _ = runs
    server = Server(project, f"resume={ids['good']}")
    try:
        check_classifier(project, ids["good"], sorted(images.iterdir())[:12], server)
        status, headers, _ = request(server.url("/v2/health/live"))
        assert status == 200 and headers["x-run-id"] == ids["good"]
        x = preprocessed(sorted(images.iterdir())[:1], project.info(ids["good"]))
        body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
        answers = []
        thread = threading.Thread(target=lambda: answers.append(request(server.url("/v2/models/model/infer"), body.encode())))
        thread.start()
    finally:
        code, err = server.stop()
    thread.join(60)
    assert code == 143, err
    assert answers and answers[0][0] == 200, answers  # the request in flight when SIGTERM came was answered


@pytest.mark.slow
def test_a_volume_classifier_is_served_as_inference_input_predicts(project, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("volume_helpers", Path(__file__).parents[1] / "data" / "test_volumes.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    root = helpers.make_volumes(tmp_path / "volumes", per_class=8)
    run_id = project.train("dataset=volume_folder", f"data_dir={root}", "volume_size=8", "val_fraction=0.25", "epochs=2")
    files = sorted(root.glob("*/*.nii.gz"))[:6]
    folder = tmp_path / "input"
    folder.mkdir()
    for i, f in enumerate(files):
        (folder / f"v{i}.nii.gz").write_bytes(f.read_bytes())
    server = Server(project, f"resume={run_id}")
    try:
        check_classifier(project, run_id, sorted(folder.iterdir()), server)
    finally:
        server.stop()


@pytest.mark.slow
def test_bad_requests_get_their_status_and_the_server_goes_on(runs, tmp_path):
    project, ids, images, _ = runs
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    r = project.run("inference.py", "--serve", "--host", "0.0.0.0", f"resume={ids['good']}")
    assert r.returncode == 2 and "--token-file" in r.stderr, r.stderr
    server = Server(project, "--host", "0.0.0.0", "--token-file", str(token), "--max-body-mb", "0.05", f"resume={ids['good']}")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    infer = server.url("/v2/models/model/infer")
    good = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    cases = [
        (request(server.url("/v2/health/live")), 401),
        (request(server.url("/v2/health/live"), headers={"Authorization": "Bearer wrong"}), 401),
        (request(server.url("/v2/models/other"), headers=auth), 404),
        (request(server.url("/v2/models/model/versions/2020-01-01_00-00-00/infer"), json.dumps({"inputs": [good]}).encode(), auth), 404),
        (request(infer, b"{not json", auth), 400),
        (request(infer, b"[1, 2]", auth), 400),
        (request(infer, json.dumps({"inputs": [{**good, "shape": [1, 1, 8, 9], "data": [0.0] * 72}]}).encode(), auth), 400),
        (request(infer, json.dumps({"inputs": [{**good, "datatype": "INT64"}]}).encode(), auth), 400),
        (request(infer, json.dumps({"inputs": [{**good, "name": "image"}]}).encode(), auth), 400),
        (request(infer, json.dumps({"inputs": [{**good, "data": [0.0] * 63}]}).encode(), auth), 400),
        (request(infer, json.dumps({"inputs": [{**good, "data": ["a"] * 64}]}).encode(), auth), 400),
        (request(infer, json.dumps({"inputs": [good], "outputs": [{"name": "secret"}]}).encode(), auth), 400),
        (request(infer, json.dumps({"inputs": [{**good, "parameters": 5}], "parameters": []}).encode(), auth), 400),
        (request(infer, json.dumps({"inputs": [good], "outputs": [{"name": "logits", "parameters": "x"}]}).encode(), auth), 400),
        (request(infer, json.dumps({"inputs": [good]}).encode(), {**auth, "Inference-Header-Content-Length": "999"}), 400),
        (request(infer, json.dumps({"inputs": [good]}).encode() + b" " * 60_000, auth), 413),
        (request(server.url("/v2/models/model/predict?filename=../../etc/passwd"), b"x", auth), 400),
        (request(server.url("/v2/models/model/predict?filename=a.png"), b"not a png", auth), 400),
        (request(server.url("/v2/models/model/predict?filename=a.exe"), b"x", auth), 400),
    ]
    try:
        for (status, headers, body), expected in cases:
            assert status == expected and "error" in json.loads(body), (status, expected, body)
            assert headers.get("x-run-id") == ids["good"] or headers.get("X-Run-Id") == ids["good"]
        status, _, body = request(infer, json.dumps({"inputs": [good]}).encode(), auth)
        assert status == 200 and json.loads(body)["model_version"] == ids["good"]
    finally:
        code, err = server.stop()
    assert code == 143 and "Traceback" not in err, err


def aliases_sha(project) -> str:
    return hashlib.sha256((project.experiments / "aliases.json").read_bytes()).hexdigest()


@pytest.mark.slow
def test_promotion_moves_an_alias_only_on_a_won_ab(runs):
    project, ids, _, _ = runs
    promote = lambda run, *more: project.run("inference.py", "--promote", run, "--alias", "prod", "inference_device=cpu", *more)  # noqa: E731
    assert promote(ids["weak"]).returncode == 0  # the first promotion needs no A/B
    r = promote(ids["good"])  # good wins its A/B against weak
    assert r.returncode == 0 and "passed the gate" in r.stdout, r.stdout + r.stderr
    before = aliases_sha(project)
    r = promote(ids["weak"])  # weak loses against good
    assert r.returncode == 1 and "the alias stays" in r.stderr and ids["good"] in r.stderr, r.stderr
    assert aliases_sha(project) == before
    r = promote(ids["weak"], "--force")
    assert r.returncode == 2 and "--note" in r.stderr and aliases_sha(project) == before
    assert promote(ids["weak"], "--force", "--note", "rollback drill").returncode == 0
    history = [json.loads(line) for line in (project.experiments / "aliases.history.jsonl").read_text().splitlines()]
    history = [h for h in history if h["alias"] == "prod"]
    assert [(h["from"], h["to"]) for h in history] == [(None, ids["weak"]), (ids["weak"], ids["good"]), (ids["good"], ids["weak"])]
    assert history[1]["report"].endswith(".json") and history[1]["ci95"][0] > -0.01 and history[1]["verdict"]
    assert history[2]["gate"] == "forced" and history[2]["note"] == "rollback drill" and all(h["user"] and h["host"] for h in history)
    racers = [project.popen("inference.py", "--promote", ids[k], "--alias", "race", "--force", "--note", k) for k in ("weak", "good")]
    assert [p.wait(120) for p in racers] == [0, 0]
    race = [json.loads(line) for line in (project.experiments / "aliases.history.jsonl").read_text().splitlines()]
    race = [h for h in race if h["alias"] == "race"]  # serialised: the second saw the first's move
    assert race[0]["from"] is None and race[1]["from"] == race[0]["to"] and {h["to"] for h in race} == {ids["weak"], ids["good"]}
    listed = project.run("inference.py", "--list").stdout
    assert f"alias prod -> {ids['weak']}" in listed, listed
    r = project.run("inference.py", "resume=alias:prod", "inference_device=cpu")
    assert r.returncode == 0 and ids["weak"] in r.stdout + r.stderr, r.stderr
    r = project.run("inference.py", "resume=alias:nope")
    assert r.returncode == 2 and "no alias 'nope'" in r.stderr, r.stderr


def client_loop(server: Server, x: np.ndarray, seen: list, failures: list, prefix: str = "r", n: int = 10**6,
                stop: threading.Event | None = None) -> None:
    """Single-sample requests (id <prefix><i>, sample i % len(x)) through tritonclient, in order, until
    n were sent or `stop` is set."""
    client = http.InferenceServerClient(server.address)
    for i in range(n):
        if stop is not None and stop.is_set():
            return
        tensor = http.InferInput("input", [1, *x.shape[1:]], "FP32")
        tensor.set_data_from_numpy(x[i % len(x)][None])
        try:
            result = client.infer("model", [tensor], request_id=f"{prefix}{i}")
            seen.append(result.get_response()["model_version"])
        except Exception as e:  # noqa: BLE001 - every failure is counted
            failures.append(repr(e))


@pytest.mark.slow
def test_hot_swap_drops_nothing_refuses_tampered_weights_and_shadows(runs, tmp_path):
    project, ids, images, labels = runs
    move = lambda run: project.run("inference.py", "--promote", run, "--alias", "live", "--force", "--note", "test")  # noqa: E731
    assert move(ids["good"]).returncode == 0
    log = tmp_path / "shadow.jsonl"
    server = Server(project, "resume=alias:live", "--shadow", ids["other"], "--shadow-log", str(log))
    files = sorted(images.iterdir())
    x = preprocessed(files, project.info(ids["good"]))
    seen, failures, stop = [], [], threading.Event()
    loop = threading.Thread(target=client_loop, args=(server, x, seen, failures), kwargs={"stop": stop})
    try:
        loop.start()  # requests before, during and after the promotion, until 200 came from the new run
        while len(seen) < 200 and loop.is_alive():
            time.sleep(0.05)
        assert move(ids["spare"]).returncode == 0
        deadline = time.monotonic() + 120
        while seen[-200:].count(ids["spare"]) < 200 and loop.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        loop.join(60)
        assert not failures and len(seen) >= 400, (len(seen), failures[:3])
        changes = [(a, b) for a, b in zip(seen, seen[1:]) if a != b]
        assert changes == [(ids["good"], ids["spare"])], changes
        tamper(project, ids["weak"])
        assert move(ids["weak"]).returncode == 0
        meta = refusal(server)
        assert meta["parameters"]["refused"]["run"] == ids["weak"] and "sha256" in meta["parameters"]["refused"]["reason"]
        assert meta["versions"] == [ids["spare"]]
        client_loop(server, x, seen, failures, "after", n=5)
        assert not failures and seen[-5:] == [ids["spare"]] * 5
    finally:
        code, err = server.stop()
    assert code == 143 and f"refused run {ids['weak']}" in err, err
    check_shadow_report(project, ids, log, files, labels, len(seen) - 5, tmp_path)


def tamper(project, run_id: str) -> None:
    path = project.experiments / run_id / "model.safetensors"
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def metadata(server: Server) -> dict:
    return json.loads(request(server.url("/v2/models/model"))[2])


def refusal(server: Server, seconds: float = 30) -> dict:
    """The metadata once it reports a refused swap."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        meta = metadata(server)
        if meta["parameters"]["refused"]:
            return meta
        time.sleep(0.2)
    pytest.fail(f"no refusal within {seconds} s: {meta}")


def check_shadow_report(project, ids: dict, log: Path, files: list[Path], labels: dict, n: int, tmp_path: Path) -> None:
    """The log holds every request (n in the loop, 5 after), unless shadowing fell behind; the report
    against labels for the loop's requests."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0]["shadow"]["run"] == ids["other"] and "skipped" in lines[-1]
    shadowed = [line for line in lines if "id" in line]
    assert len(shadowed) + lines[-1]["skipped"] == n + 5 and all(s["shadow"]["run"] == ids["other"] for s in shadowed)
    assert {s["primary"]["run"] for s in shadowed} == {ids["good"], ids["spare"]}
    truth = tmp_path / "labels.csv"
    truth.write_text("id,label\n" + "".join(f"r{i},{labels[files[i % len(files)].name]}\n" for i in range(n)))
    r = project.run("inference.py", "--shadow-report", str(log), "--labels", str(truth))
    assert r.returncode == 0 and "Agreement" in r.stdout, r.stderr
    report = json.loads(log.with_name("shadow.report.json").read_text())
    assert 0 <= report["agreement"] <= 1 and sum(map(sum, report["confusion"]["counts"])) == len(shadowed)
    ab = report["labelled"]
    assert ab["samples"] == len([s for s in shadowed if s["id"].startswith("r")])
    assert 0 <= ab["mcnemar"]["p_value"] <= 1 and len(ab["accuracy_diff_shadow_minus_primary"]["ci95"]) == 2
    assert report["latency"]["primary"]["p50_ms"] > 0 and report["latency"]["shadow"]["p99_ms"] > 0


@pytest.mark.slow
def test_export_triton_writes_a_config_that_parses_into_model_config(runs):
    pytest.importorskip("onnxruntime")
    model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    project, ids, images, _ = runs
    r = project.run("inference.py", "--export", "triton", f"resume={ids['good']}", "--max-batch", "16")
    assert r.returncode == 0, r.stderr
    repo = project.experiments / ids["good"] / "triton" / "model"
    config = text_format.Parse((repo / "config.pbtxt").read_text(), model_config.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert (config.input[0].name, list(config.input[0].dims)) == ("input", [1, 8, 8])
    assert (config.output[0].name, list(config.output[0].dims)) == ("logits", [10])
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert config.parameters["run_id"].string_value == ids["good"]
    export = json.loads((project.experiments / ids["good"] / "export" / "export.json").read_text())
    assert hashlib.sha256((repo / "1" / "model.onnx").read_bytes()).hexdigest() == export["files"]["model.onnx"]["sha256"]
    server = Server(project, f"resume={ids['good']}", "backend=onnxruntime")  # the same export, served by onnxruntime
    try:
        assert metadata(server)["platform"] == "onnxruntime_onnx"
        check_classifier(project, ids["good"], sorted(images.iterdir())[:8], server, "onnxruntime")
    finally:
        assert server.stop()[0] == 143


def test_a_swap_to_a_run_clients_could_not_use_is_refused():
    from infer.served import ServedModel, TensorSpec
    from serve.slot import incompatible

    def served(task="classify", side=8, names=("a", "b")) -> ServedModel:
        return ServedModel("id", "sha", task, [TensorSpec("input", "FP32", [-1, 1, side, side])],
                           [TensorSpec("logits", "FP32", [-1, len(names)])], True, None, None, (".png",),
                           {"class_names": list(names)})

    assert incompatible(served(), served()) is None
    assert "wgan_gp run" in incompatible(served("wgan_gp"), served())
    assert "tensors differ" in incompatible(served(side=16), served())
    assert "class names differ" in incompatible(served(names=("b", "a")), served())


def test_tasks_without_a_served_form_refuse_it():
    import torch

    from tasks import task_dict
    from utils.errors import UsageError

    with pytest.raises(UsageError, match="task wgan_gp cannot be served"):
        task_dict["wgan_gp"]().serving(None, {"id": "2026-01-01_00-00-00"}, torch.device("cpu"))


def test_serving_without_its_packages_is_exit_2_naming_the_install(monkeypatch):
    import importlib.util

    from serve.server import require_serving
    from utils.errors import UsageError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(UsageError, match="requirements-serve.txt"):
        require_serving()


def test_the_server_socket_says_tcp_so_answers_are_not_held_by_nagle():
    """asyncio sets TCP_NODELAY only on sockets made with proto IPPROTO_TCP; without it every answer
    waited ~40 ms for the client's delayed ACK (bench/serve.py saw 48 ms per request, 21 requests/s)."""
    import socket

    from serve.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname())
        conn, _ = sock.accept()
        import asyncio

        async def nodelay() -> int:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, conn)
            value = transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            transport.close()
            return value

        assert asyncio.run(nodelay()) != 0
        client.close()
    finally:
        sock.close()
