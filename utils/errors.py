"""Exit statuses of the contract and the one place that turns exceptions into them; the wording of messages."""
import errno
import os
import signal
import sys
import traceback
from collections.abc import Callable


def count(n: int, noun: str) -> str:
    """'1 epoch', '3 epochs': messages say numbers the way people do."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def a_an(word: str) -> str:
    """'a model', 'an image': the article for a word."""
    return f"{'an' if str(word)[:1].lower() in 'aeiou' else 'a'} {word}"


class UsageError(Exception):
    """Bad arguments, config or run id, found before anything is written: exit 2."""


class RunFailure(Exception):
    """A failure while running: exit 1."""


class Interrupted(Exception):
    """Training stopped by a signal after saving its state; `code` is 130 or 143."""

    def __init__(self, code: int):
        super().__init__(f"interrupted (exit {code})")
        self.code = code


def run_main(main: Callable[[], int]) -> None:
    """Run `main` and exit with the contract's status; one line on stderr, no traceback
    unless TEMPLATE_DEBUG=1."""
    from utils.streams import guard_streams

    guard_streams()  # a closed stdout or stderr never fails the command (utils/streams.py)
    debug = os.environ.get("TEMPLATE_DEBUG", "") not in ("", "0")
    try:
        code = main()
    except UsageError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except Interrupted as e:
        code = e.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    except Exception as e:  # noqa: BLE001 - the one place that maps failures to exit 1
        if debug:
            traceback.print_exc()
        msg = str(e) if isinstance(e, RunFailure) else f"{type(e).__name__}: {e}"
        hint = "" if debug or isinstance(e, RunFailure) else " (TEMPLATE_DEBUG=1 shows the traceback)"
        print(f"error: {msg}{hint}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.exit(code)


def fault_point(name: str) -> None:
    """TEMPLATE_FAULT=<name>[:<n>[:enospc]] makes the process SIGKILL itself (or, with enospc,
    fail a write with 'No space left on device') the n-th time (default the first) it reaches
    the named point. The crash-safety tests use it; unset, it costs one dict lookup."""
    parts = _hit(name)
    if parts is None:
        return
    if len(parts) > 2 and parts[2] == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<fault point {name}>")
    os.kill(os.getpid(), signal.SIGKILL)


def fault_nan() -> bool:
    """TEMPLATE_FAULT=nan[:<n>]: True the n-th time a training loss is computed, which the Trainer
    then makes NaN (the NaN test of every task)."""
    return _hit("nan") is not None


def _hit(name: str):
    """The fault spec's parts when this is the n-th time `name` is reached, else None."""
    spec = os.environ.get("TEMPLATE_FAULT")
    if not spec or spec.split(":")[0] != name:
        return None
    parts = spec.split(":")
    _hits[name] = _hits.get(name, 0) + 1
    return parts if _hits[name] == int(parts[1] if len(parts) > 1 else 1) else None


_hits: dict = {}
