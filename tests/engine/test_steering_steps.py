"""Steering one token at a time (issue 17, finding 1): generate_steps yields between tokens and returns what generate
returns; other work on the same model between two steps changes nothing (no edit hook stays on the model between
steps); the worker's queue runs short calls between a generation's steps, and steering requests take turns."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from app.engine.steering import Intervention, generate, generate_steps, run_steps
from app.worker.queue import LONG, SHORT, BoundedQueue, EngineThread

PROMPT = "The quick brown fox"
EDITS = [Intervention(0, 3, "clamp", 6.0), Intervention(1, 7, "add", 4.0, heads=(1,))]


@pytest.fixture(scope="module")
def engine(tiny_engines):
    return tiny_engines["standard"]


def _runs(out) -> list:
    return [(g.token_ids, g.logprobs, g.top) for g in out]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_steps_give_what_generate_gives(engine, temperature):
    ids = engine.encode_text(PROMPT)
    args = (engine.model, ids, 10, temperature, 5, 3, engine.saes, EDITS)
    steps = generate_steps(*args)
    yields = 0
    while True:
        try:
            next(steps)
            yields += 1
        except StopIteration as done:
            out = done.value
            break
    assert yields == 9  # between the 10 tokens
    assert _runs(out) == _runs(generate(*args)) == _runs(run_steps(generate_steps(*args)))


def test_other_work_between_steps_changes_nothing(engine):
    alone = engine.steer(PROMPT, EDITS, max_new_tokens=8, temperature=1.0, seed=2, top_logprobs=3)
    plain = engine.analyze("The lazy dog", None, 5, False)
    steps = engine.steer_steps(PROMPT, EDITS, max_new_tokens=8, temperature=1.0, seed=2, top_logprobs=3)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            interleaved = done.value
            break
        assert not any(hp.fwd_hooks for hp in engine.model.hook_dict.values())  # the edits are off the model
        assert engine.analyze("The lazy dog", None, 5, False) == plain  # and others see the plain model
        engine.steer(PROMPT, [Intervention(0, 5, "ablate")], max_new_tokens=2)  # another steer, whole
    assert interleaved == alone


def test_the_queue_runs_short_calls_between_steps():
    order: list[str] = []
    started = threading.Event()

    def generation(name: str, n: int):
        for i in range(n):
            order.append(f"{name}{i}")
            started.set()
            time.sleep(0.05)  # a token's forward pass
            if i < n - 1:
                yield
        return name

    def short(name: str):
        order.append(name)
        return name

    async def main():
        queue = BoundedQueue(4, EngineThread(), long_capacity=2)
        hold = threading.Event()
        blocker = asyncio.ensure_future(queue.run(lambda: hold.wait(5), SHORT))  # the engine busy while we queue
        await asyncio.sleep(0.05)
        a = asyncio.ensure_future(queue.run_steps(generation("a", 3), LONG))
        b = asyncio.ensure_future(queue.run_steps(generation("b", 3), LONG))
        await asyncio.sleep(0.05)
        hold.set()
        await asyncio.to_thread(started.wait, 5)
        s = asyncio.ensure_future(queue.run(lambda: short("s"), SHORT))
        results = await asyncio.gather(a, b, s, blocker)
        queue.shutdown()
        return results

    assert asyncio.run(main())[:3] == ["a", "b", "s"]
    assert order.index("s") < order.index("a2") and order.index("s") < order.index("b2")  # s ran between tokens
    assert [o for o in order if o != "s"] == ["a0", "b0", "a1", "b1", "a2", "b2"]  # steering requests take turns


def test_a_step_that_fails_fails_its_request_only():
    def broken():
        yield
        raise ValueError("boom")

    async def main():
        queue = BoundedQueue(4, EngineThread())
        with pytest.raises(ValueError, match="boom"):
            await queue.run_steps(broken(), LONG)
        ok = await queue.run(lambda: 7, SHORT)
        queue.shutdown()
        return ok

    assert asyncio.run(main()) == 7


def test_no_grad_state_leaks_from_steps(engine):
    steps = engine.steer_steps(PROMPT, EDITS, max_new_tokens=3)
    next(steps)
    assert not torch.is_inference_mode_enabled()
    steps.close()
