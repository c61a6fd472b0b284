"""Dynamic batching: requests that arrive together are decoded as one batch.

`submit(job)` puts the job on a bounded asyncio queue (`QueueFull` when it holds `max_queue`
jobs: the server answers 503) and waits for its result. One consumer task takes the first
waiting job, then keeps collecting until `max_batch_size` jobs or until `wait_ms` have passed
since the first, and hands the batch to `decode(jobs) -> results` in a single worker thread, so
the event loop keeps accepting requests while the model runs. Jobs that queued up during a
decode form the next batch at once. A job whose caller gave up (timeout, disconnect) before
its batch started is skipped; a result for a caller that is gone is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("babelora.serve")


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already."""


class Stopped(Exception):
    """The batcher was stopped (server shutting down) before the job was decoded."""


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int = 16
    wait_ms: float = 10.0  # after the first job of a batch, wait this long for more
    max_queue: int = 64  # jobs waiting (not counting the batch being decoded)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.wait_ms < 0:
            raise ValueError(f"wait_ms must be >= 0, got {self.wait_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")


@dataclass
class _Item:
    job: Any
    future: asyncio.Future


class Batcher:
    """See module docstring. `start()` and `stop()` run inside the event loop."""

    def __init__(self, decode: Callable[[Sequence[Any]], Sequence[Any]], settings: BatchSettings):
        self.decode = decode
        self.settings = settings
        self._queue: asyncio.Queue[_Item] | None = None
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: list[_Item] = []  # the batch being decoded

    @property
    def busy(self) -> bool:
        """Whether a batch is being decoded."""
        return bool(self._inflight)

    @property
    def depth(self) -> int:
        """Jobs waiting for a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.settings.max_queue)
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="babelora-decode")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop collecting; jobs still waiting fail with Stopped; the worker finishes its batch."""
        waiting = list(self._inflight)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(Stopped("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, job: Any, timeout: float | None = None) -> Any:
        """The result of decoding `job`; QueueFull at once when the queue is full,
        asyncio.TimeoutError after `timeout` seconds (queueing included)."""
        if self._queue is None or self._arrived is None:
            raise RuntimeError("Batcher.submit before start()")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(job, future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.settings.max_queue} requests are waiting") from None
        self._arrived.set()
        # on timeout or cancellation wait_for cancels `future`: the consumer then skips it
        return await asyncio.wait_for(future, timeout)

    async def _collect(self) -> list[_Item]:
        """The next batch: the first waiting job, then whatever arrives within the window."""
        assert self._queue is not None and self._arrived is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.settings.wait_ms / 1000.0
        limit = self.settings.max_batch_size
        while len(batch) < limit:
            self._arrived.clear()
            while len(batch) < limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            remaining = deadline - loop.time()
            if len(batch) >= limit or remaining <= 0:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [item for item in await self._collect() if not item.future.done()]
            if not batch:
                continue
            self._inflight = batch
            try:
                results = await loop.run_in_executor(
                    self._executor, self.decode, [item.job for item in batch]
                )
            except Exception as err:  # a failed batch fails its callers, not the server
                log.exception("decoding a batch of %d failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            finally:
                self._inflight = []
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)
