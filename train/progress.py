"""Progress within an epoch: tqdm's bar in a terminal; where stdout is a file or a pipe (nohup, CI,
a cluster job), a plain line at most every 30 s (TEMPLATE_PROGRESS_SECONDS), so a long epoch is
never silent. Neither goes to train.log."""
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

from tqdm import tqdm


class PlainProgress:
    """tqdm's update/close for logs: 'epoch 3/10: step 120/469 (26%), 4.1 steps/s, 1m25s left'."""
    disable = True  # no loss postfix: a line says steps, rate and time left

    def __init__(self, total: int, initial: int, desc: str):
        self.total, self.n, self.start, self.desc = total, initial, initial, desc
        self.every = float(os.environ.get("TEMPLATE_PROGRESS_SECONDS", "30"))
        self.t0 = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last < self.every or self.n >= self.total:
            return
        self.last = now
        rate = (self.n - self.start) / max(now - self.t0, 1e-9)
        left = int((self.total - self.n) / rate) if rate > 0 else 0
        print(f"{self.desc}: step {self.n}/{self.total} ({100 * self.n // self.total}%), {rate:.2f} steps/s, "
              f"{left // 60}m{left % 60:02d}s left in the epoch", flush=True)

    def close(self) -> None:
        pass


def progress(total: int, initial: int, desc: str, show: bool):
    """The bar for a terminal, plain lines for a log, or nothing (show false: progress off, or not rank 0)."""
    if show and not sys.stdout.isatty():
        return PlainProgress(total, initial, desc)
    return tqdm(total=total, initial=initial, leave=False, disable=not show, desc=desc, dynamic_ncols=True)


@contextlib.contextmanager
def heartbeat(what: str) -> Iterator[None]:
    """Where stdout is not a terminal, a line every 30 s (TEMPLATE_PROGRESS_SECONDS) while `what` runs
    a long step that counts no steps of its own (inference.py: measuring a GAN, an A/B report)."""
    if sys.stdout.isatty():
        yield
        return
    every, stop, start = max(0.05, float(os.environ.get("TEMPLATE_PROGRESS_SECONDS", "30"))), threading.Event(), time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            print(f"{what}: still working, {int(time.monotonic() - start)} s so far", flush=True)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
