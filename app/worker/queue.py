"""A bounded queue in front of the engine: one request computes at a time on the device, at most `capacity` wait,
and one more is refused at once (the caller answers 503 with Retry-After); knows nothing of HTTP or torch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the worker is busy ({retry_after} s)")
        self.retry_after = retry_after


class BoundedQueue:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pending = 0  # running + waiting
        self._executor: ThreadPoolExecutor | None = None  # made on first use, again after a shutdown
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
            self._executor = None
