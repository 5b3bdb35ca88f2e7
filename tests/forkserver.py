"""A warm start for the tests' train.py and inference.py processes.

Starting Python and importing torch takes about 4 s on 2 cores, longer than most of the tests'
tiny runs. This helper imports the third-party libraries once (never the project: each child
imports the project copy under test, as a fresh process would), then forks one child per request.
Each child is a real process: its own cwd, argv, environment, stdout and stderr files and exit
status (negative: killed by that signal), so the tests' assertions are unchanged. conftest.py
sends requests as JSON lines on stdin and reads one JSON line back per request.

Requests that a fork cannot honour go to a fresh interpreter instead (conftest.py decides):
thread counts set through the environment (OpenMP reads them when it is loaded) and checks that
torch is not imported.
"""
import json
import os
import sys


def preload() -> None:
    import numpy  # noqa: F401
    import safetensors.torch  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401
    import yaml  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


def child(request: dict) -> None:
    """In the forked child: become `python script args...` (or `python -c code args...`) in cwd, and
    end as the interpreter would: exit handlers, non-daemon threads joined, streams flushed."""
    import atexit
    import threading

    os.setsid()  # its own process group: a timeout kills it and whatever it started
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((0, os.devnull), (1, request["stdout"]), (2, request["stderr"])):
        f = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin, sys.stdout, sys.stderr = (open(fd, mode, closefd=False) for fd, mode in ((0, "r"), (1, "w"), (2, "w")))  # noqa: SIM115
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    script, args = request["argv"][0], request["argv"][1:]
    sys.path[0] = request["cwd"]
    code = 0
    try:
        if script == "-c":
            sys.argv = ["-c", *args[1:]]
            exec(compile(args[0], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            import runpy
            sys.argv = [script, *args]
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - as the interpreter does: the traceback, exit 1
        import traceback
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - a closed stream at exit: nothing more to say
        pass
    os._exit(code)


def main() -> None:
    preload()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                child(request)
            finally:
                os._exit(1)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
