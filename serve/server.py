"""inference.py --serve: the run `resume` selects (an id, or alias:NAME, followed as it moves) behind the
V2 routes of app.py, on uvicorn.

Why Starlette on uvicorn: the V2 protocol is a handful of routes, which Starlette states plainly with no
schema layer to keep in step (FastAPI adds pydantic); uvicorn is the ASGI server both run on, and it
already drains on SIGTERM: it stops accepting, lets the requests in flight finish, then stops. KServe's
ModelServer and MLServer bring their own process model, settings and dependencies (hundreds of MB)
for the same protocol; a user who outgrows this moves to them (or to Triton) with the same clients.

Safe by default: loopback unless --host says otherwise, and any other address needs --token-file.
"""
import asyncio
import contextlib
import importlib.util
import ipaddress
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from infer.onnx_backend import inference_device
from infer.runs import select_run
from infer.served import ServedModel
from serve.batching import Batcher
from serve.slot import Slot, watch
from tasks import configs, task_of
from utils.config import load_config
from utils.errors import Interrupted, UsageError

SERVE_INSTALL = "pip install -r requirements-serve.txt"


def require_serving() -> None:
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"--serve needs {' and '.join(missing)}, which are not installed; install them with {SERVE_INSTALL}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Optional[str], host: str) -> Optional[str]:
    """The bearer token; exit 2 when a non-loopback bind has none, or the file is unusable."""
    if path is None:
        if not is_loopback(host):
            raise UsageError(f"--host {host} is not loopback: give --token-file FILE (a secret every request must send as "
                             "Authorization: Bearer <token>), or bind 127.0.0.1")
        return None
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise UsageError(f"--token-file: cannot read {path} ({e.strerror})") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UsageError(f"--token-file: {path} must hold one token of at least 16 characters and no spaces")
    return token


def check_options(args) -> None:
    problems = [f"--{k.replace('_', '-')} must be at least {low}" for k, low in (("max_batch", 1), ("max_delay_ms", 0),
                                                                               ("max_body_mb", 0.001))
                if getattr(args, k) < low]
    if not 0 <= args.port <= 65535:
        problems.append("--port must be 0 to 65535")
    if not args.model_name or not all(c.isalnum() or c in "._-" for c in args.model_name):
        problems.append("--model-name must be letters, digits and ._-")
    if args.input or args.compare or args.export:
        problems.append("--serve takes no --input, --compare or --export")
    if problems:
        raise UsageError("; ".join(problems))


def loader(args, device_of):
    """run id -> that run served, with the config of its task (config.yaml and the command's KEY=VALUE)."""
    def load(spec: str, key: str = "resume") -> ServedModel:
        run = select_run(spec, key)
        task = task_of(run)
        cfg = load_config(args.config, args.overrides, configs, task.name)
        return task.serving(cfg, run, device_of(cfg))
    return load


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # every answer waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        return sock
    except OSError as e:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot bind ({e.strerror}); choose another port (--port 0: any free one)") from None


def serve_main(args, shared) -> int:
    """Load the run (and the shadow), bind, serve until SIGTERM or Ctrl-C (exit 143 or 130)."""
    if not args.serve:
        raise UsageError("--shadow goes with --serve: python inference.py --serve --shadow RUN")
    check_options(args)
    require_serving()
    token = read_token(args.token_file, args.host)
    spec = shared().resume or "latest"
    load = loader(args, inference_device)
    current = load(spec)
    alias = spec[len("alias:"):] if str(spec).startswith("alias:") else None
    slot = Slot(current, lambda run_id: load(run_id, f"alias:{alias}"), alias)
    shadow = start_shadow(args, load, current)
    sock = bind(args.host, args.port)
    app = make_app(args, slot, token, shadow)
    host, port = sock.getsockname()[:2]
    followed = f" (alias {alias}, followed as it moves)" if alias else ""
    print(f"serving run {current.run_id}{followed} as model '{args.model_name}' at http://{host}:{port}/v2/models/{args.model_name} "
          f"({current.task}, {current.parameters.get('backend')} on {current.parameters.get('device')}, batching "
          f"{'off' if args.max_batch == 1 or not current.batchable else f'up to {args.max_batch} within {args.max_delay_ms:g} ms'})",
          flush=True)
    return run_server(app, sock)


def start_shadow(args, load, current: ServedModel):
    if not args.shadow:
        return None
    from serve.shadow import Shadow, default_log

    theirs = load(args.shadow, "--shadow")
    if theirs.task != current.task or [o.name for o in theirs.outputs] != [o.name for o in current.outputs]:
        raise UsageError(f"--shadow: run {theirs.run_id} ({theirs.task}) does not answer as run {current.run_id} ({current.task}); "
                         "shadow a run of the same task")
    log = Path(args.shadow_log).expanduser() if args.shadow_log else default_log()
    print(f"shadow: run {theirs.run_id} sees every request; both answers go to {log}", flush=True)
    return Shadow(theirs, current, log)


def make_app(args, slot: Slot, token: Optional[str], shadow):
    from serve.app import Service, build_app

    pool = ThreadPoolExecutor(1, thread_name_prefix="model")
    batcher = Batcher(slot, args.max_batch, args.max_delay_ms, pool)
    service = Service(slot, batcher, args.model_name, int(args.max_body_mb * 2**20), token, shadow, pool)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        tasks = [asyncio.create_task(batcher.run())]
        if slot.alias:
            tasks.append(asyncio.create_task(watch(slot, ThreadPoolExecutor(1, thread_name_prefix="loader"))))
        yield
        for t in tasks:
            t.cancel()
        if shadow is not None:
            shadow.close()

    return build_app(service, lifespan)


def run_server(app, sock: socket.socket) -> int:
    import uvicorn

    def stopped(signum, frame):  # uvicorn drained the requests in flight, then raised the signal it caught again
        raise Interrupted(143)

    signal.signal(signal.SIGTERM, stopped)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=60, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    print("serve: stopped", file=sys.stderr)
    return 0
