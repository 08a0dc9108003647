"""`clip:MODEL_ID_OR_PATH?labels=young person,old person[&template=a photo of a {}]`: zero-shot
classification with a CLIP model, as in the DiffEx reference code: one class per label, the
text "template.format(label)" embedded once, and logits = logit_scale.exp() * cosine(image,
text), so the softmax over labels is CLIP's zero-shot probability. Options: `allow_pickle=1`
accepts pytorch_model.bin checkpoints (loaded with weights_only=True)."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from ..errors import DiffexError
from ..hashing import hash_tensors
from ..models import clean_config, load_pretrained, resolve
from ..specs import flag, name_list, split_spec
from .base import LoadedClassifier

OPTIONS = {
    "labels": "comma-separated class labels (required)",
    "template": "text around each label, with {} for the label; default 'a photo of a {}'",
    "allow_pickle": "1 accepts pytorch_model.bin checkpoints (loaded with weights_only=True)",
}
DEFAULT_TEMPLATE = "a photo of a {}"


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPZeroShotClassifier(LoadedClassifier):
    name = "clip"
    batch_size = 32

    def __init__(self, model, processor, tokenizer, labels: Sequence[str], template: str):
        self.model = model.eval()
        self.processor = processor
        self._names = tuple(labels)
        self.template = template
        texts = [template.format(label) for label in labels]
        enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            text = _features(model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
        self.text = torch.nn.functional.normalize(text.float(), dim=-1)
        # the text embeddings stand for the tokenizer, labels and template: all that shapes them
        state = {**model.state_dict(), "__zero_shot_text__": self.text}
        extra = {"kind": "clip", "config": clean_config(model.config.to_dict()),
                 "processor": {"type": type(processor).__name__, **clean_config(processor.to_dict())},
                 "labels": list(labels), "template": template}
        self._id = hash_tensors(state, extra)[:32]

    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"].float()
        with torch.no_grad():
            image = torch.nn.functional.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)
            return self.model.logit_scale.exp() * image @ self.text.T


def from_spec(rest: str) -> CLIPZeroShotClassifier:
    target, options = split_spec("clip", rest, OPTIONS)
    labels = name_list(options, "labels")
    if not labels or len(labels) < 2:
        raise DiffexError(f"clip classifier needs at least two labels: clip:{target}?labels=a,b")
    template = options.get("template", DEFAULT_TEMPLATE)
    if template.count("{}") != 1:
        raise DiffexError(f"clip template must contain {{}} once (where the label goes), got {template!r}")
    source = resolve("clip", target, allow_pickle=flag(options, "allow_pickle"))
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = load_pretrained(CLIPModel, source, "clip", dtype=torch.float32)
    processor = load_pretrained(AutoImageProcessor, source, "clip", weights=False, backend="pil")
    tokenizer = load_pretrained(AutoTokenizer, source, "clip", weights=False)
    return CLIPZeroShotClassifier(model, processor, tokenizer, labels, template)
