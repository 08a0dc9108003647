"""The embed stage: CLIP vectors of originals, baselines, edits and node texts, stored in the
database (the source of truth), and the validity of every single edit.

Edit validity answers "did the edit really show the concept?", which the reference code never
asks (a failed edit reads there as "this semantic has no effect"):

    direction_sim = cos(E(edit) - E(baseline), s * (T(concept text) - T(neutral text)))
    baseline_sim  = cos(E(edit), E(baseline))
    valid         = direction_sim >= threshold

with s = +1 for "add" and -1 for "remove" (removing a concept moves the image away from it),
the concept text `"a face with goatee"` and the neutral text `"a face"` built from the
taxonomy's domain (see `TextTemplates`). An edit made for a node with subtypes ("beard",
"background") shows one of them, so its direction_sim is the best over the node's own text and
those of all its descendants. An edit that changed nothing has no direction:
direction_sim = 0 and it is invalid, whether the editor failed or the concept was already
there; either way the edit says nothing about the concept's effect.

The threshold comes from the embedder (a model may ship a calibrated one: the demo CLIP's is
measured by bench/demo_clip.py on edits whose truth is known) or from the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .base import Embedder
from ..hashing import sha256_bytes
from ..progress import in_chunks
from ..store.core import Store

CHUNK = 256  # images embedded and committed together
NO_CHANGE = 1e-6  # |E(edit) - E(baseline)| below this: the edit changed nothing visible to the model


def subject_for(domain: str | None) -> str:
    """The noun a caption is about, from the taxonomy's domain: "cartoon faces" -> "face",
    "birds" -> "bird", anything unknown -> "photo"."""
    words = re.findall(r"[a-z]+", (domain or "").lower())
    if not words or words[-1] in {"images", "image", "photos", "photo", "pictures", "picture"}:
        return "photo"
    word = words[-1]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


@dataclass(frozen=True)
class TextTemplates:
    """How a concept becomes text. `{subject}` is filled from the domain, `{concept}` with the
    node's prompt: "a face with goatee" against the neutral "a face"."""

    concept: str = "a {subject} with {concept}"
    neutral: str = "a {subject}"
    domain: str | None = None

    def concept_text(self, prompt: str) -> str:
        return self.concept.format(subject=subject_for(self.domain), concept=prompt)

    def neutral_text(self) -> str:
        return self.neutral.format(subject=subject_for(self.domain))


def text_id(text: str) -> str:
    """Item id of a text's vector: a hash of the text (kind 'text')."""
    return "text:" + sha256_bytes(text.encode("utf-8"))[:32]


def ensure_embeddings(
    store: Store,
    embedder: Embedder,
    items: Sequence[tuple[str, str, Callable[[], Image.Image]]],
    progress: Callable | None = None,
    executor: Any = None,
) -> int:
    """`items` are (item_id, item_kind, loader); embeds and stores those this embedder has not
    stored yet, CHUNK at a time (an interrupted run keeps finished chunks). Returns how many.
    `executor`: where the chunks are embedded (None: here; see diffex/indexing/ray_pool.py)."""
    emb_id = embedder.embedder_id
    unique = {i: (kind, load) for i, kind, load in items}
    done = store.embedded_items(emb_id, list(unique))
    todo = [(i, kind, load) for i, (kind, load) in unique.items() if i not in done]
    if executor is None:
        done_chunks = ((c, embedder.embed_images([load() for _, _, load in c]))
                       for c in in_chunks(todo, CHUNK, progress, desc="embedding"))
    else:  # the same chunks, embedded elsewhere, in the order they finish
        done_chunks = executor.map_chunks("embed", [todo[s : s + CHUNK] for s in range(0, len(todo), CHUNK)],
                                          progress, desc="embedding")
    for chunk, vectors in done_chunks:
        store.add_embeddings(emb_id, [i for i, _, _ in chunk], [k for _, k, _ in chunk], vectors)
    return len(todo)


def ensure_texts(store: Store, embedder: Embedder, texts: Sequence[str]) -> dict[str, str]:
    """Embed the texts not stored yet (kind 'text'); returns {text: item id}."""
    ids = {t: text_id(t) for t in dict.fromkeys(texts)}
    done = store.embedded_items(embedder.embedder_id, list(ids.values()))
    todo = [t for t, i in ids.items() if i not in done]
    if todo:
        store.add_embeddings(embedder.embedder_id, [ids[t] for t in todo], ["text"] * len(todo), embedder.embed_texts(todo))
    return ids


def embed_nodes(store: Store, embedder: Embedder, nodes, templates: TextTemplates) -> int:
    """Store each node's vector (kind 'node', item id = node id) = the vector of its concept
    text, so SQL can rank edits and images by a node (`nearest_edits`). Returns texts embedded."""
    texts = {n.node_id: templates.concept_text(n.prompt) for n in nodes}
    before = len(store.embedded_items(embedder.embedder_id, [text_id(t) for t in texts.values()]))
    ids = ensure_texts(store, embedder, list(texts.values()) + [templates.neutral_text()])
    store.copy_embeddings(embedder.embedder_id, [(ids[t], node_id) for node_id, t in texts.items()], "node")
    return len(set(texts.values())) - before


def direction_scores(
    edit_vecs: np.ndarray, base_vecs: np.ndarray, concept_vecs: np.ndarray, neutral_vec: np.ndarray, signs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(direction_sim, baseline_sim) for rows of unit vectors; see the module docstring."""
    d_img = edit_vecs - base_vecs
    d_txt = (concept_vecs - neutral_vec[None, :]) * signs[:, None]
    n_img = np.linalg.norm(d_img, axis=1)
    n_txt = np.linalg.norm(d_txt, axis=1)
    changed = (n_img > NO_CHANGE) & (n_txt > NO_CHANGE)
    direction = np.where(changed, (d_img * d_txt).sum(1) / np.maximum(n_img * n_txt, 1e-12), 0.0)
    baseline = (edit_vecs * base_vecs).sum(1)
    return direction.astype(np.float64), np.clip(baseline, -1.0, 1.0).astype(np.float64)


def best_direction_scores(
    edit_vecs: np.ndarray, base_vecs: np.ndarray, concept_vecs: np.ndarray, neutral_vec: np.ndarray, signs: np.ndarray,
    owner: np.ndarray, n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`direction_scores` over (edit, concept) pairs, row i belonging to edit owner[i] of n: per
    edit the best direction_sim over its concepts (a group edit shows one of its subtypes) and
    its baseline_sim."""
    pair_dir, pair_base = direction_scores(edit_vecs, base_vecs, concept_vecs, neutral_vec, signs)
    direction = np.full(n, -np.inf)
    np.maximum.at(direction, owner, pair_dir)
    baseline = np.zeros(n)
    baseline[owner] = pair_base
    return direction, baseline


@dataclass
class ValidityCounts:
    computed: int = 0
    invalid: int = 0


def ensure_validity(
    store: Store, embedder: Embedder, edit_ids: Sequence[str], templates: TextTemplates, threshold: float | None = None,
) -> ValidityCounts:
    """Score the validity of the single edits among `edit_ids` (their vectors and their
    baselines' must be stored). Rows already stored with the same threshold are kept."""
    emb_id = embedder.embedder_id
    threshold = embedder.validity_threshold if threshold is None else float(threshold)
    edits = store.single_edits(list(dict.fromkeys(edit_ids)))
    stored = store.validity_rows(emb_id, [e["edit_id"] for e in edits])
    todo = [e for e in edits if e["edit_id"] not in stored or stored[e["edit_id"]]["threshold"] != threshold]
    counts = ValidityCounts()
    if not todo:
        return counts
    # an edit is judged against its own concept and its node's subtypes (the best of them)
    concepts = store.edit_concepts([e["edit_id"] for e in todo])
    pairs = [(k, p) for k, e in enumerate(todo) for p in concepts.get(e["edit_id"], [e["prompt"]])]
    text_ids = ensure_texts(store, embedder, [templates.concept_text(p) for _, p in pairs] + [templates.neutral_text()])
    wanted = {e["edit_id"] for e in todo} | {e["baseline_id"] for e in todo} | set(text_ids.values())
    ids, _, matrix = store.embeddings(emb_id, item_ids=sorted(wanted))
    row = {i: k for k, i in enumerate(ids)}
    missing = [i for i in wanted if i not in row]
    if missing:
        raise AssertionError(f"validity needs vectors that are not stored: {missing[:3]}")
    pick = lambda keys: matrix[[row[k] for k in keys]]  # noqa: E731
    direction, baseline = best_direction_scores(
        pick([todo[k]["edit_id"] for k, _ in pairs]),
        pick([todo[k]["baseline_id"] for k, _ in pairs]),
        pick([text_ids[templates.concept_text(p)] for _, p in pairs]),
        matrix[row[text_ids[templates.neutral_text()]]],
        np.array([-1.0 if todo[k]["direction"] == "remove" else 1.0 for k, _ in pairs]),
        np.array([k for k, _ in pairs]), len(todo),
    )
    valid = direction >= threshold
    store.add_validity(emb_id, [(e["edit_id"], float(d), float(b), threshold, bool(v))
                                for e, d, b, v in zip(todo, direction, baseline, valid)])
    counts.computed = len(todo)
    counts.invalid = int((~valid).sum())
    return counts
