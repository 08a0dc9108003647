"""The classify stage: score originals, baselines and edits with a classifier, for every
class, skipping whatever this classifier (by weight hash) has already scored."""

from __future__ import annotations

from typing import Callable, Sequence

from PIL import Image

from .classifiers.base import Classifier, score_images
from .store import Store

CHUNK = 256  # items scored and committed together: bounds memory and the work lost on Ctrl-C


def ensure_scores(
    store: Store,
    classifier: Classifier,
    items: Sequence[tuple[str, Callable[[], Image.Image]]],
    progress: Callable | None = None,
) -> int:
    """`items` are (item_id, loader) pairs; returns how many items were newly scored."""
    clf_id = classifier.classifier_id
    unique = dict(items)
    done = store.scored_items(clf_id, list(unique))
    todo = [(i, load) for i, load in unique.items() if i not in done]
    bar = progress(total=len(todo), desc="scoring", unit="img") if progress and todo else None
    try:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            logits, probs = score_images(classifier, [load() for _, load in chunk])
            store.add_scores(clf_id, [i for i, _ in chunk], logits, probs)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return len(todo)
