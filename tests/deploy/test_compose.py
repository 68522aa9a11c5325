"""The deployment files, run without Docker (none runs here): each image's tree is laid out as its Dockerfile's
COPY lines say, and the commands docker-compose.yml and the Dockerfile run (migrate, key creation, a dashboard
build, worker, web, both healthchecks) run from those trees with compose's environment (values from .env.example,
service hosts pointed at loopback, the local Postgres for the `postgres` service). Only `--device cuda` becomes cpu:
no GPU here. Also: every setting is documented in .env.example, and nothing secret is baked into an image."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from app.config import DEMO_DIR, REPO_ROOT, Settings
from tests.processes import free_port, stop, wait_http

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
ENV_EXAMPLE = dict(line.split("=", 1) for line in (REPO_ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))


def stage(name: str) -> str:
    """The Dockerfile text of one build stage."""
    return re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.S | re.M).group(1)


def lay_out(name: str, root: Path) -> Path:
    """The image's WORKDIR as its COPY lines fill it (the frontend stage's node_modules from ours)."""
    text = stage(name)
    workdir = root / re.search(r"^WORKDIR (\S+)", text, re.M).group(1).lstrip("/")
    workdir.mkdir(parents=True)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        parts = line.split()
        if parts[0].startswith("--from=frontend"):
            shutil.copytree(REPO_ROOT / "frontend" / "node_modules", workdir / parts[-1])
            continue
        *sources, dest = parts
        for src in sources:
            target = workdir / dest if not dest.endswith("/") else workdir / dest / Path(src).name
            if (REPO_ROOT / src).is_dir():
                shutil.copytree(REPO_ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO_ROOT / src, target)
    return workdir


def compose_env(service: str, **hosts: str) -> dict[str, str]:
    """A service's environment with ${VAR...} filled from .env.example and service hosts replaced."""
    def fill(value: str) -> str:
        def one(m: re.Match) -> str:
            name, _, default = re.match(r"(\w+)(?:(:-|:\?)(.*))?", m.group(1)).groups()
            return ENV_EXAMPLE.get(name, default if _ == ":-" else "")
        out = re.sub(r"\$\{([^}]+)\}", one, str(value))
        for host, addr in hosts.items():
            out = out.replace(f"@{host}:5432/saex", f"@{addr}").replace(f"//{host}:8001", f"//{addr}")
        return out

    return {k: fill(v) for k, v in COMPOSE["services"][service].get("environment", {}).items()}


def cmd_of(name: str, **ports: int) -> list[str]:
    args = json_list(re.search(r"^CMD (\[.+\])$", stage(name), re.M).group(1))
    return [str(ports.get(a, a)) for a in args]


def healthcheck_of(name: str, port: int) -> list[str]:
    cmd = re.search(r"^HEALTHCHECK .*?\n\s+CMD (.+)$", stage(name), re.M).group(1)
    return [sys.executable if a == "python" else a for a in shlex.split(re.sub(r":80\d\d/", f":{port}/", cmd))]


def json_list(text: str) -> list[str]:
    import json

    return json.loads(text)


def run_in(workdir: Path, args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    """`saex ...` as the image runs it: the package imported from its WORKDIR, run from elsewhere."""
    if args[0] == "saex":
        args = [sys.executable, "-m", "app.cli", *args[1:]]
    return subprocess.Popen(args, cwd=kw.pop("cwd", workdir.parent), env={
        **os.environ, "PYTHONPATH": str(workdir), "SAEX_DATA_DIR": str(workdir.parent / "data"), **env}, **kw)


@pytest.fixture
def compose_db():
    name = "saex_compose_test"
    with psycopg.connect("postgresql://127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'saex'").fetchone() is None:
            conn.execute("CREATE ROLE saex LOGIN")  # compose's POSTGRES_USER
        conn.execute(f"CREATE DATABASE {name} OWNER saex")
    yield f"127.0.0.1:5432/{name}"
    with psycopg.connect("postgresql://127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_every_setting_is_documented_in_env_example():
    for name in Settings.model_fields:
        env = "DATABASE_URL" if name == "database_url" else f"SAEX_{name.upper()}"
        assert re.search(rf"^#? ?{env}=", (REPO_ROOT / ".env.example").read_text(), re.M), env
    for service in COMPOSE["services"].values():
        for key in service.get("environment", {}):
            assert key in ("POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "DATABASE_URL") or \
                   key.lower().removeprefix("saex_") in Settings.model_fields, key


def test_no_secret_is_baked_into_an_image():
    assert not re.search(r"^(ENV|ARG)\b.*(PASSWORD|SECRET|KEY|DATABASE_URL)", DOCKERFILE, re.M)
    assert ".env" in (REPO_ROOT / ".dockerignore").read_text().split()
    assert "torch" not in stage("web")


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO_DIR / "model" / "model.safetensors").exists(), reason="no demo model")
def test_compose_commands_outside_docker(tmp_path, compose_db):
    web_dir, worker_dir = lay_out("web", tmp_path / "web"), lay_out("worker", tmp_path / "worker")
    for name in ("web", "worker"):  # what PYTHONPATH stands for below: the package is used from its WORKDIR
        assert re.search(r"pip install --no-cache-dir -e ", stage(name)), name
    db_env = compose_env("migrate", postgres=compose_db)

    migrate = COMPOSE["services"]["migrate"]["command"]
    assert run_in(web_dir, migrate, db_env).wait(120) == 0
    made = run_in(web_dir, ["saex", "keys", "create", "--name", "alice"], db_env, stdout=subprocess.PIPE)
    key = made.communicate(timeout=120)[0].decode().strip()
    assert made.returncode == 0 and key.startswith("saex_")
    build = run_in(worker_dir, ["saex", "dashboards", "build", "--tokens", "2048", "--layers", "0"],
                   compose_env("worker", postgres=compose_db), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert build.wait(300) == 0

    wport, port = free_port(), free_port()
    worker_cmd = [a if a != "cuda" else "cpu" for a in cmd_of("worker", **{"8001": wport})]
    worker = run_in(worker_dir, worker_cmd, compose_env("worker", postgres=compose_db))
    web = run_in(web_dir, cmd_of("web", **{"8000": port}),
                 compose_env("web", postgres=compose_db, worker=f"127.0.0.1:{wport}"))
    try:
        wait_http(f"http://127.0.0.1:{wport}/health", 120, worker)
        wait_http(f"http://127.0.0.1:{port}/ready", 60, web)
        assert subprocess.run(healthcheck_of("worker", wport), timeout=30).returncode == 0
        assert subprocess.run(healthcheck_of("web", port), timeout=30).returncode == 0
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        page = c.get("/demo/L0/0")
        assert page.status_code == 200, page.text[:2000]  # templates and vendored scripts found in the image's tree
        assert c.get("/static/vendor/htmx.min.js").status_code == 200
        assert c.post("/api/v1/analyze", json={"text": "import os"}).status_code == 200
        r = c.post("/api/v1/saes/L0/features/0/explanations", json={"text": "from compose"},
                   headers={"X-API-Key": key})
        assert r.status_code == 201, r.text
    finally:
        stop(web)
        stop(worker)


@pytest.mark.process
def test_an_unreachable_database_is_a_message_not_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], capture_output=True, text=True,
                          env={**os.environ, "DATABASE_URL": f"postgresql+psycopg://saex@127.0.0.1:{free_port()}/x"},
                          timeout=60)
    assert done.returncode == 2 and "cannot use the database" in done.stderr and "Traceback" not in done.stderr


def test_the_two_model_example_gives_each_worker_its_model_and_sae_set(monkeypatch):
    """docker-compose.models.yml with .env.models.example: each worker's environment is settings that name its model,
    SAE set and SAE ids (read as `saex worker` reads them), and the web app is pointed at every worker."""
    from app.engine.loading import split_sae_spec

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.models.yml").read_text())
    example = dict(line.split("=", 1) for line in (REPO_ROOT / ".env.models.example").read_text().splitlines()
                   if line and not line.startswith("#"))

    def fill(value: str) -> str:
        def one(m: re.Match) -> str:
            name, sep, default = re.match(r"(\w+)(?:(:-|:\?)(.*))?", m.group(1)).groups()
            return example.get(name, default if sep == ":-" else "")
        return re.sub(r"\$\{([^}]+)\}", one, str(value))

    workers = {name: s for name, s in compose["services"].items() if s.get("build", {}).get("target") == "worker"}
    assert sorted(workers) == ["worker-a", "worker-b"]
    named = {}
    for name, service in workers.items():
        for key in service["environment"]:
            assert key == "DATABASE_URL" or key.lower().removeprefix("saex_") in Settings.model_fields, key
        for key, value in service["environment"].items():
            monkeypatch.setenv(key, fill(value))
        settings = Settings()
        named[name] = (settings.served_slug(), settings.sae_set, [split_sae_spec(s)[0] for s in settings.sae_specs()])
    assert named == {"worker-a": ("gpt2-small", "kissane-24k", ["L0", "L5", "L9"]),
                     "worker-b": ("ours", "topk-2k", ["ours-L0", "ours-L1"])}
    web = compose["services"]["web"]
    assert "saex" in stage("worker") and "worker" in cmd_of("worker")
    urls = yaml.safe_load(web["environment"]["SAEX_WORKER_URLS"])
    assert urls == [f"http://{name}:8001" for name in sorted(workers)]
    assert set(web["depends_on"]) >= set(workers)


def test_an_empty_model_setting_serves_the_demo_under_its_name():
    """compose passes SAEX_MODEL through as an empty string when .env leaves it unset: that is the embedded demo,
    named 'demo' by the worker, the build and the web app alike (an empty name hid every stored dashboard)."""
    assert Settings(model="").served_slug() == "demo"
    assert Settings().served_slug() == "demo"
    assert Settings(model="/models/gpt2-small/").served_slug() == "gpt2-small"
    assert Settings(model="", model_slug="lab").served_slug() == "lab"
