"""One image being edited by LEDITS++: its input preparation and its inversions, computed once
per (image, editor, seed), kept in the content-addressed cache as safetensors + JSON and
restored for every later edit."""


from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from PIL import Image

from ... import atomic, models
from ...errors import DiffexError
from ...types import Concept
from ..base import EditSession
from .spec import INVERSIONS, RECONSTRUCT_SEED, inversion_key

if TYPE_CHECKING:
    from .editor import LeditsEditor


class LeditsSession(EditSession):
    """Edits of one image. `meta` records how the input was prepared (original size, resized)
    and how many inversions were computed, restored and edits blocked."""

    def __init__(self, editor: LeditsEditor, image: Image.Image, image_id: str, cache_dir: Path):
        self.editor = editor
        self.image_id = image_id
        self.cache_dir = cache_dir
        size = editor.options["size"]
        original_mode = image.mode
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        resized = rgb.size != (size, size)
        self.image = rgb.resize((size, size), Image.Resampling.BICUBIC) if resized else rgb.copy()
        self.meta: dict[str, Any] = {
            "original_width": image.width,
            "original_height": image.height,
            "original_mode": original_mode,
            "resized": resized,
            "size": size,
            "inversions": 0,  # computed here
            "restored": 0,  # loaded from the cache
        }
        self.token = uuid.uuid4().hex
        self._inversions: dict[int, tuple[dict, dict]] = {}
        self.seconds = 0.0

    # ----- inversion cache -------------------------------------------------------------
    def inversion_key(self, seed: int) -> str:
        return inversion_key(self.image_id, self.editor.editor_id, seed)

    def inversion_path(self, seed: int) -> Path:
        key = self.inversion_key(seed)
        return self.cache_dir / INVERSIONS / key[:2] / f"{key}.safetensors"

    def cached_inversion(self, seed: int) -> tuple[dict, dict] | None:
        """This image's inversion for `seed` from memory or the on-disk cache, else None."""
        if seed not in self._inversions:
            state = self._load_cached(self.inversion_path(seed), seed)
            if state is None:
                return None
            self._inversions[seed] = state
        return self._inversions[seed]

    def keep_inversion(self, seed: int, state: tuple[dict, dict]) -> None:
        """Remember a freshly computed inversion and write it to the cache."""
        self._save(self.inversion_path(seed), seed, *state)
        self._inversions[seed] = state

    def _load_cached(self, path: Path, seed: int) -> tuple[dict, dict] | None:
        side = path.with_suffix(".json")
        if not (path.exists() and side.exists()):
            return None
        try:
            values = json.loads(side.read_text())
            tensors = models.load_safetensors(path)
        except Exception:
            return None  # a torn or foreign file: recompute and overwrite
        required = {*self.editor.state_tensors, "scheduler_timesteps"}
        if values.get("key") != self.inversion_key(seed) or not required <= set(tensors) <= required | {"reconstruction"}:
            return None
        self.meta["restored"] += 1
        self.editor.counters["restores"] += 1
        return tensors, values

    def _save(self, path: Path, seed: int, tensors: dict, values: dict) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        side = path.with_suffix(".json")
        record = {**values, "key": self.inversion_key(seed), "image_id": self.image_id,
                  "editor_id": self.editor.editor_id, "seed": int(seed)}
        # Written whole or not at all (the sidecar first), so a crash never leaves a half file under the key.
        atomic.write_text(side, json.dumps(record, sort_keys=True))
        with atomic.atomic_path(path) as tmp:
            save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp))

    # ----- edits -------------------------------------------------------------------------
    def reconstruct(self) -> Image.Image:
        """The null edit, from the inversion of RECONSTRUCT_SEED (shared with that sample's
        edits), so the baseline carries exactly the inversion/VAE artefacts the edits do."""
        return self.editor.edit_batch([self], (), RECONSTRUCT_SEED)[0].image

    def edit(self, concepts: Sequence[Concept], seed: int) -> Image.Image:
        if not concepts:
            raise DiffexError("edit needs at least one concept (use reconstruct() for the null edit)")
        return self.editor.edit_batch([self], tuple(concepts), seed)[0].image

    def close(self) -> None:
        self._inversions.clear()
        if self.editor._active is not None and self.token in self.editor._active[0]:
            self.editor._active = None


def _reraise(editor: LeditsEditor, exc: BaseException) -> None:
    """Turn a GPU out-of-memory error into a one-line DiffexError; re-raise anything else as is."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        raise editor._out_of_memory(exc) from None
    raise exc
