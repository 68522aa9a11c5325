"""Benchmark: /v1/analyze latency (p50, p95), all layers, top-10 per token, for a 64-token prompt and a
full-context prompt, over HTTP on loopback against a real worker, beside the same result computed the plain
SAELens way (HookedSAETransformer.run_with_cache_with_saes with the error term, then top-k) in the same run.

    python benchmarks/analyze_latency.py [--model PATH --sae PATH ...] [--threads 2] [--iters 50]

Prints one JSON object. Target (issue 2): our p50 at most half of the SAELens way, and under 30 ms for a 64-token
prompt on 2 CPU cores with a 2-layer d_model-256 model.

Our side is timed with two clients, both on one kept-alive connection and parsing the body with orjson as the web
app's WorkerClient does: http_v1_analyze uses the standard library's http.client, a lean client, so the figure is
the endpoint's latency; via_httpx uses httpx, as WorkerClient does, which adds its own ~0.5-1 ms per call (it
writes the headers and the body in two sends, and its stack is Python). Each way is timed under three
conditions, since on a shared 2-core machine what ran just before a call moves it by tens of percent:
round_robin (one call of each way per turn, in a shuffled order), after_idle (every call after 100 ms in which
nothing runs: a researcher's request reaching an idle machine) and back_to_back (runs of 10 calls of one way: a
steady stream).

This process builds its engine as the worker does, so the SAELens way runs with the worker's allocator settings
(app/serving/memory.py) too: if anything, they make the reference faster.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import subprocess
import sys
import time

import httpx
import orjson
import torch

from app.config import load_settings
from app.training.evaluate import dashboard_sequences
from app.web.worker_client import JSON_HEADERS

IDLE_S = 0.1
RUN = 10  # calls per run in back_to_back


def percentiles(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50_ms": round(1000 * statistics.median(s), 2), "p95_ms": round(1000 * s[int(0.95 * (len(s) - 1))], 2),
            "n": len(s)}


def time_interleaved(fns: dict, iters: int, warmup: int = 5, regime: str = "round_robin") -> dict[str, list[float]]:
    """Time each fn `iters` times with the ways taking turns in a shuffled order, so that all of them meet the same
    drift of machine speed (tens of percent within a minute on a shared VM) and the same neighbours: one call
    each per turn (round_robin), the same after IDLE_S of sleep before every call (after_idle), or runs of RUN
    calls each per turn (back_to_back)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    run = RUN if regime == "back_to_back" else 1
    order, rng = list(fns), random.Random(0)
    for _ in range(max(1, iters // run)):
        rng.shuffle(order)  # a new order every turn: each way follows each other way as often (what ran just
        for name in order:  # before a call moves its time; in a fixed order one way would always follow ours)
            fn = fns[name]
            for _ in range(run):
                if regime == "after_idle":
                    time.sleep(IDLE_S)
                t0 = time.perf_counter()
                fn()
                out[name].append(time.perf_counter() - t0)
    return out


def saelens_way(engine, top_k: int):
    """The plain SAELens route to the same numbers: a HookedSAETransformer with the same weights, every SAE
    spliced in with its error term (so downstream layers see the true activations), cache, then top-k."""
    from sae_lens import HookedSAETransformer

    model = HookedSAETransformer(engine.model.cfg, tokenizer=engine.model.tokenizer)
    model.load_state_dict(engine.model.state_dict())
    model.eval()
    saes = [s.sae for s in engine.saes.values()]
    for sae in saes:
        sae.use_error_term = True

    def analyze(text: str) -> list:
        tokens = model.to_tokens(text)
        with torch.inference_mode():
            _, cache = model.run_with_cache_with_saes(tokens, saes=saes)
        out = []
        for sae in saes:
            acts = cache[f"{sae.cfg.metadata.hook_name}.hook_sae_acts_post"][0]
            vals, idx = acts.topk(top_k, dim=-1)
            out.append((vals.tolist(), idx.tolist(), (acts > 0).sum(-1).tolist()))
        return out

    return analyze


def serve(args) -> subprocess.Popen:
    """The worker as deployed: its own process (`saex worker`), the same model and SAEs, the same threads."""
    cmd = [sys.executable, "-m", "app.cli", "worker", "--port", str(args.port), "--threads", str(args.threads)]
    if args.model:
        cmd += ["--model", args.model] + [x for s in args.sae or [] for x in ("--sae", s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{args.port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the worker did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--sae", action="append")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from app.cli import _engine_from_settings

    engine = _engine_from_settings(load_settings(model=args.model, saes=args.sae))
    n_ctx = engine.model.cfg.n_ctx
    rows = dashboard_sequences(engine, 2)
    tok = engine.model.tokenizer
    prompts = {"64_tokens": tok.decode(rows[0, 1:64]), "full_context": tok.decode(rows[1, 1:])}
    server = serve(args)
    reference = saelens_way(engine, 10)
    result: dict = {"model": engine.info()["model"], "threads": args.threads, "prompts": {}}
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio and httpx set it
    with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=60) as client:
        for name, text in prompts.items():
            n_tokens = len(engine.tokenize(text)["tokens"])
            if n_tokens > n_ctx:  # the tokenizer may merge differently on decode-encode: trim to the context
                text = tok.decode(tok.encode(text, add_special_tokens=False)[: n_ctx - 1])
                n_tokens = len(engine.tokenize(text)["tokens"])

            worker_engine_ms: list[float] = []

            def engine_ms(server_timing: str) -> float:
                return float(dict(p.split(";dur=") for p in server_timing.split(", "))["engine"])

            def ours(text=text, worker_engine_ms=worker_engine_ms):
                conn.request("POST", "/v1/analyze", orjson.dumps({"text": text, "top_k": 10}), JSON_HEADERS)
                r = conn.getresponse()
                content = r.read()
                if r.status != 200:
                    raise RuntimeError(f"/v1/analyze answered {r.status}: {content[:200]!r}")
                worker_engine_ms.append(engine_ms(r.headers["server-timing"]))
                return orjson.loads(content)

            def via_httpx(text=text):
                r = client.post("/v1/analyze", content=orjson.dumps({"text": text, "top_k": 10}), headers=JSON_HEADERS)
                r.raise_for_status()
                return orjson.loads(r.content)

            body = ours()
            assert via_httpx() == body
            ref = reference(text)
            for layer, (vals, _idx, l0) in zip(body["layers"], ref, strict=True):  # same result, checked
                assert layer["l0"] == l0
                got = [[f["activation"] for f in row] for row in layer["top_features"]]
                want = [[v for v in row if v > 0] for row in vals]
                assert all(abs(a - b) < 1e-4 for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True))
            # the worker computes in its own process with its own threads; in-process runs use ours
            ways = {"http": ours, "httpx": via_httpx, "engine": lambda text=text: engine.analyze(text, None, 10),
                    "saelens": lambda text=text: reference(text)}
            result["prompts"][name] = {"tokens": n_tokens}
            for regime in ("round_robin", "after_idle", "back_to_back"):
                times = time_interleaved(ways, args.iters, regime=regime)
                ours_t, httpx_t, engine_t, ref_t = (percentiles(times[k]) for k in ways)
                ours_t["worker_engine_p50_ms"] = round(statistics.median(worker_engine_ms[-ours_t["n"]:]), 2)
                result["prompts"][name][regime] = {
                    "http_v1_analyze": ours_t, "via_httpx": httpx_t, "engine_only": engine_t, "saelens_way": ref_t,
                    "ratio_p50_ours_over_saelens": round(ours_t["p50_ms"] / ref_t["p50_ms"], 3),
                    "ratio_p50_via_httpx_over_saelens": round(httpx_t["p50_ms"] / ref_t["p50_ms"], 3),
                }
    conn.close()
    server.terminate()
    server.wait(10)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
