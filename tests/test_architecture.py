"""The folder layout is the architecture (docs/architecture.md): imports only run down the
layers, and the walls between them hold. Imports are read with `ast` from the source, so a
lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import diffex

PACKAGE = Path(diffex.__file__).resolve().parent
REPO = PACKAGE.parent

# Lowest first; a module may import its own layer and the layers below, never one above.
# The same table is drawn in docs/architecture.md (a test keeps the two in step). Patterns match
# dotted module names.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", [r"diffex\.(errors|types|hashing|progress|images|specs|models|atomic|user_code)"]),
    ("backends", [r"diffex\.demo(\..*)?", r"diffex\.taxonomy", r"diffex\.taxonomy\.(tree|formats|answer|vlm.*)",
                  r"diffex\.editing", r"diffex\.editing\.(?!stage$).*",
                  r"diffex\.scoring", r"diffex\.scoring\.(?!stage$).*",
                  r"diffex\.embedding", r"diffex\.embedding\.(base|clip|clip_text)"]),
    ("store", [r"diffex\.store(\..*)?"]),
    ("stages", [r"diffex\.(editing|scoring|embedding)\.stage", r"diffex\.embedding\.(vectors|search|side_effects)",
                r"diffex\.taxonomy\.(curation|propose)"]),
    ("analysis", [r"diffex\.analysis(\..*)?"]),
    ("runs", [r"diffex\.indexing(\..*)?", r"diffex\.report(\..*)?"]),
    ("front door", [r"diffex"]),  # diffex/__init__.py: the public names, imported lazily
]
BACKENDS = "backends"


def layer_of(module: str) -> int:
    hits = [i for i, (_, patterns) in enumerate(LAYERS) if any(re.fullmatch(p, module) for p in patterns)]
    assert hits, f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md"
    return hits[0]


def library_modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved; for
    `from pkg import name` the target is pkg.name when that is a module, else pkg."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if sub in known else target))
    return out


def graph(root: Path = PACKAGE) -> list[tuple[str, int, str]]:
    mods = library_modules(root)
    known = set(mods)
    return [(m, line, t) for m, p in mods.items() for line, t in imports_of(m, p, known)]


def upward_arrows(edges) -> list[str]:
    bad = []
    for module, line, target in edges:
        if not target.startswith("diffex") or target.startswith("diffex.cli") or target.startswith("diffex.schema"):
            continue
        if layer_of(target) > layer_of(module):
            bad.append(f"{module}:{line} imports {target} ({LAYERS[layer_of(module)][0]} -> {LAYERS[layer_of(target)][0]})")
    return bad


def wall_breaches(edges) -> list[str]:
    def top(name):
        return name.split(".")[0]

    bad = []
    for module, line, target in edges:
        where = f"{module}:{line} imports {target}"
        layer = LAYERS[layer_of(module)][0]
        if top(target) == "click" or target.startswith("diffex.cli"):
            bad.append(f"{where}: the library never imports the CLI or click")
        if module.startswith("diffex.store") and top(target) in {"torch", "transformers", "diffusers", "faiss", "safetensors"}:
            bad.append(f"{where}: the store knows no model")
        if module.startswith("diffex.store") and target.startswith(("diffex.editing", "diffex.scoring", "diffex.embedding", "diffex.demo")):
            bad.append(f"{where}: the store knows no backend")
        if layer == BACKENDS and (top(target) == "duckdb" or target.startswith("diffex.store")):
            bad.append(f"{where}: backends know no database")
        if top(target) == "faiss" and module != "diffex.embedding.vectors":
            bad.append(f"{where}: faiss only in the vector index (diffex/embedding/vectors.py)")
        if top(target) == "ray" and module != "diffex.indexing.ray_pool":
            bad.append(f"{where}: ray only in the Ray executor (diffex/indexing/ray_pool.py)")
        if top(target) == "diffusers" and not (module.startswith("diffex.editing.") and layer == BACKENDS):
            bad.append(f"{where}: diffusers only in editing backends")
    return bad


def test_every_library_module_has_a_layer():
    for module in library_modules():
        layer_of(module)


def test_the_drawing_in_the_docs_has_these_layers_in_this_order():
    """docs/architecture.md draws LAYERS top down; the two must not drift apart."""
    drawing = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8").split("```")[1]
    drawn = re.findall(r"^  ([a-z]+)\s{2,}\S", drawing, re.M)
    assert drawn == [name for name, _ in reversed(LAYERS) if name != "front door"]


def test_no_import_runs_back_up_the_layers():
    bad = upward_arrows(graph())
    assert not bad, "imports that run back up the layers (docs/architecture.md):\n" + "\n".join(bad)


def test_the_walls_hold():
    bad = wall_breaches(graph())
    assert not bad, "\n".join(bad)


def test_models_load_only_through_the_policy():
    """from_pretrained / torch.load / safetensors load_file only in diffex/models.py."""
    pattern = re.compile(r"\bfrom_pretrained\b|\btorch\.load\b|\bload_file\b|\bhf_hub_download\b|\bsnapshot_download\b")
    offenders = [f"{path.relative_to(REPO)}:{i}: {line.strip()}"
                 for path in library_modules().values() if path != PACKAGE / "models.py"
                 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if pattern.search(line)]
    assert not offenders, "load models through diffex/models.py:\n" + "\n".join(offenders)


def test_long_modules_say_why():
    """A module over ~400 lines says at its top why it is one file."""
    long = []
    for module, path in library_modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 400 and "one file" not in text[:1500].lower() and "one module" not in text[:1500].lower():
            long.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    assert not long, "long modules without a reason at the top:\n" + "\n".join(long)


# ---------------------------------------------------------------- the checks can fail
@pytest.mark.parametrize("module_path, line, expect", [
    ("store/core.py", "import torch", "the store knows no model"),
    ("store/core.py", "from ..editing import load_editor", "the store knows no backend"),
    ("scoring/hf.py", "import duckdb", "backends know no database"),
    ("scoring/hf.py", "from ..store import Store", "backends know no database"),
    ("analysis/beam.py", "import click", "never imports the CLI"),
    ("taxonomy/tree.py", "from ..cli import main", "never imports the CLI"),
    ("embedding/search.py", "import faiss", "faiss only in the vector index"),
    ("scoring/clip.py", "from diffusers import DDIMScheduler", "diffusers only in editing backends"),
    ("editing/stage.py", "import diffusers", "diffusers only in editing backends"),
    ("indexing/indexer.py", "import ray", "ray only in the Ray executor"),
    ("store/query.py", "from ..indexing.indexer import run_index", "store -> runs"),
    ("demo/world.py", "from ..indexing import indexer", "backends -> runs"),
    ("scoring/base.py", "from .stage import ensure_scores", "backends -> stages"),
])
def test_a_bad_import_is_caught(tmp_path, module_path, line, expect):
    """Copy the package, add one bad import, and the checks above report it."""
    import shutil

    copy = tmp_path / "diffex"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "clip", "weights"))
    target = copy / module_path
    target.write_text(target.read_text(encoding="utf-8") + f"\n\ndef _bad():\n    {line}\n", encoding="utf-8")
    edges = graph(copy)
    found = upward_arrows(edges) + wall_breaches(edges)
    assert any(expect in f for f in found), found
    assert not upward_arrows(graph(PACKAGE)) + wall_breaches(graph(PACKAGE))
