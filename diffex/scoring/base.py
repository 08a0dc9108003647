"""The classifier interface and the checks applied to every classifier's output."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import DiffexError


class Classifier(ABC):
    """A batched image classifier. `classifier_id` must hash its weights AND preprocessing,
    so a retrained model is new and an unchanged one is recognised whatever its file name."""

    name: str = "classifier"
    spec: str = ""
    batch_size: int = 64

    @property
    @abstractmethod
    def class_names(self) -> tuple[str, ...]:
        ...

    @property
    @abstractmethod
    def classifier_id(self) -> str:
        ...

    @abstractmethod
    def logits(self, images: Sequence[Image.Image]):
        """Return a tensor or array of shape [len(images), len(class_names)]."""


class LoadedClassifier(Classifier):
    """A classifier whose identity is computed once at load: subclasses set `self._names`
    (class names) and `self._id` (hash of weights and preprocessing) in `__init__`."""

    _names: tuple[str, ...] = ()
    _id: str = ""

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def classifier_id(self) -> str:
        return self._id


def score_images(classifier: Classifier, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """Logits and softmax probabilities, float64, shape [N, C]; raises DiffexError on a bad output."""
    n_classes = len(classifier.class_names)
    out_logits = []
    for start in range(0, len(images), max(1, classifier.batch_size)):
        batch = list(images[start : start + classifier.batch_size])
        try:
            raw = classifier.logits(batch)
        except DiffexError:
            raise
        except Exception as exc:  # the user's model failed: say so, not "internal error"
            detail = " ".join(str(exc).split())[:300] or "(no message)"
            raise DiffexError(
                f"classifier {classifier.spec or classifier.name!r} failed on a batch of {len(batch)} images: "
                f"{type(exc).__name__}: {detail}; scores committed so far are kept, the same command resumes"
            ) from None
        if hasattr(raw, "detach"):
            raw = raw.detach().float().cpu().numpy()
        arr = np.asarray(raw, dtype=np.float64)
        if arr.shape != (len(batch), n_classes):
            raise DiffexError(
                f"classifier {classifier.spec or classifier.name!r} returned shape {tuple(arr.shape)}, "
                f"expected ({len(batch)}, {n_classes}) for {len(batch)} images and {n_classes} classes"
            )
        if not np.all(np.isfinite(arr)):
            bad = int((~np.isfinite(arr)).any(axis=1).sum())
            raise DiffexError(f"classifier {classifier.spec or classifier.name!r} returned NaN or infinite logits "
                              f"for {bad} of {len(batch)} images")
        out_logits.append(arr)
    logits = np.concatenate(out_logits) if out_logits else np.zeros((0, n_classes))
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    return logits, probs
