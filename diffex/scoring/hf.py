"""`hf:MODEL_ID_OR_PATH[?trust_remote_code=1&allow_pickle=1]`: a transformers image classifier
(AutoModelForImageClassification) with its own image processor; class names from the model
config's id2label. CPU, float32, PIL image processors (no torchvision needed)."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from ..errors import DiffexError
from ..hashing import hash_tensors
from ..models import clean_config, load_pretrained, resolve
from ..specs import flag, split_spec
from .base import LoadedClassifier

OPTIONS = {
    "trust_remote_code": "1 runs the model repository's own Python code; off by default",
    "allow_pickle": "1 accepts pytorch_model.bin checkpoints (loaded with weights_only=True)",
}


class HFImageClassifier(LoadedClassifier):
    """A loaded transformers image classifier. `classifier_id` hashes the weights, the config
    (architecture) and the image processor's settings: not the path it was loaded from."""

    name = "hf"
    batch_size = 16

    def __init__(self, model, processor, source: str):
        self.model = model.eval()
        self.processor = processor
        self.source = source
        id2label = getattr(model.config, "id2label", None) or {}
        try:
            names = [str(id2label[i]) for i in sorted(int(k) for k in id2label)]
        except (KeyError, ValueError):
            names = []
        if not names:
            raise DiffexError(f"hf model {source!r} has no id2label in its config; cannot name its classes")
        if len(set(names)) != len(names):
            raise DiffexError(f"hf model {source!r} has duplicate class names in id2label: {', '.join(names)}")
        self._names = tuple(names)
        extra = {
            "kind": "hf",
            "config": clean_config(model.config.to_dict()),
            "processor": {"type": type(processor).__name__, **clean_config(processor.to_dict())},
            "class_names": names,
        }
        self._id = hash_tensors(model.state_dict(), extra)[:32]

    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        inputs = self.processor(images=rgb, return_tensors="pt")
        with torch.no_grad():
            return self.model(pixel_values=inputs["pixel_values"].float()).logits


def from_spec(rest: str) -> HFImageClassifier:
    target, options = split_spec("hf", rest, OPTIONS)
    trust = flag(options, "trust_remote_code")
    source = resolve("hf", target, allow_pickle=flag(options, "allow_pickle"))
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = load_pretrained(AutoModelForImageClassification, source, "hf", trust_remote_code=trust, dtype=torch.float32)
    processor = load_pretrained(AutoImageProcessor, source, "hf", trust_remote_code=trust, weights=False, backend="pil")
    return HFImageClassifier(model, processor, target)
