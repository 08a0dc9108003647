"""CLIP embeddings, the FAISS index derived from the database, and edit validity: mechanics,
with tiny random CLIP models built here and loaded through `clip:PATH`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffex.errors import DiffexError
from diffex.store.core import Store

TAXONOMY = {
    "domain": "cartoon faces",
    "categories": {
        "facial hair": {"beard": ["goatee"]},
        "eyewear": ["round glasses", "monocle"],  # the demo world knows no monocle: a failed edit
    },
}


def _byte_chars() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tiny_clip(folder: Path, seed: int) -> Path:
    """A random-weight CLIPModel (32 px, byte-level vocabulary, EOS the last id) with its
    tokenizer and image processor, saved like any Hugging Face model folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = _byte_chars()
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16,
    ))
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


@pytest.fixture(scope="session")
def other_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("other-clip"), seed=1)


@pytest.fixture
def taxonomy(tmp_path) -> Path:
    path = tmp_path / "taxonomy.json"
    path.write_text(json.dumps(TAXONOMY))
    return path


def _index(db, images, taxonomy, clip, brightness, **kw):
    from diffex.indexing.indexer import run_index

    return run_index(db, [str(i) for i in images], taxonomy, brightness, "demo", beam=0, samples=1,
                     embedder=f"clip:{clip}", **kw)


def _images(demo_images, n):
    return sorted(Path(demo_images).glob("*.png"))[:n]


# --------------------------------------------------------------------------- the embedder


def test_clip_embedder_loads_from_a_folder_with_unit_vectors(tiny_clip, demo_images):
    from diffex.embedding import load_embedder

    emb = load_embedder(f"clip:{tiny_clip}")
    images = [Image.open(p).convert("RGB") for p in _images(demo_images, 3)]
    vecs = emb.embed_images(images)
    texts = emb.embed_texts(["a face with a goatee", "a face"])
    assert vecs.shape == (3, 16) and texts.shape == (2, 16) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert np.allclose(emb.embed_images(images[:1]), vecs[:1], atol=1e-6)  # batching changes nothing
    assert emb.spec == f"clip:{tiny_clip.resolve()}" and emb.dim == 16
    again = load_embedder(f"clip:{tiny_clip}")
    assert again.embedder_id == emb.embedder_id and len(emb.embedder_id) == 32


def test_bad_embedder_specs_are_one_line_errors(tmp_path, monkeypatch):
    from diffex.embedding import load_embedder

    with pytest.raises(DiffexError, match="unknown embedder spec"):
        load_embedder("nope:x")
    with pytest.raises(DiffexError, match="no CLIP model directory at"):
        load_embedder(f"clip:{tmp_path / 'missing'}")
    # a hub id resolves through the local cache only, whatever HF_HUB_OFFLINE says
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(DiffexError, match=r"'nobody/no-such-clip-model' is not in the local Hugging Face cache \("
                                          + re.escape(str(tmp_path / "empty-hub"))):
        load_embedder("clip:nobody/no-such-clip-model")


def test_legacy_eos_config_with_a_foreign_vocabulary_is_refused(tiny_clip, tmp_path):
    # transformers pools at the highest token id when eos_token_id == 2 (DEMO-NOTES' silent bug)
    from diffex.embedding import load_embedder

    broken = tmp_path / "broken"
    shutil.copytree(tiny_clip, broken)
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 2
    (broken / "config.json").write_text(json.dumps(config))
    tok = json.loads((broken / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["<|endoftext|>"], vocab["zzz"] = 5, vocab["<|endoftext|>"]  # EOS no longer the last id
    for added in tok.get("added_tokens", []):
        if added["content"] == "<|endoftext|>":
            added["id"] = 5
    (broken / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(DiffexError, match="eos_token_id"):
        load_embedder(f"clip:{broken}")


# --------------------------------------------------------------------------- storage and validity


def test_index_stores_vectors_and_validity(tmp_path, demo_images, taxonomy, tiny_clip, brightness):
    db = tmp_path / "x.duckdb"
    stats = _index(db, _images(demo_images, 2), taxonomy, tiny_clip, brightness)
    # 2 originals + 2 baselines + 2 images x 6 nodes single edits
    assert stats.embeddings_computed == 2 + 2 + 12
    with Store.open(db, read_only=True) as store:
        (emb,) = store.embedders()
        assert emb["dim"] == 16 and emb["metric"] == "cosine" and emb["spec"] == f"clip:{tiny_clip.resolve()}"
        kinds = dict(store.con.execute(
            "SELECT item_kind, count(*) FROM embeddings GROUP BY ALL").fetchall())
        assert kinds["image"] == 2 and kinds["edit"] == 14 and kinds["node"] == 6
        assert kinds["text"] == 7  # six concept texts and the neutral "a face"
        ids, _, matrix = store.embeddings(emb["embedder_id"], kinds=["edit"])
        assert matrix.shape == (14, 16) and np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-5)
        rows = store._rows(
            """SELECT n.label, v.direction_sim, v.baseline_sim, v.valid, v.threshold FROM edit_validity v
               JOIN edit_nodes en USING (edit_id) JOIN nodes n USING (node_id)""")
    assert len(rows) == 12
    monocle = [r for r in rows if r["label"] == "monocle"]
    assert len(monocle) == 2 and all(r["direction_sim"] == 0 and not r["valid"] for r in monocle)
    assert all(abs(r["baseline_sim"] - 1) < 1e-5 for r in monocle)  # the image did not change
    assert all(r["threshold"] == 0.2 for r in rows)  # no calibration file: the default
    # nothing is recomputed the second time
    again = _index(db, _images(demo_images, 2), taxonomy, tiny_clip, brightness)
    assert again.embeddings_computed == 0 and again.edits_computed == 0


def test_validity_threshold_override_and_views(tmp_path, demo_images, taxonomy, tiny_clip, brightness):
    from diffex.store.query import run_query

    db = tmp_path / "x.duckdb"
    _index(db, _images(demo_images, 2), taxonomy, tiny_clip, brightness, validity_threshold=-1.0)
    # every edit that changed something clears -1; the unchanged monocle edits (0) too
    rows = run_query(db, "SELECT node, n_edits, n_invalid FROM top_nodes('bright', 20)").dicts()
    assert all(r["n_invalid"] == 0 for r in rows)
    _index(db, _images(demo_images, 2), taxonomy, tiny_clip, brightness, validity_threshold=0.01)
    rows = {r["node"]: r for r in run_query(db, "SELECT * FROM top_nodes('bright', 20)").dicts()}
    assert rows["monocle"]["n_invalid"] == 2 and rows["monocle"]["n_edits"] == 0
    assert rows["monocle"]["mean_delta_prob"] is None
    every = {r["node"]: r for r in run_query(
        db, "SELECT * FROM top_nodes('bright', 20, include_invalid := TRUE)").dicts()}
    assert every["monocle"]["n_edits"] == 2 and every["monocle"]["mean_delta_prob"] == 0
    n_all = run_query(db, "SELECT sum(n_edits) FROM node_effects_all WHERE class_name = 'bright'").rows[0][0]
    assert n_all == 12


# --------------------------------------------------------------------------- the FAISS index


def test_faiss_index_is_rebuilt_when_missing_or_corrupt(tmp_path, demo_images, taxonomy, tiny_clip, brightness):
    from diffex.embedding.vectors import VectorIndex, vector_dir

    db = tmp_path / "x.duckdb"
    _index(db, _images(demo_images, 2), taxonomy, tiny_clip, brightness)
    with Store.open(db, read_only=True) as store:
        emb_id = store.resolve_embedder()["embedder_id"]
        first = VectorIndex.open(store, emb_id)
        assert first.status == "rebuilt" and len(first) == 16  # images and edits, not texts
        assert VectorIndex.open(store, emb_id).status == "fresh"
        path = vector_dir(store) / f"{emb_id}.faiss"
        path.unlink()
        again = VectorIndex.open(store, emb_id)
        assert again.status == "rebuilt" and path.exists()
        path.write_bytes(b"not a faiss file")
        assert VectorIndex.open(store, emb_id).status == "rebuilt"
        # a search returns the stored vector itself first
        ids, _, matrix = store.embeddings(emb_id, kinds=["edit"])
        hits = VectorIndex.open(store, emb_id).search(matrix[3], 3)
        assert hits[0][1] == pytest.approx(1.0, abs=1e-5)  # (an unchanged edit ties with its baseline)
        assert ids[3] in [i for i, s in hits if s == pytest.approx(1.0, abs=1e-5)]


def test_stale_index_is_extended_after_rows_are_added(tmp_path, demo_images, taxonomy, tiny_clip, brightness):
    from diffex.embedding.vectors import VectorIndex

    db = tmp_path / "x.duckdb"
    _index(db, _images(demo_images, 2), taxonomy, tiny_clip, brightness)
    with Store.open(db, read_only=True) as store:
        emb_id = store.resolve_embedder()["embedder_id"]
        assert len(VectorIndex.open(store, emb_id)) == 16
    _index(db, _images(demo_images, 3), taxonomy, tiny_clip, brightness)
    with Store.open(db, read_only=True) as store:
        index = VectorIndex.open(store, emb_id)
        assert index.status == "extended" and len(index) == 24
        assert sorted(index.item_ids) == store.embeddings(emb_id, kinds=["image", "edit"])[0]
        assert VectorIndex.open(store, emb_id).status == "fresh"
    # a vector changed behind the index's back: the checksum differs, the file is rebuilt
    with Store.open(db) as store:
        store.con.execute("UPDATE embeddings SET vector = list_transform(vector, lambda x: -x) "
                          "WHERE item_id = (SELECT min(item_id) FROM embeddings WHERE item_kind = 'edit')")
        assert VectorIndex.open(store, emb_id).status == "rebuilt"


def test_vectors_of_different_models_never_mix(tmp_path, demo_images, taxonomy, tiny_clip, other_clip, brightness):
    from diffex.embedding import load_embedder
    from diffex.embedding.search import search
    from diffex.embedding.vectors import VectorIndex, vector_dir

    db = tmp_path / "x.duckdb"
    _index(db, _images(demo_images, 2), taxonomy, tiny_clip, brightness)
    a, b = load_embedder(f"clip:{tiny_clip}"), load_embedder(f"clip:{other_clip}")
    assert a.embedder_id != b.embedder_id
    # a model with no vectors in the store is refused, not silently compared
    with pytest.raises(DiffexError, match="never mix"):
        search(db, text="a face with a goatee", embedder=f"clip:{other_clip}")
    _index(db, _images(demo_images, 2), taxonomy, other_clip, brightness)
    with Store.open(db, read_only=True) as store:
        assert len(store.embedders()) == 2
        ia = VectorIndex.open(store, a.embedder_id)
        with pytest.raises(DiffexError, match="never mix"):
            ia.search(b.embed_texts(["a face"])[0], 3, embedder_id=b.embedder_id)
        # A's file put in B's place is detected and rebuilt from B's rows
        folder = vector_dir(store)
        for suffix in (".faiss", ".json"):
            shutil.copyfile(folder / f"{a.embedder_id}{suffix}", folder / f"{b.embedder_id}{suffix}")
        ib = VectorIndex.open(store, b.embedder_id)
        assert ib.status == "rebuilt"
        ids, _, mb = store.embeddings(b.embedder_id, kinds=["edit"])
        assert ib.search(mb[0], 1)[0][1] == pytest.approx(1.0, abs=1e-5) and set(ib.item_ids) >= set(ids)
    rows_b = search(db, text="a face with a goatee", k=3, embedder=f"clip:{other_clip}")
    assert len(rows_b) == 3


def test_search_rows_and_cli(tmp_path, demo_images, taxonomy, tiny_clip, brightness, cli_run):
    from diffex.embedding.search import search

    db = tmp_path / "x.duckdb"
    images = _images(demo_images, 2)
    res = cli_run("index", "--db", db, "--images", images[0], "--images", images[1], "--taxonomy", taxonomy,
                  "--classifier", brightness, "--beam", "0", "--samples", "1", "--embedder", f"clip:{tiny_clip}", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["embeddings_computed"] == 16
    rows = search(db, text="a face with a goatee", k=5, class_name="bright")
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["kind"] == "edit" and r["node"] in {"goatee", "beard", "facial hair", "eyewear", "round glasses", "monocle"}
               for r in rows)
    assert all(Path(r["cache_path"]).is_file() and isinstance(r["delta_prob"], float) for r in rows)
    sims = [r["similarity"] for r in rows]
    assert sims == sorted(sims, reverse=True)
    images_rows = search(db, image=images[0], k=2, kind="image")
    assert images_rows[0]["image_id"] and images_rows[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    res = cli_run("search", "--db", db, "a face with a goatee", "--k", "3", "--class", "bright", "--format", "json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out) == 3 and {"node", "similarity", "delta_prob", "edit_id", "cache_path"} <= set(out[0])
    res = cli_run("search", "--db", db, "a face", "--class", "nope")
    assert res.exit_code == 1 and "unknown class" in res.output
    res = cli_run("search", "--db", db)
    assert res.exit_code == 2
    res = cli_run("search", "--db", db, "--nodes", "glasses", "--format", "json")
    assert res.exit_code == 0 and len(json.loads(res.output)) == 6
