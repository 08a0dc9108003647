"""Load a semantic hierarchy into a normalised, validated Taxonomy.

Accepted: the paper-style nested JSON `{"domain": ..., "categories": {"group": {"sub": ["leaf", ...]}}}`
of any depth (lists, objects or null at the leaves), or the bare `{"group": {...}}` mapping; the
reference code's format (the same envelope), node objects with per-node prompts, YAML and plain
indented outlines (see diffex/taxonomy/formats.py for every shape).

Limits (a clear error beyond them): MAX_NODES nodes, MAX_DEPTH levels, labels of MAX_LABEL and
prompts of MAX_PROMPT characters. Labels are compared after Unicode NFC normalisation, case
folding and whitespace collapsing; control characters (and bidirectional overrides, which make
a printed label read differently from what is edited) are refused. A tree that looks wrong, one
node only or metadata-like top-level labels (`version`, `name: faces`), loads with a
DiffexWarning, so the CLI says so before any edit.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from pathlib import Path
from typing import Any

from ..errors import DiffexError, DiffexWarning
from ..hashing import hash_json, node_id_for
from .formats import MAX_DEPTH, Entry, parse_nested, read_file
from ..types import Node, Taxonomy

MAX_NODES = 5000
MAX_LABEL = 120
MAX_PROMPT = 300
# Top-level labels that are more likely a file's metadata than a semantic to edit
METADATA_LABELS = {"domain", "name", "version", "description", "categories", "category", "title", "author",
                   "date", "id", "license", "metadata", "taxonomy", "schema"}
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _clean_text(text: str, what: str) -> str:
    """NFC, whitespace collapsed; refuses control characters (one-line message, escaped)."""
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()
    bad = next((ch for ch in text if unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS), None)
    if bad is not None:
        raise DiffexError(f"{what} {text[:60]!r} contains the control character U+{ord(bad):04X}; "
                          "labels and prompts are text for the editor, remove it")
    return text


def normalise_label(label: Any) -> str:
    """Case, whitespace and Unicode form are not meaning: 'Full  Beard ' and 'full beard' are one
    semantic, and so are 'café' typed with an accent or with a combining mark."""
    if not isinstance(label, str):
        raise DiffexError(f"taxonomy label {label!r} is not text")
    text = _clean_text(label, "taxonomy label").lower()
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


def from_mapping(
    data: Any, name: str = "taxonomy", domain: str | None = None, *,
    merge_duplicates: bool = False, notes: list[str] | None = None,
) -> Taxonomy:
    """Build a Taxonomy from the nested structure (see module docstring and taxonomy_formats).

    merge_duplicates=False (files): a label used twice anywhere, or equal to an ancestor, is an
    error. True (model output): siblings with one label are merged, and a label already used
    elsewhere in the tree (or by an ancestor) is dropped; each fix is described in `notes`.
    """
    parsed = parse_nested(data)
    return build_taxonomy(parsed.roots, parsed.name or name, domain or parsed.domain,
                          merge_duplicates=merge_duplicates, notes=notes)


def normalise_prompt(prompt: Any, where: str) -> str:
    if not isinstance(prompt, str):
        raise DiffexError(f"taxonomy prompt of {where} is not text: {prompt!r}")
    text = _clean_text(prompt, f"taxonomy prompt of {where}")
    if not text:
        raise DiffexError(f"taxonomy prompt of {where} is empty")
    if len(text) > MAX_PROMPT:
        raise DiffexError(f"taxonomy prompt of {where} is longer than {MAX_PROMPT} characters")
    return text


def _merge_siblings(items: list[Entry], parent: tuple[str, ...], notes: list[str]) -> list[tuple[str, Entry]]:
    """Siblings with the same normalised label become one node holding all their children."""
    merged: dict[str, Entry] = {}
    for item in items:
        label = normalise_label(item.label)
        if label not in merged:
            merged[label] = Entry(label, item.prompt, list(item.children))
            continue
        kept = merged[label]
        notes.append(f"merged duplicate {' > '.join(parent + (label,))!r}")
        if kept.prompt is None:
            kept.prompt = item.prompt
        kept.children.extend(item.children)
    return list(merged.items())


def build_taxonomy(
    roots: list[Entry], name: str = "taxonomy", domain: str | None = None, *,
    merge_duplicates: bool = False, notes: list[str] | None = None,
) -> Taxonomy:
    """Normalise and validate raw entries (in order) into a Taxonomy. Raises DiffexError."""
    notes = notes if notes is not None else []
    nodes: list[Node] = []
    where: dict[str, tuple[str, ...]] = {}  # label -> first path, to explain duplicates

    def add(label: str, entry: Entry, parent: Node | None) -> None:
        path = (parent.path if parent else ()) + (label,)
        if label in path[:-1]:
            if merge_duplicates:
                notes.append(f"dropped {' > '.join(path)!r}: the label repeats an ancestor")
                return
            raise DiffexError(f"taxonomy has a cycle: {' > '.join(path)}")
        if len(path) > MAX_DEPTH:
            raise DiffexError(f"taxonomy is deeper than {MAX_DEPTH} levels (the limit) at {' > '.join(path)}")
        if label in where:
            if merge_duplicates:
                notes.append(f"dropped {' > '.join(path)!r}: {label!r} is already at {' > '.join(where[label])!r}")
                return
            raise DiffexError(
                f"taxonomy label {label!r} appears twice ({' > '.join(where[label])} and {' > '.join(path)}); "
                "labels are editing prompts, so give each a distinct label"
            )
        where[label] = path
        prompt = label if entry.prompt is None else normalise_prompt(entry.prompt, " > ".join(path))
        node = Node(node_id=node_id_for(path), path=path, prompt=prompt, parent_id=parent.node_id if parent else None)
        nodes.append(node)
        if len(nodes) > MAX_NODES:
            raise DiffexError(f"taxonomy has more than {MAX_NODES} nodes (the limit: each node costs an edit "
                              "per image and sample); split it or index a few groups at a time")
        for child_label, child in _labelled(entry.children, path):
            add(child_label, child, node)

    def _labelled(items: list[Entry], parent: tuple[str, ...]) -> list[tuple[str, Entry]]:
        if merge_duplicates:
            return _merge_siblings(items, parent, notes)
        return [(normalise_label(item.label), item) for item in items]

    for label, entry in _labelled(roots, ()):
        add(label, entry, None)
    if not nodes:
        raise DiffexError("taxonomy has no nodes")
    domain = domain or "images"
    tax_id = hash_json({"domain": domain, "nodes": [(n.path, n.prompt) for n in nodes]})[:32]
    return Taxonomy(taxonomy_id=tax_id, name=name, domain=domain, nodes=tuple(nodes))


def to_nested(taxonomy: Taxonomy) -> dict:
    """The paper-style JSON (`{"domain", "name", "categories"}`) that `load_taxonomy` reads back
    into the very same taxonomy id; a node whose prompt differs from its label keeps it."""

    def value(node: Node) -> Any:
        kids = taxonomy.children(node.node_id)
        own = node.prompt != node.label
        if not kids:
            return {"prompt": node.prompt} if own else []
        tree = level(kids)
        return {"prompt": node.prompt, "children": tree} if own else tree

    def level(kids: list[Node]) -> Any:
        if all(not taxonomy.children(k.node_id) for k in kids):
            return [k.label if k.prompt == k.label else {"label": k.label, "prompt": k.prompt} for k in kids]
        return {k.label: value(k) for k in kids}

    return {"domain": taxonomy.domain, "name": taxonomy.name, "categories": level(taxonomy.children(None))}


def _looks_like_metadata(label: str) -> bool:
    """'version', 'name: faces', 'date = 2024', 'categories:' (a YAML header read as an outline)."""
    key = re.match(r"^([a-z_]+)\s*(?:[:=]|$)", label)
    return bool(key) and key.group(1) in METADATA_LABELS


def implausible(taxonomy: Taxonomy) -> list[str]:
    """Why this tree looks like a mistake (empty when it does not): one line each."""
    found = []
    if len(taxonomy.nodes) == 1:
        found.append(f"taxonomy {taxonomy.name!r} has a single node ({taxonomy.nodes[0].label!r}); "
                     "effects are ranked against each other, so check the file is complete")
    meta = [n.label for n in taxonomy.children(None) if _looks_like_metadata(n.label)]
    if meta:
        found.append(f"taxonomy {taxonomy.name!r} has top-level labels that look like metadata, not semantics: "
                     f"{', '.join(repr(m) for m in meta[:5])}; they will be edited as concepts")
    return found


def load_taxonomy(source: "str | Path | Taxonomy | dict") -> Taxonomy:
    """Load from a file (.json; .yaml/.yml; .txt/.md outline), a mapping, or pass a Taxonomy
    through. Raises DiffexError with a one-line message; warns (DiffexWarning) about a tree that
    loads but looks wrong (see `implausible`)."""
    if isinstance(source, Taxonomy):
        return source
    if isinstance(source, dict):
        taxonomy = from_mapping(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise DiffexError(f"taxonomy file not found: {path}")
        parsed = read_file(path, _reject_duplicate_keys)
        taxonomy = build_taxonomy(parsed.roots, parsed.name or path.stem, parsed.domain)
    for problem in implausible(taxonomy):
        warnings.warn(DiffexWarning(problem), stacklevel=2)
    return taxonomy
