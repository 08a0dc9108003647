"""Embedder registry: a SPEC names a backend and its model, e.g. `clip:openai/clip-vit-base-patch32`,
`clip:/path/to/saved/clip`, or `demo` (the small CLIP trained on the demo world, shipped with
diffex and loaded through the same `clip:` code)."""

from __future__ import annotations

from ..specs import build
from .base import DEFAULT_VALIDITY_THRESHOLD, Embedder

# prefix -> "module:factory"; the factory takes the text after "prefix:" ("" when absent).
# Imported lazily so `diffex query` never pays for torch or transformers.
EMBEDDERS: dict[str, str] = {
    "clip": "diffex.embedding.clip:from_spec",
    "demo": "diffex.embedding.clip:demo_from_spec",
}


def available_embedders() -> list[str]:
    return sorted(EMBEDDERS)


def load_embedder(spec: "str | Embedder") -> Embedder:
    """Build an embedder from a SPEC (`clip:MODEL_ID_OR_PATH[?device=cuda]`, `demo`). Raises DiffexError."""
    if isinstance(spec, Embedder):
        return spec
    return build(spec, EMBEDDERS, "embedder", "clip:MODEL_ID_OR_PATH, demo")


__all__ = ["Embedder", "load_embedder", "available_embedders", "EMBEDDERS", "DEFAULT_VALIDITY_THRESHOLD"]
