"""Beam search over the hierarchy (DiffEx, Alg. 1): which nodes of one level to expand."""

from __future__ import annotations

from typing import Mapping, Sequence

from .types import Node


def node_strength(effects: Mapping[tuple[str, str, str], float], node_id: str, class_name: str, directions: Sequence[str]) -> float:
    """|mean delta P(class)| of a node, the strongest over the edit directions tried."""
    return max((abs(effects.get((node_id, d, class_name), 0.0)) for d in directions), default=0.0)


def select_beam(
    frontier: Sequence[Node],
    effects: Mapping[tuple[str, str, str], float],
    classes: Sequence[str],
    beam: int,
    directions: Sequence[str] = ("add",),
    min_delta: float = 0.0,
    require_gain: bool = False,
    parent_effects: Mapping[tuple[str, str, str], float] | None = None,
) -> dict[str, list[Node]]:
    """For each target class, the nodes of `frontier` to expand: the best `beam` by |delta|
    (beam <= 0 keeps all), at least `min_delta`, and with `require_gain` only children that
    explain more than their parent. Returns {class_name: [nodes, strongest first]}."""
    kept: dict[str, list[Node]] = {}
    for cls in classes:
        ranked = sorted(frontier, key=lambda n: (-node_strength(effects, n.node_id, cls, directions), n.path))
        chosen = []
        for node in ranked:
            strength = node_strength(effects, node.node_id, cls, directions)
            if strength < min_delta:
                continue
            if require_gain and node.parent_id is not None and parent_effects is not None:
                if strength <= node_strength(parent_effects, node.parent_id, cls, directions):
                    continue
            chosen.append(node)
        kept[cls] = chosen if beam <= 0 else chosen[:beam]
    return kept
