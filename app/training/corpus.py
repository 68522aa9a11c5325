"""Builds the demo model's training corpus from text that is available offline (Debian packages, the
Python standard library) and the held-out dashboard corpus; knows nothing of tokenizers or models.

Every source is a list of documents. A corpus folder holds one `{source}.txt` per source, documents separated
by DOC_SEPARATOR, and `manifest.json` naming each package, its version and the sha256 of the .deb it came from.
"""

from __future__ import annotations

import gzip
import hashlib
import html.parser
import json
import re
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DOC_SEPARATOR = "\n\x1e\n"  # ASCII record separator: never in the text itself (we strip it)
HELD_OUT_BUCKETS = 8  # one stdlib file in 8 (by a hash of its path) is held out for dashboards


@dataclass(frozen=True)
class DebSource:
    name: str  # the source's name in the corpus folder
    package: str  # the Debian package fetched with `apt-get download`
    extract: Callable[[Path], Iterator[str]]  # unpacked package root -> documents


def _squash(text: str) -> str:
    text = text.replace("\x1e", " ").replace("\r", "")
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", text).strip()


def _chunks(text: str, size: int = 4000) -> Iterator[str]:
    """Split a long text at blank lines into documents of about `size` characters."""
    buf: list[str] = []
    n = 0
    for para in text.split("\n\n"):
        buf.append(para)
        n += len(para)
        if n >= size:
            yield "\n\n".join(buf)
            buf, n = [], 0
    if buf:
        yield "\n\n".join(buf)


class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "pre", "table", "dt", "dd"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n" if tag in ("p", "pre", "h1", "h2", "h3", "div") else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    return _squash("".join(parser.parts))


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def _dictd(root: Path) -> Iterator[str]:
    for path in _files(root, "usr/share/dictd/*.dict.dz"):
        text = gzip.open(path).read().decode("utf-8", "replace")
        text = re.sub(r"\[1913 Webster\]|\[PJC\]|\[WordNet 1\.5\]", "", text)
        yield from _chunks(_squash(text))


def _gz_rst(root: Path) -> Iterator[str]:
    for path in _files(root, "usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz"):
        yield _squash(gzip.open(path).read().decode("utf-8", "replace"))


def _python_doc(root: Path) -> Iterator[str]:
    for path in _files(root, "usr/share/doc/python3.11/html/_sources/**/*.txt"):
        yield from _chunks(_squash(path.read_text("utf-8", "replace")), 8000)


def _git_doc(root: Path) -> Iterator[str]:
    for path in _files(root, "usr/share/doc/git-doc/**/*.txt"):
        yield _squash(path.read_text("utf-8", "replace"))


def _html_docs(glob: str) -> Callable[[Path], Iterator[str]]:
    def extract(root: Path) -> Iterator[str]:
        for path in _files(root, glob):
            yield from _chunks(html_to_text(path.read_text("utf-8", "replace")), 8000)

    return extract


def _fortunes(root: Path) -> Iterator[str]:
    for path in _files(root, "usr/share/games/fortunes/*"):
        if path.suffix in (".dat", ".u8") or path.name.endswith(".dat"):
            continue
        entries = re.split(r"\n%\n", path.read_text("utf-8", "replace"))
        for i in range(0, len(entries), 16):  # (16 quotes a document)
            yield _squash("\n\n".join(entries[i : i + 16]))


DEB_SOURCES = [
    DebSource("gcide", "dict-gcide", _dictd),
    DebSource("linux_doc", "linux-doc-6.1", _gz_rst),
    DebSource("python_doc", "python3.11-doc", _python_doc),
    DebSource("git_doc", "git-doc", _git_doc),
    DebSource("postgresql_doc", "postgresql-doc-15", _html_docs("usr/share/doc/postgresql-doc-15/html/*.html")),
    DebSource("sqlite_doc", "sqlite3-doc", _html_docs("usr/share/doc/sqlite3/**/*.html")),
    DebSource("debian_reference", "debian-reference-en", _html_docs("usr/share/debian-reference/**/*.en.html")),
    DebSource("fortunes", "fortunes", _fortunes),
    DebSource("jargon", "dict-jargon", _dictd),
]


def stdlib_files(held_out: bool) -> list[Path]:
    """The standard library's own .py files minus tests, split by a stable hash of the relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("test/", "site-packages/", "idlelib/idle_test/", "lib2to3/tests/")) or "/tests/" in rel:
            continue
        bucket = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % HELD_OUT_BUCKETS
        if (bucket == 0) == held_out:
            out.append(path)
    return out


def stdlib_documents(held_out: bool) -> Iterator[str]:
    for path in stdlib_files(held_out):
        text = path.read_text("utf-8", "replace").replace("\x1e", " ")
        yield from _chunks(text, 6000)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_deb(package: str, deb_dir: Path) -> Path:
    """`apt-get download` a package into deb_dir (once) and return the .deb's path."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(deb_dir.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=deb_dir, check=True)
        found = sorted(deb_dir.glob(f"{package}_*.deb"))
    return found[-1]


def write_documents(path: Path, docs: Iterator[str]) -> tuple[int, int]:
    n_docs = n_chars = 0
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            if len(doc) < 40:
                continue
            if n_docs:
                f.write(DOC_SEPARATOR)
            f.write(doc)
            n_docs += 1
            n_chars += len(doc)
    return n_docs, n_chars


def build_corpus(out_dir: Path, deb_dir: Path, sources: list[DebSource] = DEB_SOURCES) -> dict:
    """Fetch, unpack and extract every source into out_dir; returns (and writes) the manifest."""
    import platform

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"separator": DOC_SEPARATOR, "sources": []}
    for src in sources:
        deb = fetch_deb(src.package, deb_dir)
        unpacked = deb_dir / "unpacked" / src.package
        if not unpacked.exists():
            unpacked.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        version = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
        ).stdout.strip()
        n_docs, n_chars = write_documents(out_dir / f"{src.name}.txt", src.extract(unpacked))
        manifest["sources"].append(
            {"name": src.name, "package": src.package, "version": version, "sha256": _sha256(deb),
             "documents": n_docs, "characters": n_chars}
        )
        print(f"{src.name}: {n_docs} documents, {n_chars / 1e6:.1f} M characters", flush=True)
    n_docs, n_chars = write_documents(out_dir / "python_stdlib.txt", stdlib_documents(held_out=False))
    manifest["sources"].append(
        {"name": "python_stdlib", "package": f"python{platform.python_version()} standard library",
         "version": platform.python_version(), "sha256": None, "documents": n_docs, "characters": n_chars}
    )
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def read_documents(path: Path) -> list[str]:
    return path.read_text("utf-8").split(DOC_SEPARATOR)


def corpus_documents(corpus_dir: Path) -> Iterator[str]:
    for path in sorted(corpus_dir.glob("*.txt")):
        yield from read_documents(path)


def dashboard_documents(sample: Path | None = None) -> list[str]:
    """The held-out dashboard corpus, never seen in training: the standard-library files held out of it (on any
    machine with Python) interleaved with the shipped sample of validation text (Python documentation and
    standard library, PSF licence; see artifacts/demo/heldout.json). About 0.55M tokens."""
    import itertools

    from app.config import DEMO_DIR

    sample = sample or DEMO_DIR / "heldout.txt.gz"
    code = list(stdlib_documents(held_out=True))
    prose = gzip.open(sample, "rt", encoding="utf-8").read().split(DOC_SEPARATOR) if sample.exists() else []
    mixed = itertools.chain.from_iterable(itertools.zip_longest(code, prose))
    return [d for d in mixed if d is not None]
