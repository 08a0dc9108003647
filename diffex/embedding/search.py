"""Search a store by meaning: the edits or images nearest to a text or an image, through the
FAISS index derived from the database, joined with their node and classifier effects; and
the taxonomy nodes nearest to a word that may not be in the taxonomy.

    rows = search("data/demo.duckdb", text="a face with a goatee", k=10, class_name="old")
    nodes = nodes_like("data/demo.duckdb", "facial hair", k=5)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .stage import TextTemplates
from . import Embedder, load_embedder
from ..errors import DiffexError, OptionError, UsageError
from ..images import load_image
from ..store.core import Store
from .vectors import VectorIndex

KINDS = ("edit", "image")


def _open(db: "str | Path", cache_dir) -> Store:
    return Store.open(db, read_only=True, cache_dir=cache_dir)


def load_store_embedder(store: Store, which: "str | Embedder | None" = None) -> tuple[Embedder, dict]:
    """The embedder whose vectors the store holds (the most recent, or the one named by id,
    name or spec), reloaded from its recorded spec, or `which` itself when it is an Embedder
    or a spec of a model that has vectors here. Raises DiffexError if the model's weights or
    preprocessing changed since indexing: its vectors would not be comparable."""
    if isinstance(which, Embedder):
        row = _row_for(store, which.embedder_id)
        return which, row
    row = _stored_row(store, which)
    if row is None:  # a spec: load it; it must have vectors here
        emb = load_embedder(which)
        return emb, _row_for(store, emb.embedder_id)
    emb = load_embedder(row["spec"])
    if emb.embedder_id != row["embedder_id"]:
        raise DiffexError(
            f"the model at {row['spec']} is not the one that made this database's vectors "
            f"(id {emb.embedder_id[:12]} != {row['embedder_id'][:12]}): pass the original with --embedder SPEC"
        )
    return emb, row


def _stored_row(store: Store, which: str | None) -> dict | None:
    """The stored embedder named by id, id prefix, name or spec (None when `which` names none:
    it may be a spec to load), or the most recent one when `which` is None."""
    if which is None:
        return store.resolve_embedder(None)
    return store.find_embedder(which)


def _text_embedder(store: Store, which: "str | Embedder | None") -> tuple[Embedder, dict]:
    """What encodes a query TEXT: the numpy CLIP text encoder when it is known to reproduce the
    stored embedder (embedders/clip_text.py: no torch or transformers to import, ~3 s less),
    else the full embedder, as for image queries."""
    if not isinstance(which, Embedder):
        row = _stored_row(store, which)
        if row is not None:
            from .clip_text import stored_encoder

            fast = stored_encoder(row)
            if fast is not None:
                return fast, row
    return load_store_embedder(store, which)


def _row_for(store: Store, embedder_id: str) -> dict:
    for r in store.embedders():
        if r["embedder_id"] == embedder_id:
            return r
    known = ", ".join(r["spec"] or r["name"] for r in store.embedders()) or "none"
    raise DiffexError(f"{store.path} holds no vectors of embedder {embedder_id[:12]} (it has: {known}); "
                      "vectors of different models never mix: index with --embedder SPEC first")


def search(
    db: "str | Path",
    text: str | None = None,
    image: "str | Path | None" = None,
    k: int = 20,
    kind: str = "edit",
    class_name: str | None = None,
    classifier: str | None = None,
    embedder: "str | Embedder | None" = None,
    cache_dir: "str | Path | None" = None,
) -> list[dict[str, Any]]:
    """The k edits (kind='edit', baselines excluded) or original images (kind='image') nearest
    to `text` or to the image file `image`, best first. Each row: rank, similarity, kind, node,
    path, direction, valid, edit_id, image_id, uri, cache_path (absolute), and with class_name:
    class_name, prob (of the edit or image) and delta_prob (edit minus its baseline).
    Opens the store read-only; raises DiffexError / UsageError."""
    # 1. check inputs
    if (text is None) == (image is None):
        raise OptionError("image", "or a query text: give exactly one")
    if text is not None and not str(text).strip():
        raise UsageError("empty query text")
    if kind not in KINDS:
        raise OptionError("kind", f"{kind!r} is unknown; valid: {', '.join(KINDS)}")
    if k < 1:
        raise OptionError("k", f"must be at least 1, got {k}")
    store = _open(db, cache_dir)
    try:
        clf = store.check_class(class_name, classifier) if class_name is not None else None
        # 2. encode the query with the model that made the stored vectors
        if text is not None:
            emb, row = _text_embedder(store, embedder)
            query = emb.embed_texts([str(text)])[0]
        else:
            emb, row = load_store_embedder(store, embedder)
            query = emb.embed_images([load_image(Path(image))])[0]
        # 3. nearest neighbours in the FAISS index (widened until k rows of the wanted kind)
        index = VectorIndex.open(store, row["embedder_id"])
        kinds = _item_kinds(store, index.item_ids)
        want = (lambda i: kinds.get(i) in ("single", "joint")) if kind == "edit" else (lambda i: kinds.get(i) == "image")
        n_wanted = sum(1 for i in index.item_ids if want(i))
        fetch = min(len(index), max(4 * k, k + 64))
        while True:
            hits = _distinct_pixels(store, [(i, s) for i, s in index.search(query, fetch, embedder_id=emb.embedder_id) if want(i)])
            if len(hits) >= min(k, n_wanted) or fetch >= len(index):
                break
            fetch = min(len(index), fetch * 4)
        hits = hits[:k]
        # 4. join with nodes, validity and classifier effects
        return _describe(store, hits, kind, clf, class_name)
    finally:
        store.close()


def _distinct_pixels(store: Store, hits: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Keep one hit per edited picture: two seeds (or two nodes) often produce the same pixels,
    and listing the same image twice wastes the user's k."""
    shas = store.edit_pixel_hashes([i for i, _ in hits])
    seen: set[str] = set()
    out = []
    for item_id, sim in hits:
        key = shas.get(item_id) or item_id
        if key not in seen:
            seen.add(key)
            out.append((item_id, sim))
    return out


def _item_kinds(store: Store, item_ids: list[str]) -> dict[str, str]:
    """item id -> 'image', the edit's kind ('baseline' | 'single' | 'joint'), or its status when
    it is not 'ok' (a blocked edit's blank pixels are never a search result)."""
    return store.item_kinds(item_ids)


def _describe(store: Store, hits: list[tuple[str, float]], kind: str, clf: dict | None, class_name: str | None) -> list[dict]:
    ids = [i for i, _ in hits]
    clf_id = clf["classifier_id"] if clf else None
    rows = store.describe_edits(ids, clf_id, class_name) if kind == "edit" else store.describe_images(ids, clf_id, class_name)
    by_id = {(r["edit_id"] or r["image_id"]): r for r in rows}
    out = []
    for rank, (item_id, sim) in enumerate(hits, start=1):
        r = by_id[item_id]
        row = {"rank": rank, "similarity": round(sim, 4), "kind": kind, "node": r["node"], "path": r["path"],
               "direction": r["direction"], "valid": r["valid"], "edit_id": r["edit_id"], "image_id": r["image_id"],
               "uri": r["uri"], "cache_path": str(store.cache.path(r["cache_path"]).resolve()) if r["cache_path"] else None}
        if clf is not None:
            row.update({"class_name": class_name, "prob": r["prob"], "delta_prob": r["delta_prob"],
                        "classifier_name": clf["spec"] or clf["name"]})
        out.append(row)
    return out


def nodes_like(
    db: "str | Path", text: str, k: int = 10, embedder: "str | Embedder | None" = None,
    cache_dir: "str | Path | None" = None,
) -> list[dict[str, Any]]:
    """Taxonomy nodes whose concept texts lie nearest to `text` (which need not be a label):
    rank, similarity, node, path, depth, parent. The text is put in the same template as the
    node texts ("a face with {text}") unless it already reads as a caption ("a ...")."""
    if not text or not str(text).strip():
        raise UsageError("empty query text")
    if k < 1:
        raise OptionError("k", f"must be at least 1, got {k}")
    store = _open(db, cache_dir)
    try:
        emb, row = _text_embedder(store, embedder)
        templates = TextTemplates(domain=store.newest_domain())
        phrase = str(text).strip()
        query_text = phrase if phrase.lower().startswith(("a ", "an ", "the ")) else templates.concept_text(phrase.lower())
        query, neutral = emb.embed_texts([query_text, templates.neutral_text()])
        ids, _, matrix = store.embeddings(row["embedder_id"], kinds=["node"])
        if not ids:
            raise DiffexError(f"{store.path} has no node vectors for {row['spec'] or row['name']}")
        # compare concept directions (text minus the neutral "a face"), not whole captions:
        # the shared template otherwise makes every node look alike
        dirs = matrix - neutral[None, :]
        q = query - neutral
        sims = (dirs @ q) / np.maximum(np.linalg.norm(dirs, axis=1) * np.linalg.norm(q), 1e-12)
        order = np.argsort(-sims, kind="stable")[:k]
        nodes = {r["node_id"]: r for r in store.node_rows([ids[j] for j in order])}
        return [{"rank": r + 1, "similarity": round(float(sims[j]), 4), "node": nodes[ids[j]]["label"],
                 "path": nodes[ids[j]]["path"], "depth": nodes[ids[j]]["depth"], "parent": nodes[ids[j]]["parent"]}
                for r, j in enumerate(order)]
    finally:
        store.close()
