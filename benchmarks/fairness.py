"""Fairness under a steering flood (issue 17): `saex serve` on the demo model (in-process worker, default limits);
client B analyzes a prompt one request after another, first alone (idle) and then while client A floods steering
(form posts from a signed-in browser and API posts, 100 new tokens each, from several threads at once). Prints one
JSON line: B's idle p95 and its p95 under the flood (target: within 3x), A's answers by status, and the count of 5xx
answers to anyone (target 0). Bounded: a fixed number of B's requests, A's threads stop when B is done.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fairness.py [--requests 40] [--flooders 6]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import free_port, start_saex, stop, wait_http  # noqa: E402

PROMPT = "The Python standard library contains many modules, and each module has its own documentation. "


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def make_key(env: dict[str, str], name: str) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--name", name], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    return done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40, help="B's analyze requests in each phase")
    parser.add_argument("--flooders", type=int, default=6, help="A's threads (half form posts, half API)")
    parser.add_argument("--tokens", type=int, default=100, help="max_new_tokens of A's steering (the demo's context "
                        "is 128 tokens and the prompt 18: more is refused, 422, before any generation)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="saex-fairness-"))
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp / 'f.db'}", "SAEX_DATA_DIR": str(tmp),
           "SAEX_THREADS": "1"}
    env.pop("SAEX_SECRET_KEY", None)
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], env=env, check=True, capture_output=True,
                   cwd=ROOT)
    key_a, key_b = make_key(env, "flooder"), make_key(env, "analyst")
    port = free_port()
    web = start_saex(["serve", "--port", str(port), "--dashboard-tokens", "0", "--threads", "1"], tmp / "web.log",
                     env=env)
    base = f"http://127.0.0.1:{port}"
    statuses: Counter = Counter()
    details: dict[str, str] = {}
    lock = threading.Lock()
    try:
        wait_http(base + "/health", 120, web)
        b = httpx.Client(base_url=base, timeout=120, headers={"X-API-Key": key_b})

        def analyze_times(n: int) -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = b.post("/api/v1/analyze", json={"text": PROMPT})
                out.append(time.perf_counter() - t0)
                with lock:
                    statuses[("B", r.status_code)] += 1
                time.sleep(0.05)
            return out

        analyze_times(5)  # warm up
        statuses.clear()
        idle = analyze_times(args.requests)

        stop_flag = threading.Event()
        slug = "demo"

        def flood(kind: str) -> None:
            c = httpx.Client(base_url=base, timeout=120)
            if kind == "form":
                token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/sign-in").text).group(1)
                c.post("/sign-in", data={"api_key": key_a, "csrf_token": token, "next": "/"})
                token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/sign-in").text).group(1)
            while not stop_flag.is_set():
                if kind == "form":
                    r = c.post(f"/{slug}/steer", data={"csrf_token": token, "text": PROMPT,
                                                       "max_new_tokens": args.tokens, "layer": ["1"],
                                                       "feature": ["3"], "mode": ["add"], "value": ["8"],
                                                       "heads": [""], "positions": [""]}, follow_redirects=False)
                else:
                    r = c.post("/api/v1/steer", json={"text": PROMPT, "max_new_tokens": args.tokens,
                                                      "interventions": [{"layer": 1, "feature": 3, "value": 8.0}]},
                               headers={"X-API-Key": key_a})
                with lock:
                    statuses[("A-" + kind, r.status_code)] += 1
                    if r.status_code not in (200, 303, 429):  # what went wrong, once per kind of answer
                        details.setdefault(f"A-{kind} {r.status_code}", r.text[-300:])
                if r.status_code == 429:
                    time.sleep(0.05)

        threads = [threading.Thread(target=flood, args=("form" if i % 2 == 0 else "api",), daemon=True)
                   for i in range(args.flooders)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # the flood is under way
        flooded = analyze_times(args.requests)
        stop_flag.set()
        for t in threads:
            t.join(130)
    finally:
        stop(web)
    five = sum(n for (_, code), n in statuses.items() if code >= 500)
    out = {"benchmark": "fairness", "requests": args.requests, "flooders": args.flooders, "steer_tokens": args.tokens,
           "idle_p95_s": round(p95(idle), 4), "flood_p95_s": round(p95(flooded), 4),
           "ratio": round(p95(flooded) / p95(idle), 2), "within_3x": p95(flooded) <= 3 * p95(idle),
           "count_5xx": five, "statuses": {f"{who} {code}": n for (who, code), n in sorted(statuses.items())},
           "details": details}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
