"""Benchmark: semantic search over 300,000 explanations. Fills a scratch Postgres database (unless already filled)
with explanations over 12 SAEs of the demo model and their embeddings: `--real` of them embedded by MiniLM, the rest
random unit vectors (the timing does not depend on the values). Then runs the web app with the demo worker
in-process and asks GET /api/v1/explanations/search?mode=semantic one query at a time, each request being the
whole path: the worker embeds the query, the in-process index searches every row, the store reads the rows found.
Prints, as JSON: p50/p95 of those requests, of each part alone, the cold load of the index and its memory.

    OMP_NUM_THREADS=1 python benchmarks/semantic_search.py [--database-url postgresql+psycopg://.../saex_semantic]

Target (issue 15): p50 under 100 ms with 300,000 explanations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from datetime import UTC, datetime

import numpy as np

TOPICS = ["closing brackets in Python code", "rain and stormy weather", "French articles and prepositions",
          "years and dates", "names of large cities", "negative emotions", "HTML tags", "SQL keywords",
          "plural nouns", "past-tense verbs", "the token after an opening quote", "numbers in lists",
          "names of people", "legal language in contracts", "medical terms", "sports teams and scores",
          "cooking recipes and ingredients", "musical instruments", "programming errors and stack traces",
          "the second half of repeated phrases", "question words at the start of a sentence", "currency amounts"]
FRAMES = ["fires on {}", "activates on {} in long documents", "detects {}", "responds to {} near the end of a line",
          "{}, mostly after a comma", "predicts {}", "copies {} seen earlier in the context"]
QUERIES = ["weather forecasts", "feeling sad or angry", "metropolitan areas", "source code punctuation",
           "texts in French", "calendar years", "web page markup", "database queries", "money and prices",
           "repeated text (induction)", "food and cooking", "illness and medicine", "football results",
           "people's names", "contract clauses", "exceptions in programs", "guitars and pianos", "questions"]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ms(values: list[float]) -> dict:
    s = sorted(values)
    return {"p50_ms": round(1000 * statistics.median(s), 2), "p95_ms": round(1000 * s[int(0.95 * (len(s) - 1))], 2),
            "n": len(s)}


def ensure_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    from app.store.db import upgrade

    name = url.rsplit("/", 1)[1]
    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    upgrade(url)


def fill(url: str, *, n: int, n_saes: int, real: int, model_slug: str, embedder) -> dict:
    """The explanations and their vectors, by COPY (a few seconds for 300,000); skipped when already there."""
    from sqlalchemy import delete, func, select, text

    from app.store import explanation_embeddings as stored
    from app.store.dashboards import upsert_model, upsert_sae
    from app.store.db import make_engine, make_sessionmaker, transaction
    from app.store.models import ExplanationEmbedding, SAERecord

    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        have = s.scalar(select(func.count()).select_from(ExplanationEmbedding)
                        .where(ExplanationEmbedding.model == embedder.name))
    if have >= n:
        engine.dispose()
        return {"filled": False, "explanations": have}
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    with transaction(sessions) as s:
        model = upsert_model(s, slug=model_slug, name=model_slug, source="benchmark", config={})
        # an earlier, partial fill: its SAEs go, and their explanations and vectors with them (cascade)
        s.execute(delete(SAERecord).where(SAERecord.model_id == model.id, SAERecord.source == "benchmark"))
        sae_ids = [upsert_sae(s, model=model, slug=f"B{i}", layer=i % 2, hook_name=f"blocks.{i % 2}.attn.hook_z",
                              d_sae=32768, architecture="topk", source="benchmark").id for i in range(n_saes)]
    texts = [random.Random(i).choice(FRAMES).format(random.Random(~i).choice(TOPICS)) + f" (#{i})"
             for i in range(n)]
    now = datetime.now(UTC)
    with engine.begin() as conn:
        cur = conn.connection.driver_connection.cursor()
        with cur.copy("COPY explanations (sae_id, feature, text, author, source, method, created_at, updated_at) "
                      "FROM STDIN") as copy:
            for i, t in enumerate(texts):
                copy.write_row((sae_ids[i % n_saes], i // n_saes, t, "benchmark", "automatic", "baseline", now, now))
    with sessions() as s:
        ids = [i for (i,) in s.execute(text("SELECT id FROM explanations ORDER BY id"))]
    t_embed = time.perf_counter()
    vectors = rng.standard_normal((n, embedder.dim), dtype=np.float32)
    vectors[:real] = embedder.embed(texts[:real])  # the first `real` explanations get their true embedding
    t_embed = time.perf_counter() - t_embed
    with engine.begin() as conn:
        cur = conn.connection.driver_connection.cursor()
        with cur.copy("COPY explanation_embeddings (explanation_id, model, vector) FROM STDIN") as copy:
            for i, v in zip(ids, vectors, strict=True):
                copy.write_row((i, embedder.name, stored.pack(v)))
        conn.execute(text("ANALYZE explanations; ANALYZE explanation_embeddings"))
    engine.dispose()
    return {"filled": True, "explanations": n, "fill_s": round(time.perf_counter() - t0, 1),
            "real_embeddings": real, "embedding_s": round(t_embed, 1)}


class FillEmbedder:
    """The worker's embedder, for filling (same model and name as /v1/embed answers with)."""

    def __init__(self) -> None:
        from app.interpret.embedding import DIM
        from app.interpret.embedding import Embedder as MiniLM

        self.model, self.dim = MiniLM.shared(), DIM
        self.name = self.model.name

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.model.embed(texts)


async def measure(app, queries: list[str], limit: int, model_slug: str) -> dict:
    """Cold first request, then the whole path per query, then each part alone."""
    import httpx

    from app import protocol as P
    from app.web.services import semantic

    url = "/api/v1/explanations/search"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
        rss0 = rss_mb()
        t0 = time.perf_counter()
        r = await client.get(url, params={"q": queries[0], "mode": "semantic", "limit": limit})
        cold = time.perf_counter() - t0
        assert r.status_code == 200 and r.json()["mode"] == "semantic", r.text
        rss1 = rss_mb()
        index = semantic.indexes_of(app.state).get(r.json()["embedding_model"])
        whole: list[float] = []
        for q in queries:
            t0 = time.perf_counter()
            r = await client.get(url, params={"q": q, "mode": "semantic", "limit": limit})
            whole.append(time.perf_counter() - t0)
            assert r.status_code == 200 and len(r.json()["results"]) == limit, r.text
        first = r.json()["results"][0]
        text_mode = []
        for q in queries:
            t0 = time.perf_counter()
            r = await client.get(url, params={"q": q.split()[0], "limit": limit})
            text_mode.append(time.perf_counter() - t0)
        _, worker = await app.state.deployment.client()
        embed, search, rows = [], [], []
        for q in queries:
            t0 = time.perf_counter()
            reply = await worker.embed(P.EmbedRequest(texts=[q]))
            embed.append(time.perf_counter() - t0)
            vector = np.asarray(reply.vectors[0], np.float32)
            t0 = time.perf_counter()
            found = index.search(vector, limit, model_slug)
            search.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with app.state.sessions() as s:
                semantic.stored.explanations_with_saes(s, ids=[i for i, _ in found])
            rows.append(time.perf_counter() - t0)
    return {"rows_in_index": len(index), "cold_first_request_s": round(cold, 2),
            "index_load_s": round(index.load_seconds or 0, 2), "index_mb": round(index.nbytes / 2**20, 1),
            "rss_growth_on_load_mb": round(rss1 - rss0, 1), "rss_mb": round(rss_mb(), 1),
            "semantic_request": ms(whole), "text_request": ms(text_mode), "embed_via_worker": ms(embed),
            "index_search": ms(search), "rows_load": ms(rows), "example": {"query": queries[-1],
                                                                            "first": first["text"],
                                                                            "similarity": first["similarity"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/saex_semantic")
    parser.add_argument("--explanations", type=int, default=300_000)
    parser.add_argument("--saes", type=int, default=12)
    parser.add_argument("--real", type=int, default=3_000, help="explanations embedded by MiniLM (the rest random)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--limit", type=int, default=20)
    args = parser.parse_args()
    if not args.database_url.startswith("postgresql"):
        raise SystemExit("the benchmark fills its database with COPY: give a Postgres URL")

    from app.cli import _engine_from_settings
    from app.config import load_settings
    from app.web.app import create_web_app
    from app.worker.service import create_worker_app

    ensure_database(args.database_url)
    settings = load_settings(database_url=args.database_url, threads=int(os.environ.get("OMP_NUM_THREADS", "1")))
    engine = _engine_from_settings(settings)
    report = {"fill": fill(args.database_url, n=args.explanations, n_saes=args.saes, real=args.real,
                           model_slug=engine.name, embedder=FillEmbedder())}
    app = create_web_app(settings, create_worker_app(engine))
    queries = [QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" {i}") for i in range(args.queries)]
    report.update(asyncio.run(measure(app, queries, args.limit, engine.name)))
    report["target_p50_ms"] = 100
    report["ok"] = report["semantic_request"]["p50_ms"] < 100
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
