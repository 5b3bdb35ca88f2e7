"""What a command prints is a side output: it never fails what the command does.

run_main wraps stdout and stderr once per process. A write or flush to a stream whose reader
has gone (a closed pipe: `| head`, a `tee` or log shipper that died, a closed terminal pane) or
that was closed turns that stream into a sink for the rest of the process instead of raising:
its file descriptor is pointed at /dev/null, so that nothing, the interpreter's last flush
included, fails on it again. What was lost is kept, so that a run records it once in train.log
and run.json (store/runs.py) and still finishes with its weights.
"""
import os
import sys
from typing import Any, Optional


class GuardedStream:
    """A text stream whose failures are recorded (`lost`) instead of raised."""

    def __init__(self, stream: Any, name: str):
        self._stream, self._name = stream, name
        self.lost: Optional[str] = None  # why the stream was given up, once it was

    def write(self, text: str) -> int:
        if self.lost is None:
            try:
                return self._stream.write(text)
            except (OSError, ValueError) as e:
                self._give_up(e)
        return len(text)

    def flush(self) -> None:
        if self.lost is None:
            try:
                self._stream.flush()
            except (OSError, ValueError) as e:
                self._give_up(e)

    def isatty(self) -> bool:
        try:
            return self.lost is None and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, buffer, ...: the wrapped stream's
        return getattr(self._stream, name)

    def _give_up(self, error: Exception) -> None:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        self.lost = f"{self._name} could not be written ({reason}); what followed went to train.log only"
        try:  # the descriptor now writes to /dev/null: the buffered rest and the exit-time flush succeed
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def guard_streams() -> None:
    """Wrap sys.stdout and sys.stderr (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, GuardedStream):
            setattr(sys, name, GuardedStream(stream, name))


def lost_streams() -> list[str]:
    """Why each of stdout and stderr was given up, for those that were."""
    return [s.lost for s in (sys.stdout, sys.stderr) if isinstance(s, GuardedStream) and s.lost]
