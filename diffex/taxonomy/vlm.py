"""VLM backends for proposing a taxonomy, registered like the other backends: a SPEC names one.
- `openai:MODEL`: any OpenAI-compatible chat-completions endpoint (vlm_http.py);
- `hf:MODEL_ID_OR_PATH`: a local transformers image-text-to-text model (vlm_hf.py), loaded by
  diffex's policy (diffex/models.py).
A VLM is anything with `spec`, `model_key` (part of the answer cache key) and `complete`."""

from __future__ import annotations

import base64
import importlib
import io
from typing import Any, Protocol

from PIL import Image

from ..errors import UsageError

MAX_IMAGE_SIDE = 512  # images are sent downscaled: enough to see the semantics, small to upload


class VLM(Protocol):
    spec: str
    model_key: str  # what identifies the answers: part of the cache key

    def complete(self, prompt: str, images: list[Image.Image]) -> str: ...


def _thumbnail(image: Image.Image) -> Image.Image:
    im = image.copy()
    im.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return im


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    _thumbnail(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# prefix -> "module:class"; imported on first use (transformers only for hf:)
VLMS = {"openai": "diffex.taxonomy.vlm_http:OpenAIVLM", "hf": "diffex.taxonomy.vlm_hf:HFVLM"}
OPTIONS = {"openai": ("base_url", "api_key", "timeout"), "hf": ("max_new_tokens", "device")}


def load_vlm(spec: "str | VLM", **options: Any) -> VLM:
    """`openai:MODEL` or `hf:MODEL_ID_OR_PATH` (or an object with `complete`, passed through)."""
    if not isinstance(spec, str):
        return spec
    kind, _, rest = spec.partition(":")
    if kind not in VLMS:
        raise UsageError(f"unknown VLM spec {spec!r}; valid: openai:MODEL, hf:MODEL_ID_OR_PATH")
    module, name = VLMS[kind].split(":")
    return getattr(importlib.import_module(module), name)(rest, **{k: v for k, v in options.items() if k in OPTIONS[kind]})
