"""The demo classifiers: a small CNN that says whether a demo face is "young" or "old".

Two shipped versions, trained by `scripts/train_demo_classifier.py` with a planted
dependency in their labelling rule (see `ground_truth()`): v1 also calls goatees old,
the retrained v2 calls top hats old instead. The true cue, age (wrinkles), is not in the
taxonomy, so a good explanation names the planted leaf and nothing else.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..scoring.base import Classifier
from ..errors import DiffexError
from ..hashing import hash_tensors
from ..models import load_safetensors

CLASS_NAMES: tuple[str, ...] = ("young", "old")
VERSIONS: tuple[str, ...] = ("v1", "v2")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Everything between a PIL image and the network's input; part of the classifier's identity.
PREPROCESS = {"size": 64, "resample": "bilinear", "mode": "RGB", "scale": "x/255", "mean": 0.5, "std": 0.5,
              "arch": "democnn-4conv-12s2-24s2-48-48"}


class DemoCNN(nn.Module):
    """4 conv blocks (64 -> 4 px) and a linear head over the 4x4 map: the head keeps where a
    feature is, so "dark chin only" (goatee) differs from "dark chin and cheeks" (full beard).
    The first two blocks stride instead of pooling: 3x3 kernels at stride 2 still see every
    pixel (1-px wrinkles) at a third of the cost, which keeps training near a minute on 2 cores."""

    def __init__(self, n_classes: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, 12, 24, 48, 48]
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            stride = 2 if i < 2 else 1
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            if stride == 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * 4 * 4, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def preprocess(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (any size, any mode) -> float32 tensor [B, 3, 64, 64] in [-1, 1]."""
    arrays = []
    for image in images:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if rgb.size != (PREPROCESS["size"], PREPROCESS["size"]):
            rgb = rgb.resize((PREPROCESS["size"], PREPROCESS["size"]), Image.BILINEAR)
        arrays.append(np.asarray(rgb, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return (x - PREPROCESS["mean"]) / PREPROCESS["std"]


def weights_path(version: str) -> Path:
    if version not in VERSIONS:
        raise DiffexError(f"unknown demo classifier version {version!r}; valid: {', '.join(VERSIONS)}")
    return WEIGHTS_DIR / f"classifier_{version}.safetensors"


@lru_cache(maxsize=4)
def load_demo_model(version: str) -> tuple[DemoCNN, str]:
    """(model in eval mode, classifier_id) for a shipped version; raises DiffexError if missing."""
    path = weights_path(version)
    if not path.exists():
        raise DiffexError(f"demo classifier weights {path} are missing; run scripts/train_demo_classifier.py")
    state = load_safetensors(path)
    model = DemoCNN(len(CLASS_NAMES))
    model.load_state_dict(state)
    model.eval()
    return model, hash_tensors(state, extra={"preprocess": PREPROCESS, "classes": list(CLASS_NAMES)})


class DemoClassifier(Classifier):
    """`demo:v1` / `demo:v2`: CPU float32, classes ("young", "old")."""

    name = "demo"

    def __init__(self, version: str = "v1"):
        self.version = version
        self.model, self._classifier_id = load_demo_model(version)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    @property
    def classifier_id(self) -> str:
        return self._classifier_id

    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        with torch.no_grad():
            return self.model(preprocess(images))


def from_spec(rest: str) -> DemoClassifier:
    """`demo:v1` or `demo:v2`."""
    if rest not in VERSIONS:
        raise DiffexError(f"unknown demo classifier 'demo:{rest}'; valid: {', '.join('demo:' + v for v in VERSIONS)}")
    return DemoClassifier(rest)


def ground_truth() -> dict:
    """What each version was trained to use (from weights/ground_truth.json): {"classes": [...],
    "v1": {"class": "old", "planted": ["goatee"], "rule": ...}, "v2": {...}, "true_cue": ...}."""
    return json.loads((WEIGHTS_DIR / "ground_truth.json").read_text())
