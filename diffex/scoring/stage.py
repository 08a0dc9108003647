"""The classify stage: score originals, baselines and edits with a classifier, for every
class, skipping whatever this classifier (by weight hash) has already scored."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .base import Classifier, score_images
from ..progress import in_chunks
from ..store.core import Store

CHUNK = 256  # items decoded and scored together: bounds memory
# Scores are committed every COMMIT_ITEMS items or COMMIT_S seconds, whichever comes first:
# each commit also refreshes the derived effects of its images (tens to hundreds of ms on a
# large store), so fewer, larger commits keep the writer fast, while a slow classifier still
# commits (and so loses to Ctrl-C, and shows readers) at most a few seconds of work.
COMMIT_ITEMS = 2048
COMMIT_S = 2.0


def ensure_scores(
    store: Store,
    classifier: Classifier,
    items: Sequence[tuple[str, Callable[[], Image.Image]]],
    progress: Callable | None = None,
    executor: Any = None,
) -> int:
    """`items` are (item_id, loader) pairs; returns how many items were newly scored.
    `executor`: where the chunks are scored (None: here; see diffex/indexing/ray_pool.py)."""
    clf_id = classifier.classifier_id
    unique = dict(items)
    keys = store.item_keys(list(unique))  # looked up once, not per chunk
    done = store.scored_items(clf_id, list(unique), item_keys=keys)
    todo = [(i, load) for i, load in unique.items() if i not in done]
    pending: list[tuple[list[str], np.ndarray, np.ndarray]] = []
    since = time.monotonic()

    def commit() -> None:
        nonlocal since
        if pending:
            store.add_scores(clf_id, [i for ids, _, _ in pending for i in ids], np.concatenate([lg for _, lg, _ in pending]),
                             np.concatenate([pr for _, _, pr in pending]), item_keys=keys)
            pending.clear()
        since = time.monotonic()

    try:
        if executor is None:
            done_chunks = ((c, score_images(classifier, [load() for _, load in c]))
                           for c in in_chunks(todo, CHUNK, progress, desc="scoring"))
        else:  # the same chunks, scored elsewhere, in the order they finish
            done_chunks = executor.map_chunks("score", [todo[s : s + CHUNK] for s in range(0, len(todo), CHUNK)],
                                              progress, desc="scoring")
        for chunk, (logits, probs) in done_chunks:
            pending.append(([i for i, _ in chunk], logits, probs))
            if sum(len(ids) for ids, _, _ in pending) >= COMMIT_ITEMS or time.monotonic() - since >= COMMIT_S:
                commit()
    except BaseException:
        try:  # keep what was scored before the model failed or Ctrl-C came
            commit()
        except Exception:  # noqa: BLE001 (the store failing too must not hide the first error)
            pass
        raise
    commit()
    return len(todo)
