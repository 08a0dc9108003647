"""Load a semantic hierarchy into a normalised, validated Taxonomy.

Accepted: the paper-style nested JSON `{"domain": ..., "categories": {"group": {"sub": ["leaf", ...]}}}`
of any depth (lists, objects or null at the leaves), or the bare `{"group": {...}}` mapping.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import DiffexError
from .hashing import hash_json, node_id_for
from .types import Node, Taxonomy

MAX_NODES = 5000
MAX_DEPTH = 8
MAX_LABEL = 120


def normalise_label(label: Any) -> str:
    """Case and whitespace are not meaning: 'Full  Beard ' and 'full beard' are one semantic."""
    if not isinstance(label, str):
        raise DiffexError(f"taxonomy label {label!r} is not text")
    text = re.sub(r"\s+", " ", label).strip().lower()
    if not text:
        raise DiffexError("taxonomy has an empty label")
    if len(text) > MAX_LABEL:
        raise DiffexError(f"taxonomy label is longer than {MAX_LABEL} characters: {text[:40]!r}...")
    return text


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DiffexError(f"taxonomy has a duplicate key {key!r}")
        seen[key] = value
    return seen


def from_mapping(data: Any, name: str = "taxonomy", domain: str | None = None) -> Taxonomy:
    """Build a Taxonomy from the nested structure (see module docstring)."""
    if isinstance(data, dict) and "categories" in data:
        domain = domain or data.get("domain")
        name = data.get("name") or name
        tree = data["categories"]
    else:
        tree = data
    if not isinstance(tree, dict) or not tree:
        raise DiffexError("taxonomy must be a non-empty JSON object of groups (optionally under \"categories\")")

    nodes: list[Node] = []
    where: dict[str, tuple[str, ...]] = {}  # label -> first path, to explain duplicates

    def add(label_raw: Any, children: Any, parent: Node | None) -> None:
        label = normalise_label(label_raw)
        path = (parent.path if parent else ()) + (label,)
        if label in path[:-1]:
            raise DiffexError(f"taxonomy has a cycle: {' > '.join(path)}")
        if len(path) > MAX_DEPTH:
            raise DiffexError(f"taxonomy is deeper than {MAX_DEPTH} levels at {' > '.join(path)}")
        if label in where:
            raise DiffexError(
                f"taxonomy label {label!r} appears twice ({' > '.join(where[label])} and {' > '.join(path)}); "
                "labels are editing prompts, so give each a distinct label"
            )
        where[label] = path
        node = Node(node_id=node_id_for(path), path=path, prompt=label, parent_id=parent.node_id if parent else None)
        nodes.append(node)
        if len(nodes) > MAX_NODES:
            raise DiffexError(f"taxonomy has more than {MAX_NODES} nodes")
        for child_label, grandchildren in _children(children, path):
            add(child_label, grandchildren, node)

    for group, children in tree.items():
        add(group, children, None)
    domain = domain or "images"
    tax_id = hash_json({"domain": domain, "nodes": [(n.path, n.prompt) for n in nodes]})[:32]
    return Taxonomy(taxonomy_id=tax_id, name=name, domain=domain, nodes=tuple(nodes))


def _children(value: Any, path: tuple[str, ...]) -> list[tuple[Any, Any]]:
    if value is None or value == {} or value == []:
        return []
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if isinstance(item, dict):  # [{"beard": [...]}, "mustache"]
                out.extend(item.items())
            else:
                out.append((item, None))
        return out
    if isinstance(value, str):
        return [(value, None)]
    raise DiffexError(f"taxonomy entry under {' > '.join(path)} is neither a list nor an object: {value!r}")


def load_taxonomy(source: "str | Path | Taxonomy | dict") -> Taxonomy:
    """Load from a JSON file path, a mapping, or pass a Taxonomy through. Raises DiffexError."""
    if isinstance(source, Taxonomy):
        return source
    if isinstance(source, dict):
        return from_mapping(source)
    path = Path(source)
    if not path.is_file():
        raise DiffexError(f"taxonomy file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DiffexError(f"cannot read taxonomy {path}: {exc}") from None
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise DiffexError(f"taxonomy {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return from_mapping(data, name=path.stem)
