"""Curate the taxonomy versions kept in a store: show, add, remove, rename, merge, export.

Every change writes a NEW version (a `taxonomies` row whose `parent_taxonomy_id` is the version
it came from and whose `note` says what changed) and never touches the old one. Node ids hash
the node's path, and edit ids hash the edit prompt, not the node, so every node whose path and
prompt survive a change keeps all its cached edits and scores: re-indexing recomputes only the
nodes that really changed.

Paths are written 'facial hair > beard > goatee' or 'facial hair/beard/goatee'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DiffexError, UsageError
from ..store.core import Store
from .tree import build_taxonomy, normalise_label, to_nested
from .formats import Entry
from ..types import Node, Taxonomy


@dataclass(frozen=True)
class CurationResult:
    """What one change made: the new version, the one it came from, and the note stored with it."""

    taxonomy_id: str
    parent_taxonomy_id: str
    note: str
    nodes: int
    existed: bool = False  # the change led back to a version already in the store
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"taxonomy_id": self.taxonomy_id, "parent_taxonomy_id": self.parent_taxonomy_id, "note": self.note,
                "nodes": self.nodes, "existed": self.existed, "notes": list(self.notes)}


def parse_path(text: str) -> tuple[str, ...]:
    """'A > B > C' or 'A/B/C' -> normalised labels; '>' wins when both appear."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("give a node path such as 'facial hair > beard > goatee'")
    parts = text.split(">") if ">" in text else text.split("/")
    try:
        return tuple(normalise_label(p) for p in parts)
    except DiffexError as exc:
        raise UsageError(f"bad node path {text!r}: {exc}") from None


# ---------------------------------------------------------------- reading versions
def taxonomy_from_store(store: Store, which: str | None = None) -> tuple[Taxonomy, dict]:
    """The version `which` (id, id prefix or name; default the newest) as a Taxonomy, with its row."""
    row = store.resolve_taxonomy(which)
    rows = store.taxonomy_node_rows(row["taxonomy_id"])
    by_id = {r["node_id"]: r for r in rows}

    def path_of(r: dict) -> tuple[str, ...]:  # from the labels, so a label holding ' > ' stays whole
        parent = by_id.get(r["parent_id"])
        return (path_of(parent) if parent else ()) + (r["label"],)

    nodes = [Node(node_id=r["node_id"], path=path_of(r), prompt=r["prompt"], parent_id=r["parent_id"]) for r in rows]
    # parents before children, siblings in the order they were stored
    order = {n.node_id: i for i, n in enumerate(nodes)}
    kids: dict[str | None, list[Node]] = {}
    for n in nodes:
        kids.setdefault(n.parent_id if n.parent_id in order else None, []).append(n)
    ordered: list[Node] = []

    def walk(parent: str | None) -> None:
        for n in kids.get(parent, []):
            ordered.append(n)
            walk(n.node_id)

    walk(None)
    tax = Taxonomy(taxonomy_id=row["taxonomy_id"], name=row["name"], domain=row["domain"] or "images", nodes=tuple(ordered))
    return tax, row


def _tree(tax: Taxonomy) -> list[Entry]:
    """Mutable entries (label, prompt override, children) for editing."""

    def entry(node: Node) -> Entry:
        return Entry(node.label, None if node.prompt == node.label else node.prompt,
                     [entry(c) for c in tax.children(node.node_id)])

    return [entry(n) for n in tax.children(None)]


def _find(roots: list[Entry], path: tuple[str, ...], what: str = "node") -> tuple[list[Entry], Entry]:
    """(the list holding the node, the node) for `path`; a one-line error naming close labels."""
    siblings = roots
    for depth, label in enumerate(path):
        match = next((e for e in siblings if e.label == label), None)
        if match is None:
            known = ", ".join(repr(e.label) for e in siblings[:8]) or "none"
            at = " > ".join(path[:depth]) or "the top level"
            raise DiffexError(f"no {what} {' > '.join(path)!r}: {label!r} is not under {at} (there: {known})")
        if depth == len(path) - 1:
            return siblings, match
        siblings = match.children
    raise AssertionError("unreachable")


def _merge_into(target: list[Entry], moved: list[Entry], notes: list[str], where: tuple[str, ...]) -> None:
    """Move entries under `target`; one that meets a sibling with its label merges into it."""
    for e in moved:
        same = next((t for t in target if t.label == e.label), None)
        if same is None:
            target.append(e)
            continue
        notes.append(f"merged {' > '.join(where + (e.label,))!r} with the node already there")
        if same.prompt is None:
            same.prompt = e.prompt
        _merge_into(same.children, e.children, notes, where + (e.label,))


# ---------------------------------------------------------------- changes
def _commit(store: Store, base: Taxonomy, roots: list[Entry], note: str, notes: list[str]) -> CurationResult:
    """Validate the edited tree as any taxonomy file is validated, and store it as a new version."""
    if not roots:
        raise DiffexError("that change would leave the taxonomy empty")
    new = build_taxonomy(roots, base.name, base.domain)
    if new.taxonomy_id == base.taxonomy_id:
        raise DiffexError(f"nothing changed: {note} gives the same taxonomy {base.taxonomy_id[:12]}")
    existed = any(r["taxonomy_id"] == new.taxonomy_id for r in store.taxonomy_versions())
    if existed:
        store.promote_taxonomy(new.taxonomy_id)
    else:
        store.add_taxonomy(new, source=f"curation of {base.taxonomy_id}", parent_taxonomy_id=base.taxonomy_id, note=note)
    return CurationResult(new.taxonomy_id, base.taxonomy_id, note, len(new.nodes), existed, tuple(notes))


def _open(db: "str | Path | Store"):
    return (db, False) if isinstance(db, Store) else (Store.open(db), True)


def _change(db, taxonomy: str | None, edit) -> CurationResult:
    store, owns = _open(db)
    try:
        base, _ = taxonomy_from_store(store, taxonomy)
        roots = _tree(base)
        notes: list[str] = []
        note = edit(roots, notes)
        return _commit(store, base, roots, note, notes)
    finally:
        if owns:
            store.close()


def add_node(db, label: str, parent: str | None = None, prompt: str | None = None, taxonomy: str | None = None) -> CurationResult:
    """Add `label` (with an optional editing prompt) under `parent`, or as a new top-level group."""
    new_label = normalise_label(label)

    def edit(roots: list[Entry], notes: list[str]) -> str:
        siblings = roots
        where: tuple[str, ...] = ()
        if parent:
            where = parse_path(parent)
            siblings = _find(roots, where, "parent")[1].children
        if any(e.label == new_label for e in siblings):
            raise DiffexError(f"{' > '.join(where + (new_label,))!r} already exists")
        siblings.append(Entry(new_label, prompt))
        return f"add {' > '.join(where + (new_label,))!r}"

    return _change(db, taxonomy, edit)


def remove_node(db, path: str, taxonomy: str | None = None) -> CurationResult:
    """Remove the node at `path` with its whole subtree."""
    target = parse_path(path)

    def edit(roots: list[Entry], notes: list[str]) -> str:
        siblings, node = _find(roots, target)
        siblings.remove(node)
        size = _count(node.children)
        return f"remove {' > '.join(target)!r}" + (f" and {size} node(s) below it" if size else "")

    return _change(db, taxonomy, edit)


def rename_node(db, path: str, new_label: str, prompt: str | None = None, taxonomy: str | None = None) -> CurationResult:
    """Rename the node at `path`. Its editing prompt becomes the new label unless `prompt` is given;
    its children keep their prompts, so their cached edits are reused."""
    target = parse_path(path)
    label = normalise_label(new_label)

    def edit(roots: list[Entry], notes: list[str]) -> str:
        siblings, node = _find(roots, target)
        if label != node.label and any(e.label == label for e in siblings):
            raise DiffexError(f"{' > '.join(target[:-1] + (label,))!r} already exists; use `merge` to combine them")
        node.label, node.prompt = label, prompt
        return f"rename {' > '.join(target)!r} to {label!r}"

    return _change(db, taxonomy, edit)


def merge_nodes(db, source: str, into: str, taxonomy: str | None = None) -> CurationResult:
    """Merge node `source` into node `into`: its children move under `into` (a child meeting one
    with its label merges with it), and `source` itself disappears."""
    a, b = parse_path(source), parse_path(into)

    def edit(roots: list[Entry], notes: list[str]) -> str:
        if a == b:
            raise UsageError("cannot merge a node into itself")
        if b[: len(a)] == a:
            raise DiffexError(f"cannot merge {' > '.join(a)!r} into its own descendant {' > '.join(b)!r}")
        siblings, node = _find(roots, a)
        _, target = _find(roots, b)
        siblings.remove(node)
        _merge_into(target.children, node.children, notes, b)
        return f"merge {' > '.join(a)!r} into {' > '.join(b)!r}"

    return _change(db, taxonomy, edit)


def _count(entries: list[Entry]) -> int:
    return sum(1 + _count(e.children) for e in entries)


# ---------------------------------------------------------------- reading for people
def show(db, taxonomy: str | None = None) -> dict:
    """One version: its row, its nodes (in tree order) and the paper-style nested form."""
    store = Store.open(db, read_only=True) if not isinstance(db, Store) else db
    try:
        tax, row = taxonomy_from_store(store, taxonomy)
    finally:
        if store is not db:
            store.close()
    return {
        **{k: row[k] for k in ("taxonomy_id", "name", "domain", "source", "created_at", "parent_taxonomy_id", "note")},
        "nodes": [
            {"node_id": n.node_id, "path": " > ".join(n.path), "label": n.label, "depth": n.depth,
             "prompt": n.prompt, "parent_id": n.parent_id}
            for n in tax.nodes
        ],
        "tree": to_nested(tax),
    }


def versions(db) -> list[dict]:
    """Every version in the store, the newest first, with where it came from."""
    store = Store.open(db, read_only=True) if not isinstance(db, Store) else db
    try:
        return store.taxonomy_versions()
    finally:
        if store is not db:
            store.close()


def export(db, out: "str | Path | None" = None, taxonomy: str | None = None) -> dict:
    """The paper-style JSON of a version; written to `out` when given. `diffex index --taxonomy`
    reads it back into the very same taxonomy id."""
    data = show(db, taxonomy)["tree"]
    if out is not None:
        path = Path(out)
        if path.is_dir():
            raise DiffexError(f"--out {path} is a directory; give a file such as {path / 'taxonomy.json'}")
        try:
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            raise DiffexError(f"cannot write {path}: {exc}") from None
    return data


def render_tree(info: dict) -> str:
    """An indented text view of `show()`: one node per line, prompts that differ in brackets."""
    head = f"taxonomy {info['taxonomy_id'][:12]}  {info['name']}  ({info['domain']}, {len(info['nodes'])} nodes)"
    if info.get("parent_taxonomy_id"):
        head += f"\n  from {info['parent_taxonomy_id'][:12]}: {info['note']}"
    lines = [head, ""]
    for n in info["nodes"]:
        extra = f"   [prompt: {n['prompt']}]" if n["prompt"] != n["label"] else ""
        lines.append("  " * (n["depth"] - 1) + n["label"] + extra)
    return "\n".join(lines)
