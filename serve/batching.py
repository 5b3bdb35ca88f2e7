"""Dynamic batching: the requests that arrive within max_delay_ms of the first share one forward pass,
up to max_batch samples (Triton's dynamic batcher, in one asyncio task).

A batch waits for more only while requests are arriving: being read or checked by app.py, which
counts them in `arriving`. When none is, the batch runs at once, so a lone client never pays
max_delay_ms; under load the requests that came in while the last batch ran fill the next one.

Each batch is computed by the run in the slot when the batch closes, in the server's one model thread
(torch and onnxruntime use the cores within it), and every request learns which run answered it. A
request whose samples alone exceed max_batch runs alone. max_batch=1 turns batching off.
"""
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from infer.served import ServedModel


@dataclass
class Answer:
    model: ServedModel            # the run that computed it
    outputs: dict                 # {name: (samples, ...)} for this request's samples only
    compute_ms: float             # the batch's forward pass
    batch: int                    # samples in that forward pass


@dataclass
class Pending:
    x: np.ndarray
    future: asyncio.Future


class Batcher:
    def __init__(self, slot, max_batch: int, max_delay_ms: float, pool: ThreadPoolExecutor):
        self.slot, self.max_batch, self.max_delay = slot, max(1, max_batch), max(0.0, max_delay_ms) / 1000
        self.pool = pool
        self.queue: asyncio.Queue = asyncio.Queue()
        self.carried = None  # the request that did not fit the last batch: it opens the next one
        self.arriving = 0    # requests app.py is reading or checking, which will be submitted soon

    async def submit(self, x: np.ndarray) -> Answer:
        """Queue one request's samples (B, ...) and wait for its share of a batch."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(x, future))
        return await future

    async def run(self) -> None:
        """Forever: collect a batch, compute it, hand each request its rows."""
        while True:
            batch = await self.collect()
            await self.compute(batch)

    async def collect(self) -> list[Pending]:
        first, self.carried = self.carried or await self.queue.get(), None
        batch, samples = [first], len(first.x)
        if not self.slot.current.batchable:
            return batch
        deadline = time.monotonic() + self.max_delay
        while samples < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0 or not self.arriving:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if samples + len(item.x) > self.max_batch or item.x.shape[1:] != first.x.shape[1:]:
                self.carried = item
                break
            batch.append(item)
            samples += len(item.x)
        return batch

    async def compute(self, batch: list[Pending]) -> None:
        model = self.slot.current
        x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
        t0 = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self.pool, model.infer, x)
        except Exception as e:  # noqa: BLE001 - each waiting request gets the failure, the batcher goes on
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        ms = 1000 * (time.perf_counter() - t0)
        start = 0
        for p in batch:
            n = len(p.x)
            if not p.future.done():  # a client that went away cancelled its future
                p.future.set_result(Answer(model, {k: v[start:start + n] for k, v in outputs.items()}, ms, len(x)))
            start += n
