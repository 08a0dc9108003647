"""The editor interface every editing backend implements (demo world, LEDITS++, ...)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..hashing import hash_json
from ..types import Concept


@dataclass(frozen=True)
class EditOutput:
    """One edited image and its status: 'ok', or 'blocked' when the backend withheld the
    pixels (e.g. a safety checker blanked them); blocked edits are stored, never measured."""

    image: Image.Image
    status: str = "ok"


class EditSession(ABC):
    """Edits of ONE image. Backends keep per-image state here (e.g. a diffusion inversion),
    so the indexer opens one session per image and asks for all its edits in it."""

    @abstractmethod
    def reconstruct(self) -> Image.Image:
        """The null edit: the editor's reconstruction of the unedited image (the effect baseline)."""

    @abstractmethod
    def edit(self, concepts: Sequence[Concept], seed: int) -> Image.Image:
        """Apply all `concepts` together (one concept = single edit, several = joint edit)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "EditSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Editor(ABC):
    """An image editor. `config` must hold everything that changes output pixels:
    its hash is the editor's identity, so changing any of it invalidates cached edits."""

    name: str = "editor"
    spec: str = ""
    # How many images `edit_batch` takes at once; the edit stage groups images by it.
    batch_size: int = 1

    @property
    @abstractmethod
    def config(self) -> dict[str, Any]:
        ...

    @property
    def editor_id(self) -> str:
        return hash_json({"name": self.name, **self.config})[:32]

    def check(self, load: bool = False) -> None:
        """Raise DiffexError now if this editor cannot run (its model absent, say), before any
        store is created. `load=True` also loads what backends otherwise load lazily."""
        _ = self.editor_id

    def check_image(self, image: Image.Image, where: str) -> None:
        """Raise DiffexError if this editor cannot edit `image` (from `where`, a path for the
        message). Called for every input before anything is stored; most editors take any image."""

    @abstractmethod
    def open(self, image: Image.Image, image_id: str, cache_dir: Path) -> EditSession:
        """Start editing one image. `cache_dir` is the store's content-addressed cache root,
        where a backend may keep per-image work (inversions) keyed by `image_id` and its config."""

    def edit_batch(self, sessions: Sequence[EditSession], concepts: Sequence[Concept], seed: int) -> list[EditOutput]:
        """The same edit of several images (`concepts == ()`: their null edits), one output per
        session in order. Backends that can batch images override this; this one loops."""
        return [EditOutput(s.reconstruct() if not concepts else s.edit(concepts, seed)) for s in sessions]
