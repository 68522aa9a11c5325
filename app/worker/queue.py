"""A bounded queue in front of the engine: one request computes at a time on the device, at most `capacity` wait,
and one more is refused at once (the caller answers 503 with Retry-After); and the executor that lets the engine
compute on the process's main thread while the server runs on another. Knows nothing of HTTP or torch."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the worker is busy ({retry_after} s)")
        self.retry_after = retry_after


class MainThreadExecutor(Executor):
    """Runs the calls submitted to it, one at a time, on whichever thread calls `run_until`: in `saex worker` and
    `saex serve` that is the main thread, with the HTTP server on a thread of its own. torch's parallel CPU kernels
    run faster there than on a pool thread. Two workers side by side, 2 torch threads on 2 cores, requests back to
    back: a 64-token analysis of the demo model took 10.0 and 11.3 ms over HTTP against 11.4 and 12.1 ms (128
    tokens: 15.3 against 17.1). Requests that find the worker idle, where a small pass runs on one thread anyway
    (service.Threads), took the same time either way."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def run_until(self, done: Callable[[], bool], poll_s: float = 0.2) -> None:
        """Run submitted calls as they come, until done() (asked at least every poll_s seconds) is true."""
        while not done():
            try:
                future, fn, args, kwargs = self._calls.get(timeout=poll_s)
            except queue.Empty:
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the awaiting request, as a pool thread would
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancels the calls still waiting when cancel_futures; the loop itself ends when run_until's done() says."""
        while cancel_futures:
            try:
                self._calls.get_nowait()[0].cancel()
            except queue.Empty:
                break


class BoundedQueue:
    def __init__(self, capacity: int, executor: Executor | None = None) -> None:
        """executor: where the engine's calls run; by default a thread of this queue's own (made on first use,
        again after a shutdown)."""
        self.capacity = capacity
        self.pending = 0  # running + waiting
        self._given = executor
        self._executor: Executor | None = executor
        self._mean_s = 0.05  # running mean of one request's compute time, for Retry-After

    def retry_after(self) -> int:
        return max(1, round(self.pending * self._mean_s + 0.5))

    async def run(self, fn: Callable[[], T]) -> T:
        if self.pending >= self.capacity + 1:
            raise QueueFull(self.retry_after())
        self.pending += 1
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
            t0 = time.perf_counter()
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn)
            self._mean_s = 0.9 * self._mean_s + 0.1 * (time.perf_counter() - t0)
            return result
        finally:
            self.pending -= 1

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._given
