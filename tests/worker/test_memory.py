"""The serving processes' memory settings (app/serving/memory.py), each in a fresh interpreter: freed memory is reused
instead of faulting in again, and the start-up objects are out of the garbage collector's walks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
pytestmark = pytest.mark.process  # each check runs in a fresh interpreter

# 24 MB allocated in 4 MB blocks, touched, freed, again and again: glibc's default trims the heap's top after
# each round (its thresholds follow the largest block freed so far, 8 MB here), so every round faults 24 MB in
MALLOC_ROUNDS = """
import ctypes, json, resource, sys
if sys.argv[1] == "keep":
    from app.serving.memory import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
MB = 1 << 20

def touched(n):
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    return p

def round_():
    blocks = [touched(4 * MB) for _ in range(6)]
    for p in reversed(blocks):
        libc.free(p)

libc.free(touched(8 * MB))
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_()
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10))
"""


def run_python(code: str, *args: str) -> object:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    pages_per_round = 24 * (1 << 20) // 4096
    assert run_python(MALLOC_ROUNDS, "default") > pages_per_round / 2  # the premise: glibc's default trims
    assert run_python(MALLOC_ROUNDS, "keep") < 10


@glibc
def test_a_worker_analysis_faults_no_memory_in_and_a_full_collection_walks_no_start_up_object():
    """The serving path as `saex worker` sets it up: engine from settings, then frozen before serving."""
    result = run_python("""
        import gc, json, resource
        from app.cli import _engine_from_settings
        from app.config import load_settings
        from app.serving.memory import freeze_loaded_objects
        from app.training.evaluate import dashboard_sequences

        engine = _engine_from_settings(load_settings())
        tokens = dashboard_sequences(engine, 1)[0, 1:]
        text = engine.model.tokenizer.decode(tokens[: engine.model.cfg.n_ctx - 8])
        tracked = len(gc.get_objects())
        frozen = freeze_loaded_objects()
        for _ in range(10):
            engine.analyze(text, None, 10)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            engine.analyze(text, None, 10)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
        print(json.dumps({"tracked": tracked, "frozen": frozen, "faults": faults, "left": len(gc.get_objects())}))
    """)
    assert result["tracked"] > 100_000 and result["frozen"] >= result["tracked"] * 0.9
    assert result["left"] < 10_000  # what a full collection still walks: only what requests made since
    # an analysis allocates ~4 MB (some 1,000 pages) on the demo model; without the allocator settings some
    # processes faulted 816-1381 pages in on every analysis
    assert result["faults"] < 50
