"""Beam search over the hierarchy (DiffEx, Alg. 1): which nodes of one level to expand."""

from __future__ import annotations

from typing import Mapping, Sequence

from ..types import Node


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


# ----------------------------------------------------------------------------- joint step
# After the walk, the paper's algorithm also returns the best *joint* combination of
# semantics. Candidates per class are the top-M single nodes (any level) by |delta|; a
# combination is tried only when its nodes can co-occur in one image (see `compatible`).


def strongest_direction(
    effects: Mapping[tuple[str, str, str], float], node_id: str, class_name: str, directions: Sequence[str]
) -> tuple[str, float]:
    """(direction, signed mean delta P) of the edit direction that moves `class_name` the most."""
    best = max(directions, key=lambda d: (abs(effects.get((node_id, d, class_name), 0.0)), d == directions[0]))
    return best, effects.get((node_id, best, class_name), 0.0)


def joint_candidates(
    nodes: Sequence[Node],
    effects: Mapping[tuple[str, str, str], float],
    class_name: str,
    top: int,
    directions: Sequence[str] = ("add",),
    min_delta: float = 0.0,
) -> list[tuple[Node, str]]:
    """The `top` strongest (node, direction) pairs for `class_name` among scored `nodes`,
    strongest first. Nodes with no effect or below `min_delta` are never candidates, nor is a
    node whose ancestor or descendant is already a stronger candidate: a lineage ("facial
    hair > beard > goatee") is represented by its strongest member, so the M candidates are
    M different semantics that can be combined."""
    scored = []
    for node in nodes:
        direction, delta = strongest_direction(effects, node.node_id, class_name, directions)
        if abs(delta) > 0 and abs(delta) >= min_delta:
            scored.append((-abs(delta), node.path, node, direction))
    scored.sort(key=lambda t: (t[0], t[1]))
    chosen: list[tuple[Node, str]] = []
    for _, _, node, direction in scored:
        if len(chosen) == top:
            break
        if all(not _related(node, other) for other, _ in chosen):
            chosen.append((node, direction))
    return chosen


def _related(a: Node, b: Node) -> bool:
    """Whether one node is the other or its ancestor."""
    return a.path[: len(b.path)] == b.path or b.path[: len(a.path)] == a.path


def compatible(a: Node, b: Node) -> bool:
    """Whether two semantics can be edited into one image together. The rule: never a node
    with its own ancestor or descendant ("beard" + "goatee" is just a goatee), and never two
    siblings below one parent, which the hierarchy presents as alternative sub-types of one
    thing ("goatee" + "full beard", "round" + "square glasses"). Top-level groups are
    different categories, so they combine freely; so do nodes under different parents
    ("goatee" + "handlebar mustache"). A taxonomy does not say more than that about which
    semantics exclude each other, so the rule goes no further."""
    if _related(a, b):
        return False
    return not (a.parent_id is not None and a.parent_id == b.parent_id)


def joint_combinations(candidates: Sequence[tuple[Node, str]], size: int) -> list[tuple[tuple[Node, str], ...]]:
    """Every `size`-combination of `candidates` whose nodes are pairwise `compatible`,
    in the candidates' rank order (strongest pairs first)."""
    from itertools import combinations

    return [
        combo for combo in combinations(candidates, size)
        if all(compatible(x[0], y[0]) for x, y in combinations(combo, 2))
    ]
