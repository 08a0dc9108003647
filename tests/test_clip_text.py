"""The numpy CLIP text encoder that lets `diffex search` answer a text query without importing
torch or transformers: the same tokens and vectors as transformers, used only for a model
whose files are known to give the stored embedder id, and never for a model that changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffex.embedding.clip_text import ClipTextEncoder, files_key, stored_encoder
from diffex.errors import DiffexError

from test_embeddings import _images, _index, build_tiny_clip, other_clip, taxonomy, tiny_clip  # noqa: F401 (fixtures)

DEMO_CLIP = Path(__file__).resolve().parents[1] / "diffex" / "demo" / "clip"
TEXTS = ["a face with a goatee", "A FACE  with\ta Top-Hat!", "café émoji 😀 don't", "word " * 60, "", "a face"]


def _edit_config(folder: Path, **text_config) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["text_config"].update(text_config)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    """Random CLIPs of every kind the encoder claims, plus the shipped demo CLIP."""
    root = tmp_path_factory.mktemp("clip-variants")
    out = {"demo": DEMO_CLIP, "quick_gelu": build_tiny_clip(root / "quick", seed=3)}
    out["gelu_new"] = build_tiny_clip(root / "gelu-new", seed=4)
    _edit_config(out["gelu_new"], hidden_act="gelu_new")
    # the legacy config that pools at the highest token id (EOS is the highest id here, so it is valid)
    out["legacy_eos"] = build_tiny_clip(root / "legacy", seed=5)
    _edit_config(out["legacy_eos"], eos_token_id=2)
    return out


@pytest.mark.parametrize("kind", ["demo", "quick_gelu", "gelu_new", "legacy_eos"])
def test_same_tokens_and_vectors_as_transformers(kind, variants):
    from diffex.embedding import load_embedder

    folder = variants[kind]
    full = load_embedder("demo" if kind == "demo" else f"clip:{folder}")
    fast = ClipTextEncoder.open(folder)
    assert fast is not None and fast.max_length == full.max_length and fast.dim == full.dim
    for text in TEXTS:
        expected = full.tokenizer([text], truncation=True, max_length=full.max_length)["input_ids"][0]
        assert fast.ids(text) == expected, text
    got, want = fast.embed_texts(TEXTS), full.embed_texts(TEXTS)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    # not a constant: different texts, different vectors
    assert float(got[0] @ got[3]) < 0.999


def test_models_it_cannot_reproduce_exactly_are_left_to_transformers(tmp_path, variants):
    def copy(name):
        return Path(shutil.copytree(variants["quick_gelu"], tmp_path / name))

    _edit_config(copy("erf-gelu"), hidden_act="gelu")
    (copy("no-tokenizer-json") / "tokenizer.json").unlink()
    config = json.loads((copy("not-clip") / "config.json").read_text())
    (tmp_path / "not-clip" / "config.json").write_text(json.dumps({**config, "model_type": "siglip"}))
    half = copy("float16")
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(half / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in weights.items()}, str(half / "model.safetensors"))
    for name in ("erf-gelu", "no-tokenizer-json", "not-clip", "float16"):
        assert ClipTextEncoder.open(tmp_path / name) is None, name
    assert ClipTextEncoder.open(tmp_path / "nothing-here") is None


def test_only_files_known_to_give_the_stored_id_are_trusted(tmp_path, variants, monkeypatch):
    monkeypatch.setenv("DIFFEX_CACHE_DIR", str(tmp_path / "memo"))
    folder = Path(shutil.copytree(variants["quick_gelu"], tmp_path / "model"))
    row = {"embedder_id": "f" * 32, "spec": f"clip:{folder}", "name": "clip"}
    assert stored_encoder(row) is None  # nothing known about these files yet
    from diffex.embedding import load_embedder

    emb = load_embedder(f"clip:{folder}")
    row["embedder_id"] = emb.embedder_id  # computing the id records the files it came from
    fast = stored_encoder(row)
    assert fast is not None and fast.embedder_id == emb.embedder_id
    assert np.abs(fast.embed_texts(["a face"]) - emb.embed_texts(["a face"])).max() < 1e-5
    with pytest.raises(DiffexError, match="texts only"):
        fast.embed_images([])
    before = files_key(folder)
    shutil.copyfile(variants["gelu_new"] / "model.safetensors", folder / "model.safetensors")  # retrained in place
    assert files_key(folder) != before and stored_encoder(row) is None
    assert stored_encoder({**row, "spec": "clip:org/not-cached"}) is None
    assert stored_encoder({**row, "spec": "python:whatever"}) is None


def _search_in_subprocess(db: Path, cache: Path) -> dict:
    code = ("import json, sys; from diffex.embedding.search import search, nodes_like; "
            f"rows = search({str(db)!r}, text='a face with a goatee', k=4, class_name='bright'); "
            f"nodes = nodes_like({str(db)!r}, 'glasses', k=3); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules, "
            "'rows': rows, 'nodes': nodes}))")
    env = {**os.environ, "DIFFEX_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_search_answers_text_queries_without_torch_and_the_same_rows(tmp_path, demo_images, taxonomy, tiny_clip,
                                                                     other_clip, brightness):
    from diffex.embedding import load_embedder
    from diffex.embedding.search import nodes_like, search

    db = tmp_path / "x.duckdb"
    model = Path(shutil.copytree(tiny_clip, tmp_path / "clip"))
    _index(db, _images(demo_images, 2), taxonomy, model, brightness)
    full = load_embedder(f"clip:{model}")
    want = search(db, text="a face with a goatee", k=4, class_name="bright", embedder=full)
    want_nodes = nodes_like(db, "glasses", k=3, embedder=full)
    # a user cache that has never seen the model: the full embedder answers, and records the files
    cold = _search_in_subprocess(db, tmp_path / "fresh-user-cache")
    assert cold["torch"] and cold["transformers"]
    warm = _search_in_subprocess(db, tmp_path / "fresh-user-cache")
    assert not warm["torch"] and not warm["transformers"]
    for got in (cold, warm):
        assert [r["edit_id"] for r in got["rows"]] == [r["edit_id"] for r in want]
        assert [r["similarity"] for r in got["rows"]] == pytest.approx([r["similarity"] for r in want], abs=1e-4)
        assert [r["node"] for r in got["nodes"]] == [r["node"] for r in want_nodes]
    # the model replaced in place after indexing: not trusted, and the full check refuses it
    shutil.copyfile(other_clip / "model.safetensors", model / "model.safetensors")
    with pytest.raises(DiffexError, match="is not the one that made this database's vectors"):
        search(db, text="a face with a goatee", k=4)
