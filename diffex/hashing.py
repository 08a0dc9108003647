"""Content hashes: every cached thing in diffex is keyed by one of these, never by name or time."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from PIL import Image


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_json(obj: Any) -> str:
    """Hash of a JSON-serialisable value with sorted keys, so dict order never matters."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return sha256_bytes(text.encode("utf-8"))


def hash_image(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and the size: the same picture in PNG or BMP hashes the same."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    h = hashlib.sha256()
    h.update(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def hash_tensors(tensors: Mapping[str, Any], extra: Any = None) -> str:
    """Hash of named tensors (e.g. a state_dict) plus any JSON-able extra (preprocessing)."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.asarray(t)
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    if extra is not None:
        h.update(hash_json(extra).encode())
    return h.hexdigest()


def node_id_for(path: tuple[str, ...]) -> str:
    """A node's identity is its normalised path, so renaming elsewhere in the tree never changes it."""
    return sha256_bytes("\x1f".join(path).encode("utf-8"))[:16]


def edit_id_for(image_id: str, editor_id: str, prompts: tuple[str, ...], direction: str, seed: int) -> str:
    """Key of one edit. Node ids are deliberately absent: two nodes asking the same edit share it."""
    return hash_json(
        {"image": image_id, "editor": editor_id, "prompts": sorted(prompts), "direction": direction, "seed": seed}
    )[:32]
