"""Serving: a run behind the Open Inference Protocol (KServe V2, as Triton and MLServer speak it),
aliases moved only by a won A/B, shadow traffic, and a Triton model repository.

    app.py           the Starlette app: V2 routes, the file route, token, body limit, errors as 4xx
    batching.py      dynamic batching: requests within max_delay_ms share a forward pass, up to max_batch
    slot.py          the run being served, swapped when its alias moves (weights checked first)
    server.py        inference.py --serve: load, bind (loopback unless told), run uvicorn, SIGTERM drains
    shadow.py        --shadow RUN: a second run on every request, off the response path; --shadow-report LOG
    promote.py       --promote RUN --alias NAME: the A/B gate, the history (store/aliases.py keeps the files)
    triton.py        --export triton: config.pbtxt and 1/model.onnx
    predict_onnx.py  a torch-free predictor on a run's export (a script; imports nothing of the template)

Needs `pip install -r requirements-serve.txt` (Starlette, uvicorn) for --serve; the rest runs without it.
Plugs into the core through FEATURE (utils/features.py); nothing here is imported before it is used.
"""
from __future__ import annotations

from utils.features import Feature


def options(parser) -> None:
    group = parser.add_argument_group("serving (serve/)")
    group.add_argument("--serve", action="store_true", help="serve the run `resume` selects (an id or alias:NAME) over HTTP, "
                       "in the Open Inference Protocol (KServe V2)")
    group.add_argument("--host", default="127.0.0.1", help="--serve: the address to bind (default loopback; any other needs "
                       "--token-file)")
    group.add_argument("--port", type=int, default=8080, help="--serve: the port (0: any free one; default 8080)")
    group.add_argument("--model-name", default="model", help="--serve: the model's name in the V2 routes (default model)")
    group.add_argument("--token-file", metavar="FILE", help="--serve: a file holding a bearer token every request must carry")
    group.add_argument("--max-batch", type=int, default=32, help="--serve: samples per forward pass at most (1: no batching)")
    group.add_argument("--max-delay-ms", type=float, default=5.0, help="--serve: how long a request waits for others to "
                       "batch with (default 5)")
    group.add_argument("--max-body-mb", type=float, default=64.0, help="--serve: larger request bodies get 413 (default 64)")
    group.add_argument("--shadow", metavar="RUN", help="--serve: also run RUN (an id or alias:NAME) on every request, off the "
                       "response path, logging both outputs (JSON lines)")
    group.add_argument("--shadow-log", metavar="FILE", help="--serve --shadow: the log (default experiments/shadow/<time>.jsonl)")
    group.add_argument("--shadow-report", metavar="LOG", help="agreement, confusion and latency of a shadow log; with "
                       "--labels CSV (id,label) the paired A/B")
    group.add_argument("--labels", metavar="CSV", help="--shadow-report: the true labels of logged requests (columns id,label)")
    group.add_argument("--promote", metavar="RUN", help="point --alias at RUN if it is not worse than the alias's run in their "
                       "A/B (the paired interval's lower bound above -margin)")
    group.add_argument("--alias", metavar="NAME", help="--promote: the alias to move (e.g. production)")
    group.add_argument("--margin", type=float, default=0.01, help="--promote: how much worse RUN may be, in the A/B's "
                       "difference (accuracy, or Dice), before it is refused (default 0.01)")
    group.add_argument("--force", action="store_true", help="--promote: move the alias whatever the A/B says (needs --note)")
    group.add_argument("--note", metavar="TEXT", help="--promote --force: why, kept in experiments/aliases.history.jsonl")


def infer(args, shared) -> int | None:
    """inference.py --serve, --promote, --shadow-report and --export triton; None for the others."""
    if args.promote or args.alias or args.force or args.note:
        from serve.promote import promote_main
        return promote_main(args, shared)
    if args.shadow_report or args.labels:
        from serve.shadow import report_main
        return report_main(args)
    if args.serve or args.shadow:
        from serve.server import serve_main
        return serve_main(args, shared)
    if args.export and "triton" in args.export:
        from serve.triton import export_main
        return export_main(args, shared)
    return None


FEATURE = Feature("serve", infer_options=options, infer=infer, export_formats=("triton",))
