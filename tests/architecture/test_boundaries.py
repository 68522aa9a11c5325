"""House rule 1: imports flow one way. The web side and the store never import torch, TransformerLens, SAELens or
the engine, not in their own files, not through any app module they import, and not at run time; the engine
imports only its libraries and the standard library; the app's packages import each other without a cycle.
Every check walks every module of its packages (a missing or empty package fails), and each one is shown to fail
on a planted violation (the `planted` tree below)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.architecture.imports import (
    MissingPackage,
    cycles,
    forbidden_imports,
    imports_outside,
    loaded_by_importing,
    modules,
    package_graph,
    reachable_imports,
)

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformer_lens", "sae_lens", "transformers", "app.engine", "app.training", "app.worker")
WEB_SIDE = ("app.web", "app.store")
# torch, TransformerLens, SAELens; transformers is TransformerLens's tokenizer layer (the engine loads a model
# folder's tokenizer.json through it); safetensors and numpy are the file format and what torch hands arrays to
ENGINE_LIBRARIES = ("torch", "transformer_lens", "sae_lens", "transformers", "safetensors", "numpy")
PACKAGES = ("app.engine", "app.web", "app.store", "app.worker", "app.jobs", "app.training", "app.serving")
# the plumbing both services share: HTTP libraries and the standard library, nothing of the app but itself
SERVING_LIBRARIES = ("fastapi", "starlette", "orjson", "uvicorn")


def _heavy(found: dict[str, set[str]]) -> list[str]:
    return [f"{m} imports {n}" for m, names in sorted(found.items()) for n in sorted(names)
            if any(n == h or n.startswith(h + ".") for h in HEAVY)]


# --- the rules, on the app ------------------------------------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_a_rule_names_is_there_with_code(package):
    assert any(m.name != package for m in modules(ROOT, package))


def test_web_side_files_import_no_torch_or_engine():
    assert [o for p in WEB_SIDE for o in forbidden_imports(ROOT, p, HEAVY)] == []


def test_no_app_module_the_web_side_imports_imports_torch_or_engine():
    """Followed through every app module the web side reaches, lazy imports inside functions included."""
    reached = {}
    for package in WEB_SIDE:
        reached |= reachable_imports(ROOT, package, "app")
    assert {"app.web.app", "app.web.pages.discover", "app.store.db", "app.protocol"} <= reached.keys()
    assert _heavy(reached) == []


def test_importing_every_web_module_loads_no_torch():
    names = [m.name for p in WEB_SIDE for m in modules(ROOT, p)]
    assert "app.web.pages.explorer" in names and "app.web.api.model_routes" in names
    assert loaded_by_importing(ROOT, names, HEAVY) == []


def test_engine_imports_only_its_libraries_and_the_standard_library():
    assert imports_outside(ROOT, "app.engine", ENGINE_LIBRARIES) == []


def test_serving_plumbing_imports_only_http_libraries():
    assert imports_outside(ROOT, "app.serving", SERVING_LIBRARIES) == []


def test_the_app_packages_import_each_other_without_a_cycle():
    graph = package_graph(ROOT, "app")
    assert "jobs" not in graph["training"] and "training" in graph["jobs"]  # the one direction, training <- jobs
    assert cycles(graph) == []


def test_web_only_serve_imports_no_torch(tmp_path):
    """`saex serve --worker-url ...` (the web container, which has no torch) builds its app without torch."""
    code = f"""
import sys
from app.cli import build_parser
from app.config import load_settings
from app.store.db import upgrade
from app.web.app import create_web_app
settings = load_settings(database_url="sqlite:///{tmp_path / 'w.db'}", worker_urls=["http://127.0.0.1:9"])
upgrade(settings.resolved_database_url)
create_web_app(settings)
build_parser()
print('torch' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


# --- the same checks on a planted tree that breaks each rule ------------------------------------------------------

PLANTED = {
    "planted/__init__.py": "",
    "planted/shared.py": "import planted_heavy\n\n\ndef device():\n    import heavy_lib\n",
    "planted_heavy.py": "LOADED = True\n",
    # the web package's __init__ is empty: importing only it (the old check) sees nothing
    "planted/web/__init__.py": "",
    "planted/web/page.py": ('"""A page."""\nfrom planted import shared\n\n\ndef f():\n'
                            "    import torch.nn as nn\n    from ..engine import core\n    return nn, core\n"),
    "planted/engine/__init__.py": "",
    "planted/engine/core.py": "import json\n\nimport requests\nimport torch\n\nfrom planted.web import page\n",
    "planted/training/__init__.py": "",
    "planted/training/corpus.py": "DOCS = []\n",
    "planted/training/evaluate.py": "from planted.jobs.corpus import pack\n",
    "planted/jobs/__init__.py": "",
    "planted/jobs/corpus.py": "from planted.training.corpus import DOCS\n\n\ndef pack():\n    return DOCS\n",
    "planted/empty/__init__.py": '"""Only a docstring."""\n',
}


@pytest.fixture
def planted(tmp_path) -> Path:
    for name, text in PLANTED.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_missing_or_empty_package_fails(planted):
    with pytest.raises(MissingPackage, match="no folder"):
        modules(planted, "planted.nothere")
    with pytest.raises(MissingPackage, match="no module with code"):
        modules(planted, "planted.empty")
    with pytest.raises(MissingPackage):
        forbidden_imports(planted, "planted.nothere", ("torch",))


def test_a_forbidden_import_is_found_in_any_module_and_any_function(planted):
    heavy = ("torch", "planted.engine")
    assert forbidden_imports(planted, "planted.web", heavy) == [
        "planted.web.page imports planted.engine", "planted.web.page imports planted.engine.core",
        "planted.web.page imports torch.nn"]


def test_a_forbidden_import_is_found_through_an_imported_module(planted):
    reached = reachable_imports(planted, "planted.web", "planted")
    assert "planted.shared" in reached and {"planted_heavy", "heavy_lib"} <= reached["planted.shared"]


def test_a_heavy_module_loaded_at_import_time_is_found(planted):
    assert loaded_by_importing(planted, ["planted.web"], ("planted_heavy",)) == []  # the package alone: nothing
    names = [m.name for m in modules(planted, "planted.web")]
    assert loaded_by_importing(planted, names, ("planted_heavy",)) == ["planted_heavy"]


def test_an_engine_import_outside_its_libraries_is_found(planted):
    assert imports_outside(planted, "planted.engine", ("torch",)) == [
        "planted.engine.core imports planted.web", "planted.engine.core imports planted.web.page",
        "planted.engine.core imports requests"]


def test_a_cycle_between_packages_is_found(planted):
    graph = package_graph(planted, "planted")
    assert graph["training"] == {"jobs"} and graph["jobs"] == {"training"}
    assert ["jobs", "training"] in cycles(graph)
    assert ["engine", "web"] in cycles(graph)  # engine.core -> web.page -> engine.core
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
