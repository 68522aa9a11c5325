"""A bounded queue in front of the engine, in two lanes: one request computes at a time on the device; short
requests (analyze, trace, DFA, ...) wait in a lane of `capacity` places and go first, long ones (steering, circuit
discovery) in a small lane of their own, so a flood of generation can neither fill the short lane nor make a short
request wait behind more than the one long request computing; a request that finds its lane full is refused at once
(the caller answers 503 with Retry-After). Generation runs in steps (one token each) that go back to the end of the
long lane after each token, so short requests that arrive meanwhile run between its tokens, and several steering
requests take turns. Also the executor that lets the engine compute on the process's main
thread while the server runs on another. Knows nothing of HTTP or torch."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import CancelledError, Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")
SHORT, LONG = 0, 1  # lanes, in the order their waiting calls run


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the worker is busy ({retry_after} s)")
        self.retry_after = retry_after


class Steps:
    """A computation in steps, as the executor holds it: a generator that yields between steps and returns the
    result; `abandoned` (its caller went away) stops it before its next step."""

    def __init__(self, steps: Generator[Any, None, Any]) -> None:
        self.steps, self.started, self.abandoned = steps, False, False

    def advance(self) -> tuple[bool, Any]:
        """One step: (True, the result) when it was the last."""
        try:
            next(self.steps)
        except StopIteration as done:
            return True, done.value
        return False, None


class MainThreadExecutor(Executor):
    """Runs the calls submitted to it, one at a time, on whichever thread calls `run_until`: in `saex worker` and
    `saex serve` that is the main thread, with the HTTP server on a thread of its own. torch's parallel CPU kernels
    run faster there than on a pool thread. Two workers side by side, 2 torch threads on 2 cores, requests back to
    back: a 64-token analysis of the demo model took 10.0 and 11.3 ms over HTTP against 11.4 and 12.1 ms (128
    tokens: 15.3 against 17.1). Requests that find the worker idle, where a small pass runs on one thread anyway
    (service.Threads), took the same time either way."""

    def __init__(self) -> None:
        self._calls: queue.PriorityQueue = queue.PriorityQueue()  # (lane, arrival, call): short lane first
        self._order = itertools.count()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self.submit_in(SHORT, fn, *args, **kwargs)

    def submit_in(self, lane: int, fn, /, *args, **kwargs) -> Future:
        """submit, in a lane: waiting calls of the short lane run before those of the long lane."""
        future: Future = Future()
        self._calls.put((lane, next(self._order), (future, fn, args, kwargs)))
        return future

    def submit_steps(self, lane: int, steps: Steps) -> Future:
        """Run `steps` one step per turn in `lane`: after each step it goes back behind the calls waiting there."""
        future: Future = Future()
        self._calls.put((lane, next(self._order), (future, steps, (), {})))
        return future

    def run_until(self, done: Callable[[], bool], poll_s: float = 0.2) -> None:
        """Run submitted calls as they come, until done() (asked at least every poll_s seconds) is true."""
        while not done():
            try:
                lane, _, (future, fn, args, kwargs) = self._calls.get(timeout=poll_s)
            except queue.Empty:
                continue
            if isinstance(fn, Steps):
                self._step(lane, future, fn)
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the awaiting request, as a pool thread would
                future.set_exception(exc)

    def _step(self, lane: int, future: Future, steps: Steps) -> None:
        if not steps.started:
            if not future.set_running_or_notify_cancel():
                return
            steps.started = True
        if steps.abandoned:
            steps.steps.close()
            future.set_exception(CancelledError())
            return
        try:
            finished, value = steps.advance()
        except BaseException as exc:  # handed to the awaiting request, as a pool thread would
            future.set_exception(exc)
            return
        if finished:
            future.set_result(value)
        else:  # back behind the calls waiting in its lane: the short lane's go first, other steps take turns
            self._calls.put((lane, next(self._order), (future, steps, (), {})))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancels the calls still waiting when cancel_futures (steps already begun end with CancelledError); the
        loop itself ends when run_until's done() says."""
        while cancel_futures:
            try:
                future = self._calls.get_nowait()[2][0]
            except queue.Empty:
                break
            if not future.cancel() and not future.done():
                future.set_exception(CancelledError())


class EngineThread(MainThreadExecutor):
    """A MainThreadExecutor that runs on a thread of its own (started on first use): the lanes of a worker whose
    engine does not compute on the main thread (the in-process worker of tests, say)."""

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run_until, args=(self._stop.is_set,), name="engine", daemon=True)
        self._thread.start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait, cancel_futures=cancel_futures)
        self._stop.set()


class BoundedQueue:
    def __init__(self, capacity: int, executor: Executor | None = None, long_capacity: int | None = None) -> None:
        """capacity: places of the short lane; long_capacity: of the long lane (default a quarter of capacity, at
        least 1). executor: where the engine's calls run; by default a thread of this queue's own (made on first
        use, again after a shutdown). Lanes order the calls where the executor has them (a MainThreadExecutor);
        any other executor runs them in arrival order."""
        self.capacity = capacity
        self.long_capacity = max(1, capacity // 4) if long_capacity is None else long_capacity
        self.pending = 0  # running + waiting, both lanes
        self.pending_in = [0, 0]  # per lane
        self._given = executor
        self._executor: Executor | None = executor
        self._mean_s = 0.05  # running mean of one request's compute time, for Retry-After

    def retry_after(self) -> int:
        return max(1, round(self.pending * self._mean_s + 0.5))

    async def run(self, fn: Callable[[], T], lane: int = SHORT) -> T:
        return await self._run(lane, fn, None)

    async def run_steps(self, steps: Generator[Any, None, T], lane: int = LONG) -> T:
        """Run a computation in steps (a generator that yields between steps and returns the result), one place in
        `lane` for all of them; each step waits behind the calls already waiting in that lane and the short lane."""
        return await self._run(lane, None, Steps(steps))

    async def _run(self, lane: int, fn: Callable[[], Any] | None, steps: Steps | None) -> Any:
        places = self.capacity if lane == SHORT else self.long_capacity
        if self.pending_in[lane] >= places + 1:
            raise QueueFull(self.retry_after())
        self.pending += 1
        self.pending_in[lane] += 1
        try:
            if self._executor is None:
                self._executor = EngineThread()
            t0 = time.perf_counter()
            if steps is not None:
                result = await self._steps(lane, steps)
            elif isinstance(self._executor, MainThreadExecutor):
                result = await asyncio.wrap_future(self._executor.submit_in(lane, fn))
            else:
                result = await asyncio.get_running_loop().run_in_executor(self._executor, fn)
            self._mean_s = 0.9 * self._mean_s + 0.1 * (time.perf_counter() - t0)
            return result
        finally:
            self.pending -= 1
            self.pending_in[lane] -= 1

    async def _steps(self, lane: int, steps: Steps) -> Any:
        try:
            if isinstance(self._executor, MainThreadExecutor):
                return await asyncio.wrap_future(self._executor.submit_steps(lane, steps))
            loop = asyncio.get_running_loop()
            while True:  # any other executor: one call per step
                finished, value = await loop.run_in_executor(self._executor, steps.advance)
                if finished:
                    return value
        except asyncio.CancelledError:
            steps.abandoned = True  # its caller went away: no more of its steps run
            raise

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._given
