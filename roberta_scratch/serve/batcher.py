"""Dynamic batching: one loop per process turns the inputs of many requests into model batches.

Requests put their inputs (features) on one queue. The loop takes the oldest input's route and,
in arrival order, as many inputs of that route as fit in `max_batch_tokens` padded tokens. It
waits for more only while the batch is not full and the oldest input has waited less than
`max_wait` (NVIDIA Triton's max_queue_delay). It sorts the batch by length and cuts it where
padding would cost more than another model call, runs the model on its own thread (the event loop keeps answering),
and routes each output back to its request. A request's inputs may land in several batches.

Back-pressure: `submit` refuses a request at once (QueueFull, with how long to wait) when its
inputs would take the queue past `max_queue`, so an overload is answered, never left to hang.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

# What one more model call costs, in tokens' worth of work (kernel launches, Python, the threads
# waking): `pieces` cuts a batch only where the padding it saves is worth more than this.
CALL_COST_TOKENS = 256


class QueueFull(Exception):
    """The queue cannot take a request's inputs now; retry_after is a hint in whole seconds."""

    def __init__(self, queued: int, limit: int, retry_after: int):
        super().__init__(f"the queue holds {queued} inputs of at most {limit}: retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class Item:
    """One input on its way through the model."""

    route: str
    feature: dict
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0  # waiting, until its batch started
    batch: int = -1  # which batch it ran in
    compute_s: float = 0.0  # that batch's model time

    @property
    def tokens(self) -> int:
        return len(self.feature["input_ids"])


def pieces(items: list[Item]) -> list[list[Item]]:
    """A batch sorted by length and cut into runs of similar length: the cuts that minimise the
    padded tokens plus CALL_COST_TOKENS per run (a shortest path over the cut points)."""
    items = sorted(items, key=lambda i: i.tokens)
    lengths = np.array([i.tokens for i in items], dtype=np.int64)
    n = len(items)
    cost = np.zeros(n + 1, dtype=np.int64)  # cost[j]: the best cost of the first j items
    cut = np.zeros(n + 1, dtype=np.int64)  # where the last run of that best starts
    for j in range(1, n + 1):  # a run items[i:j] costs CALL_COST_TOKENS + (j - i) * its longest
        options = cost[:j] + CALL_COST_TOKENS + (j - np.arange(j)) * lengths[j - 1]
        cut[j] = int(options.argmin())
        cost[j] = options[cut[j]]
    out, j = [], n
    while j > 0:
        out.append(items[cut[j] : j])
        j = cut[j]
    return out[::-1]


class Batcher:
    """run(route, features) -> one output per feature is the model step (Engine.run); it runs
    on one thread of its own, one batch at a time. `observe(items, compute_s)` hears of each
    batch (for metrics)."""

    def __init__(
        self,
        run: Callable[[str, list[dict]], list],
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue: int,
        observe: Callable[[list[Item], float], None] = lambda items, s: None,
    ):
        self.run, self.observe = run, observe
        self.max_batch_tokens, self.max_wait_s, self.max_queue = max_batch_tokens, max_wait_s, max_queue
        self.pending: deque[Item] = deque()
        self.running = 0  # inputs in the batch on the model's thread
        self.batches = 0
        self.rate = 0.0  # inputs per second, a moving average, for Retry-After
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        return len(self.pending)

    def check_room(self, n: int) -> None:
        """QueueFull unless n more inputs fit in the queue now."""
        if len(self.pending) + n > self.max_queue:
            raise QueueFull(len(self.pending), self.max_queue, self.retry_after(n))

    async def submit(self, route: str, features: list[dict]) -> list[Item]:
        """Queue one request's inputs and wait for all their outputs (item.future's results);
        QueueFull at once when they do not fit."""
        if not self.alive:
            raise RuntimeError("the batching loop is not running")
        self.check_room(len(features))
        loop = asyncio.get_running_loop()
        items = [Item(route, f, loop.create_future()) for f in features]
        self.pending.extend(items)
        self._wake.set()
        try:
            await asyncio.gather(*(i.future for i in items))
        except BaseException:  # the client went away or a batch failed: its other inputs are not run
            for i in items:
                if not i.future.done():
                    i.future.cancel()
            raise
        return items

    def retry_after(self, extra: int) -> int:
        """Seconds until the queue has room for `extra` more inputs, at the recent rate."""
        backlog = len(self.pending) + self.running + extra - self.max_queue
        return max(1, min(60, math.ceil(max(backlog, 1) / self.rate))) if self.rate > 0 else 1

    async def drain(self) -> None:
        """Run everything queued, then stop the loop (shutdown: no request accepted is dropped)."""
        while self.alive and (self.pending or self.running):
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    # ---- the loop ------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._run(batch)

    async def _next_batch(self) -> list[Item]:
        """Wait until the oldest input's route fills a batch or it has waited max_wait; take it."""
        while True:
            while self.pending and self.pending[0].future.done():  # its request was cancelled
                self.pending.popleft()
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, full = self._plan()
            wait = self.pending[0].queued_at + self.max_wait_s - time.perf_counter()
            if full or wait <= 0:
                taken = set(batch)
                self.pending = deque(i for i in self.pending if i not in taken and not i.future.done())
                return [i for i in batch if not i.future.done()]
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:  # noqa: UP041 (Python 3.10's is not the builtin)
                pass

    def _plan(self) -> tuple[list[Item], bool]:
        """Inputs of the oldest one's route, in arrival order, while the padded batch fits in
        max_batch_tokens (the first always goes, however long); full when one was left out."""
        route = self.pending[0].route
        batch, longest = [], 0
        for it in self.pending:
            if it.route != route or it.future.done():
                continue
            if batch and (len(batch) + 1) * max(longest, it.tokens) > self.max_batch_tokens:
                return batch, True
            batch.append(it)
            longest = max(longest, it.tokens)
        return batch, len(batch) * longest >= self.max_batch_tokens

    async def _run(self, batch: list[Item]) -> None:
        self.batches += 1
        self.running = len(batch)
        start = time.perf_counter()
        for it in batch:
            it.queue_s, it.batch = start - it.queued_at, self.batches
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._compute, batch)
        except Exception as e:  # a failed batch fails its requests, never the loop
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(e)
            return
        finally:
            self.running = 0
        elapsed = time.perf_counter() - start
        self.rate = len(batch) / elapsed if self.rate == 0 else 0.8 * self.rate + 0.2 * len(batch) / elapsed
        for it, out in zip(batch, outputs, strict=True):
            it.compute_s = elapsed
            if not it.future.done():
                it.future.set_result(out)
        self.observe(batch, elapsed)

    def _compute(self, batch: list[Item]) -> list:
        """On the model's thread: each piece through the model; outputs in the batch's order."""
        outputs = {}
        for piece in pieces(batch):
            for it, out in zip(piece, self.run(piece[0].route, [i.feature for i in piece]), strict=True):
                outputs[id(it)] = out
        return [outputs[id(it)] for it in batch]
