"""House rule 1: imports flow one way. The web side and the store never import torch, TransformerLens,
SAELens or the engine; the engine imports nothing of the app but itself. Checked on the source (every import
statement, anywhere in the file) and at run time (importing the web side loads no torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
HEAVY = ("torch", "transformer_lens", "sae_lens", "app.engine", "app.training", "app.worker")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((APP / package).rglob("*.py")) if (APP / package).is_dir() else []:
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(APP.parent)} imports {name}")
    return out


def test_web_and_store_import_no_torch_or_engine():
    bad = offenders("web", HEAVY) + offenders("store", HEAVY) + offenders("db", HEAVY)
    for name in ("protocol.py", "config.py", "api_errors.py"):
        bad += [f"app/{name} imports {m}" for m in imported_modules(APP / name)
                if any(m == f or m.startswith(f + ".") for f in HEAVY)]
    assert bad == []


def test_engine_imports_nothing_of_the_app():
    bad = [o for o in offenders("engine", ("app",)) if " imports app.engine" not in o]
    assert bad == []


def test_importing_the_web_side_loads_no_torch():
    modules = ["app.protocol", "app.config", "app.api_errors"]
    modules += [f"app.{p.name}" for p in (APP / "web", APP / "store") if (p / "__init__.py").exists()]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=APP.parent, check=True)
    assert out.stdout.strip() == "False"


def test_the_checker_sees_a_violation(tmp_path):
    """The check itself can fail: a file that imports torch is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import torch.nn as nn\n    from sae_lens import SAE\n")
    assert {"torch.nn", "sae_lens"} <= imported_modules(bad)


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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=APP.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
