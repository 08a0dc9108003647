"""The embedder interface: images and texts into one L2-normalised vector space (CLIP-like)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
from PIL import Image

# Used when a model ships no calibrated threshold (see diffex/embedding/stage.py): InstructPix2Pix
# kept generated edit pairs whose CLIP directional similarity was at least 0.2.
DEFAULT_VALIDITY_THRESHOLD = 0.2


class Embedder(ABC):
    """Maps images and texts to unit vectors of dimension `dim` (metric: cosine = dot product).
    `embedder_id` hashes the weights AND the preprocessing (image processor and tokenizer), so
    vectors of two different models, or of one model fed differently, never share an id."""

    name: str = "embedder"
    spec: str = ""
    metric: str = "cosine"
    # directional-similarity threshold of edit validity for this model (diffex/embedding/stage.py)
    validity_threshold: float = DEFAULT_VALIDITY_THRESHOLD

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
