"""The embedder interface: images and texts into one L2-normalised vector space (CLIP-like)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
from PIL import Image

# Used when a model ships no calibrated threshold (see diffex/embedding/stage.py): InstructPix2Pix
# kept generated edit pairs whose CLIP directional similarity was at least 0.2.
DEFAULT_VALIDITY_THRESHOLD = 0.2
# Side effects (diffex/embedding/side_effects.py) of a model with no calibration: an edit that
# also brings a second concept lands near 0.5 toward each (measured on the demo world), so a
# side effect needs clearly more than an unrelated edit's drift.
DEFAULT_SIDE_EFFECT_THRESHOLD = 0.3


def side_effect_calibration(data: dict) -> tuple[float, dict[str, float]]:
    """(default, {concept label: threshold}) from a calibration file's "side_effects" entry."""
    entry = data.get("side_effects") or {}
    return (float(entry.get("default", DEFAULT_SIDE_EFFECT_THRESHOLD)),
            {str(k): float(v) for k, v in (entry.get("thresholds") or {}).items()})


class Embedder(ABC):
    """Maps images and texts to unit vectors of dimension `dim` (metric: cosine = dot product).
    `embedder_id` hashes the weights AND the preprocessing (image processor and tokenizer), so
    vectors of two different models, or of one model fed differently, never share an id."""

    name: str = "embedder"
    spec: str = ""
    metric: str = "cosine"
    # directional-similarity threshold of edit validity for this model (diffex/embedding/stage.py)
    validity_threshold: float = DEFAULT_VALIDITY_THRESHOLD
    # side-effect thresholds (diffex/embedding/side_effects.py): per concept label, else the default
    side_effect_threshold: float = DEFAULT_SIDE_EFFECT_THRESHOLD
    side_effect_thresholds: dict[str, float] = {}

    @property
    @abstractmethod
    def embedder_id(self) -> str:
        ...

    @property
    @abstractmethod
    def dim(self) -> int:
        ...

    @abstractmethod
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """float32 [len(images), dim], each row of unit length."""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], each row of unit length."""
