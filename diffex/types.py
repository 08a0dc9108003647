"""Small frozen records that flow between stages (taxonomy -> plan -> edit -> classify -> store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["add", "remove"]
DIRECTIONS: tuple[str, ...] = ("add", "remove")


@dataclass(frozen=True)
class Node:
    """One semantic in a hierarchy. `node_id` is a hash of `path`, so it survives taxonomy versions."""

    node_id: str
    path: tuple[str, ...]
    prompt: str
    parent_id: str | None = None

    @property
    def label(self) -> str:
        return self.path[-1]

    @property
    def depth(self) -> int:
        return len(self.path)


@dataclass(frozen=True)
class Taxonomy:
    """A versioned hierarchy: `taxonomy_id` hashes the normalised node list."""

    taxonomy_id: str
    name: str
    domain: str
    nodes: tuple[Node, ...]

    def children(self, node_id: str | None) -> list[Node]:
        return [n for n in self.nodes if n.parent_id == node_id]

    def by_id(self) -> dict[str, Node]:
        return {n.node_id: n for n in self.nodes}


@dataclass(frozen=True)
class Concept:
    """One editing instruction: a text prompt and whether to add or remove it."""

    prompt: str
    direction: str = "add"


@dataclass(frozen=True)
class ImageRecord:
    """An input image: `image_id` is the sha256 of its decoded RGB pixels and size."""

    image_id: str
    uri: str
    width: int
    height: int


@dataclass(frozen=True)
class EditRecord:
    """A stored edit (or the null-edit baseline when `kind == 'baseline'`)."""

    edit_id: str
    image_id: str
    editor_id: str
    kind: str  # 'baseline' | 'single' | 'joint'
    prompts: tuple[str, ...]
    direction: str
    seed: int
    output_sha256: str | None = None
    cache_path: str | None = None
    status: str = "ok"
    seconds: float = 0.0
    node_ids: tuple[str, ...] = field(default=())
