"""The classify stage: score originals, baselines and edits with a classifier, for every
class, skipping whatever this classifier (by weight hash) has already scored."""

from __future__ import annotations

from typing import Callable, Sequence

from PIL import Image

from .classifiers.base import Classifier, score_images
from .progress import in_chunks
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
    keys = store.item_keys(list(unique))  # looked up once, not per chunk
    done = store.scored_items(clf_id, list(unique), item_keys=keys)
    todo = [(i, load) for i, load in unique.items() if i not in done]
    for chunk in in_chunks(todo, CHUNK, progress, desc="scoring"):
        logits, probs = score_images(classifier, [load() for _, load in chunk])
        store.add_scores(clf_id, [i for i, _ in chunk], logits, probs, item_keys=keys)
    return len(todo)
