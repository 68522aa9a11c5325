"""The import graph of a source tree, read from the files (every import statement, anywhere in a module, relative
ones resolved) and from a fresh interpreter (what importing modules actually loads); the checks of
test_boundaries.py are built from these, and test_boundaries.py runs them on planted violations too. Knows nothing
of which rules the app keeps."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class MissingPackage(AssertionError):
    """A package named in a rule has no folder, or no module with code in it: a rule about it would check nothing."""


@dataclass(frozen=True)
class Module:
    name: str  # dotted: app.web.pages.discover; a package's __init__ is the package's name
    path: Path

    @property
    def package(self) -> str:
        """The package that relative imports start from."""
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in body)


def modules(root: Path, package: str) -> list[Module]:
    """Every module of `package` (dotted, under `root`), walking its folder; a missing or empty package fails."""
    folder = root.joinpath(*package.split("."))
    if not folder.is_dir():
        raise MissingPackage(f"{package}: no folder {folder}")
    found = []
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append(Module(name, path))
    if not any(_has_code(m.path) for m in found):
        raise MissingPackage(f"{package}: {folder} holds no module with code")
    return found


def imports(module: Module) -> set[str]:
    """Every module name the file imports, absolute; `from a import b` counts as a and as a.b (b may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def forbidden_imports(root: Path, package: str, forbidden: tuple[str, ...]) -> list[str]:
    """'module imports name' for every import in the package of a name under one of `forbidden`."""
    return [f"{m.name} imports {name}" for m in modules(root, package) for name in sorted(imports(m))
            if _matches(name, forbidden)]


def imports_outside(root: Path, package: str, allowed: tuple[str, ...]) -> list[str]:
    """'module imports name' for every import that is neither the standard library, the package itself, nor under
    one of `allowed`."""
    out = []
    for m in modules(root, package):
        for name in sorted(imports(m)):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and not _matches(name, (package, *allowed)):
                out.append(f"{m.name} imports {name}")
    return out


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def reachable_imports(root: Path, package: str, inside: str) -> dict[str, set[str]]:
    """For each module reachable from `package` by imports of modules under `inside` (any import statement, and
    every parent package, which Python runs first), the names it imports: what the package can come to load."""
    todo = modules(root, package)
    seen: dict[str, set[str]] = {}
    while todo:
        m = todo.pop()
        if m.name in seen:
            continue
        seen[m.name] = imports(m)
        for name in seen[m.name] | {m.name.rpartition(".")[0]}:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the module and each of its parent packages
                dotted = ".".join(parts[:i])
                path = _module_file(root, dotted) if _matches(dotted, (inside,)) else None
                if path is not None and dotted not in seen:
                    todo.append(Module(dotted, path))
    return seen


def loaded_by_importing(root: Path, names: list[str], watched: tuple[str, ...]) -> list[str]:
    """Import `names` in a fresh interpreter with `root` first on the path; the modules under `watched` that are then
    loaded (sorted)."""
    code = (f"import importlib, json, sys\nsys.path.insert(0, {str(root)!r})\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            f"print(json.dumps(sorted(n for n in sys.modules\n"
            f"                        if any(n == w or n.startswith(w + '.') for w in {list(watched)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def package_graph(root: Path, top: str) -> dict[str, set[str]]:
    """The members of `top` (its subpackages and modules, by their first name below it) and which others each one's
    files import."""
    graph: dict[str, set[str]] = {}
    depth = len(top.split("."))
    for m in modules(root, top):
        parts = m.name.split(".")
        if len(parts) == depth:
            continue  # top's own __init__
        member = parts[depth]
        graph.setdefault(member, set())
        for name in imports(m):
            other = name.split(".")
            if other[:depth] == top.split(".") and len(other) > depth and other[depth] != member:
                if _module_file(root, ".".join(other[: depth + 1])) is not None:
                    graph[member].add(other[depth])
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one member (Tarjan), each sorted: every import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)
