"""Dynamic batching on its own (no model): who is batched with whom, the wait window, the
bounded queue, timeouts and failures."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from babelora.serve.batcher import Batcher, BatchSettings, QueueFull, Stopped


class Recorder:
    """decode(jobs) -> ["<job>!"]; remembers each batch; can be held until released."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_on = fail_on

    def __call__(self, jobs):
        self.batches.append(list(jobs))
        self.release.wait(30)
        if self.fail_on in jobs:
            raise RuntimeError("model exploded")
        return [f"{job}!" for job in jobs]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_jobs_arriving_within_the_window_are_one_batch_and_get_their_own_results():
    async def main():
        decode = Recorder()
        batcher = Batcher(decode, BatchSettings(max_batch_size=8, wait_ms=200))
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(f"j{i}") for i in range(5)))
        await batcher.stop()
        return decode.batches, results

    batches, results = run(main())
    assert batches == [["j0", "j1", "j2", "j3", "j4"]]
    assert results == ["j0!", "j1!", "j2!", "j3!", "j4!"]


def test_max_batch_size_splits_and_the_window_closes_early_when_full():
    async def main():
        decode = Recorder()
        batcher = Batcher(decode, BatchSettings(max_batch_size=2, wait_ms=10_000))
        await batcher.start()
        start = time.monotonic()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(4)))
        took = time.monotonic() - start
        await batcher.stop()
        return decode.batches, results, took

    batches, results, took = run(main())
    assert batches == [[0, 1], [2, 3]] and results == ["0!", "1!", "2!", "3!"]
    assert took < 5  # full batches do not wait out the 10 s window


def test_jobs_that_queue_during_a_decode_form_the_next_batch():
    async def main():
        decode = Recorder()
        decode.release.clear()
        batcher = Batcher(decode, BatchSettings(max_batch_size=8, wait_ms=0))
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit("a"))
        while not batcher.busy:
            await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(batcher.submit(x)) for x in "bcd"]
        await asyncio.sleep(0.05)
        decode.release.set()
        out = [await first] + [await r for r in rest]
        await batcher.stop()
        return decode.batches, out

    batches, out = run(main())
    assert batches == [["a"], ["b", "c", "d"]] and out == ["a!", "b!", "c!", "d!"]


def test_a_full_queue_refuses_at_once_and_a_timed_out_job_is_skipped():
    async def main():
        decode = Recorder()
        decode.release.clear()
        batcher = Batcher(decode, BatchSettings(max_batch_size=1, wait_ms=0, max_queue=1))
        await batcher.start()
        busy = asyncio.ensure_future(batcher.submit("busy"))
        while not batcher.busy:
            await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(batcher.submit("late", timeout=0.2))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await batcher.submit("one too many")
        with pytest.raises(asyncio.TimeoutError):
            await waiting
        decode.release.set()
        assert await busy == "busy!"
        assert await batcher.submit("next") == "next!"
        await batcher.stop()
        return decode.batches

    assert run(main()) == [["busy"], ["next"]]  # "late" gave up while queued: never decoded


def test_a_failed_batch_fails_its_callers_only():
    async def main():
        batcher = Batcher(Recorder(fail_on="bad"), BatchSettings(max_batch_size=4, wait_ms=100))
        await batcher.start()
        outcomes = await asyncio.gather(
            batcher.submit("bad"), batcher.submit("x"), return_exceptions=True
        )
        after = await batcher.submit("y")
        await batcher.stop()
        return outcomes, after

    outcomes, after = run(main())
    assert all(isinstance(o, RuntimeError) for o in outcomes) and after == "y!"


def test_stop_fails_waiting_jobs_instead_of_leaving_them_hanging():
    async def main():
        decode = Recorder()
        decode.release.clear()
        batcher = Batcher(decode, BatchSettings(max_batch_size=1, wait_ms=0))
        await batcher.start()
        jobs = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        while not batcher.busy:
            await asyncio.sleep(0.01)
        threading.Timer(0.2, decode.release.set).start()
        await batcher.stop()
        return await asyncio.gather(*jobs, return_exceptions=True)

    assert all(isinstance(o, Stopped) for o in run(main()))


def test_settings_are_checked():
    for bad in ({"max_batch_size": 0}, {"wait_ms": -1}, {"max_queue": 0}):
        with pytest.raises(ValueError):
            BatchSettings(**bad)
