"""CLIP embeddings through transformers: any `CLIPModel` saved with its tokenizer and image
processor, loaded by id (Hugging Face cache) or from a local folder.

    clip:openai/clip-vit-base-patch32      clip:/models/my-clip?device=cuda      demo
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .. import models, specs
from ..errors import DiffexError
from ..hashing import hash_json, hash_tensors
from .base import DEFAULT_VALIDITY_THRESHOLD, Embedder, side_effect_calibration
from .clip_text import remember_embedder_id

DEMO_CLIP_DIR = Path(__file__).resolve().parents[1] / "demo" / "clip"
# Optional file beside a model's weights: {"validity_threshold": x, ...} calibrated for it.
CALIBRATION_FILE = "diffex.json"
# Image-processor settings that change pixel values fed to the model (part of the identity).
_PIXEL_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
               "do_normalize", "image_mean", "image_std", "do_convert_rgb")


class ClipEmbedder(Embedder):
    """A transformers CLIPModel with its processor. Vectors are the projected, L2-normalised
    image/text embeddings (`get_*_features(...).pooler_output` in transformers 5)."""

    name = "clip"

    def __init__(self, model_id_or_path: str, device: str = "cpu", batch_size: int = 64):
        import torch

        self.source = model_id_or_path
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.model, self.image_processor, self.tokenizer, self.path = _load(model_id_or_path)
        self.model.to(self.device).eval()
        text_cfg = self.model.config.text_config
        self.max_length = int(min(getattr(self.tokenizer, "model_max_length", 77) or 77, text_cfg.max_position_embeddings))
        _check_eos(self.model, self.tokenizer, model_id_or_path)
        self.validity_threshold = _calibrated_threshold(self.path)
        self.side_effect_threshold, self.side_effect_thresholds = _calibrated_side_effects(self.path)
        self._id: str | None = None

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def embedder_id(self) -> str:
        if self._id is None:
            proc = self.image_processor.to_dict()
            extra = {
                "arch": "clip",
                "pixels": {k: proc.get(k) for k in _PIXEL_KEYS},
                "tokenizer": hash_json(sorted(self.tokenizer.get_vocab().items())),
                "max_length": self.max_length,
                "eos": [self.tokenizer.eos_token_id, self.model.config.text_config.eos_token_id],
            }
            self._id = hash_tensors(self.model.state_dict(), extra=extra)[:32]
            # lets `diffex search` encode query texts without transformers (clip_text.py)
            remember_embedder_id(self.path, self._id)
        return self._id

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [im if im.mode == "RGB" else im.convert("RGB") for im in images[start:start + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.inference_mode():
                feats = _pooled(self.model.get_image_features(pixel_values=pixels))
            out.append(_normalise(feats))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = [str(t) for t in texts[start:start + self.batch_size]]
            tokens = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                feats = _pooled(self.model.get_text_features(**tokens))
            out.append(_normalise(feats))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _pooled(output: Any):
    # transformers 5 returns a model output whose pooler_output is the projected embedding;
    # transformers 4 returned the tensor itself.
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _normalise(feats) -> np.ndarray:
    arr = feats.detach().float().cpu().numpy().astype(np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def _load(source: str):
    """(model, image processor, tokenizer) through diffex's loading policy (diffex/models.py:
    a local folder or the local Hugging Face cache, safetensors); one-line DiffexError on failure."""
    found = models.resolve("CLIP", source)
    with models.quiet("transformers"):  # the "no torchvision, using the PIL processor" notice
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = models.load_pretrained(CLIPModel, found, "CLIP")
    image_processor = models.load_pretrained(CLIPImageProcessor, found, "CLIP", weights=False)
    tokenizer = models.load_pretrained(AutoTokenizer, found, "CLIP", weights=False)
    return model, image_processor, tokenizer, found.path


def _check_eos(model, tokenizer, source: str) -> None:
    """transformers' CLIP text model pools at the HIGHEST token id when config.eos_token_id == 2
    (an old convention). That is right for OpenAI's vocabularies (EOS is the last id) and
    silently wrong for any other: refuse such a model instead of returning noise."""
    cfg_eos = model.config.text_config.eos_token_id
    tok_eos = tokenizer.eos_token_id
    if cfg_eos == 2 and tok_eos is not None and tok_eos != max(tokenizer.get_vocab().values()):
        raise DiffexError(
            f"CLIP model {source!r} has text eos_token_id 2 in its config but its tokenizer's EOS is id {tok_eos}: "
            "transformers would pool text at the highest token id instead of at EOS; set text_config.eos_token_id "
            f"to {tok_eos} in config.json"
        )


def _calibrated_side_effects(directory: Path) -> tuple[float, dict[str, float]]:
    path = directory / CALIBRATION_FILE
    try:
        return side_effect_calibration(json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise DiffexError(f"bad calibration file {path}: {exc}") from None


def _calibrated_threshold(directory: Path) -> float:
    path = directory / CALIBRATION_FILE
    if path.is_file():
        try:
            return float(json.loads(path.read_text(encoding="utf-8"))["validity_threshold"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DiffexError(f"bad calibration file {path}: {exc}") from None
    return DEFAULT_VALIDITY_THRESHOLD


def _parse(prefix: str, rest: str) -> tuple[str, dict]:
    source, options = specs.split_spec(prefix, rest, {"device": "cpu, cuda, ...", "batch": "images per forward pass"},
                                       needs_target=False)
    return source, specs.typed(prefix, options, {"device": str, "batch": int})


def from_spec(rest: str) -> ClipEmbedder:
    """`clip:MODEL_ID_OR_PATH[?device=cuda&batch=64]`. A local path is stored absolute, so the
    database can reload the same model from any working directory."""
    source, options = _parse("clip", rest)
    if not source:
        raise DiffexError("the clip embedder needs a model: clip:MODEL_ID_OR_PATH (e.g. clip:openai/clip-vit-base-patch32)")
    local = Path(source).expanduser()
    if local.exists():
        source = str(local.resolve())
    emb = ClipEmbedder(source, device=options.get("device", "cpu"), batch_size=options.get("batch", 64))
    emb.spec = "clip:" + source
    return emb


def demo_from_spec(rest: str) -> ClipEmbedder:
    """`demo`: the small CLIP trained on the demo world (scripts/train_demo_clip.py)."""
    source, options = _parse("demo", rest)
    if source:
        raise DiffexError(f"the demo embedder takes no model, got 'demo:{rest}'; use 'demo' or 'clip:PATH'")
    if not (DEMO_CLIP_DIR / "config.json").is_file():
        raise DiffexError(f"the demo CLIP is missing from {DEMO_CLIP_DIR}; train it with scripts/train_demo_clip.py")
    emb = ClipEmbedder(str(DEMO_CLIP_DIR), device=options.get("device", "cpu"), batch_size=options.get("batch", 256))
    emb.name = "demo-clip"
    emb.spec = "demo"
    return emb
