"""Everything a report shows, read from the store alone: no model is loaded and no effect is
recomputed (the effect tables, the compare test and the cached files are what indexing left).

`gather(db, class_name, ...)` returns a `ReportData`; diffex/report/render.py turns it into HTML.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..store import Store

STRIP_NODES = 10  # nodes with image strips (the strongest by |effect|)
STRIP_IMAGES = 24  # images per strip, the most affected first (the page shows them 6 at a time)
EXPLAINED_IMAGES = 8  # per-image explanations, the images with the strongest single effect first
EXPLAIN_ROWS = 10  # nodes listed per explained image
EXPLAIN_EDITS = 3  # of which the first few get their edits shown


@dataclass(frozen=True)
class Picture:
    """One thumbnail to show: `key` names its pixels (an image id or an edit's output hash),
    `path` is the file to read, or None with `missing` saying why there is nothing to show."""

    key: str
    path: Path | None
    missing: str | None = None


@dataclass(frozen=True)
class EditCell:
    direction: str
    seed: int
    status: str  # ok | failed | blocked
    valid: bool  # False: the embedder saw no sign of the concept; left out of the effect
    prob: float | None  # P(class) of the edit
    delta: float | None  # prob - P(class) of the baseline
    picture: Picture


@dataclass(frozen=True)
class StripRow:
    """One image of a strip: original, null-edit baseline, then every edit of the node."""

    image_id: str
    name: str
    prob_original: float | None
    prob_baseline: float | None
    effect: float | None  # the node's mean delta P on this image over its valid edits
    original: Picture
    baseline: Picture
    edits: tuple[EditCell, ...]


@dataclass(frozen=True)
class Strip:
    node_id: str
    label: str
    path: str
    effect: float | None
    rows: tuple[StripRow, ...]


@dataclass(frozen=True)
class Explanation:
    """One image's strongest nodes, with the edits of the first few."""

    row: StripRow  # edits: those of the first EXPLAIN_EDITS nodes, in rank order
    nodes: tuple[dict, ...]  # rank, node, path, mean_delta_prob, n_edits
    edit_nodes: tuple[str, ...]  # the labels the edits in `row` belong to, one per edit


@dataclass
class ReportData:
    meta: dict[str, Any]
    nodes: list[dict]  # the taxonomy in tree order: node_id, parent_id, label, path, depth, effects, n_blocked, n_failed
    directions: list[str]
    strips: list[Strip] = field(default_factory=list)
    explanations: list[Explanation] = field(default_factory=list)
    comparison: dict[str, Any] | None = None


def _version() -> str:
    try:
        return importlib.metadata.version("diffex")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _label(clf: dict) -> str:
    return clf["spec"] or f"{clf['name']} {clf['classifier_id'][:8]}"


def _tree_order(nodes: list[dict]) -> list[dict]:
    """Parents before children, siblings in taxonomy order (depth-first)."""
    children: dict[str | None, list[dict]] = {}
    ids = {n["node_id"] for n in nodes}
    for n in nodes:
        children.setdefault(n["parent_id"] if n["parent_id"] in ids else None, []).append(n)
    out: list[dict] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(children.get(n["node_id"], [])))
    return out


def gather(db: "str | Path", class_name: str, classifier: str | None = None, compare: str | None = None,
           taxonomy: str | None = None) -> ReportData:
    """Read what the report shows for `class_name` under `classifier` (default: the store's
    default), optionally compared with the earlier version `compare`. Raises DiffexError for
    an unknown store, classifier, class or taxonomy."""
    with Store.open(db, read_only=True) as store, store.hold():
        # 1. what the report is about
        clf = store.check_class(class_name, classifier)
        base = store.check_class(class_name, compare) if compare else None
        if base is not None and base["classifier_id"] == clf["classifier_id"]:
            raise UsageError(f"--compare names the same classifier as --classifier ({_label(clf)})")
        cid = clf["classifier_id"]
        tax = store.resolve_taxonomy(taxonomy)
        info = store.info()
        effects = {d: store.node_effects(class_name, cid, d) for d in ("add", "remove")}
        directions = [d for d in ("add", "remove") if effects[d]] or ["add"]
        # one editor: the one whose effects cover the most nodes (a store rarely holds two)
        editor_counts: dict[str, int] = {}
        for r in effects[directions[0]]:
            editor_counts[r["editor_id"]] = editor_counts.get(r["editor_id"], 0) + 1
        editor_id = max(editor_counts, key=editor_counts.get) if editor_counts else None
        editor = next((e for e in info["editors"] if e["editor_id"] == editor_id), None)

        # 2. the tree, each node with its effect per direction and its blocked/failed edits
        status = {(r["node_id"], r["direction"]): r for r in store.node_edit_status() if r["editor_id"] == editor_id}
        by_node = {(r["node_id"], d): r for d in directions for r in effects[d] if r["editor_id"] == editor_id}
        nodes = []
        for n in _tree_order(store.taxonomy_node_rows(tax["taxonomy_id"])):
            eff = {}
            for d in directions:
                r = by_node.get((n["node_id"], d))
                if r is not None:
                    eff[d] = {k: r[k] for k in ("mean_delta_prob", "ci_low", "ci_high", "n_images", "n_edits",
                                                "n_invalid", "sign_consistency")}
            st = [status[(n["node_id"], d)] for d in directions if (n["node_id"], d) in status]
            nodes.append({**n, "effects": eff, "n_blocked": sum(s["n_blocked"] for s in st),
                          "n_failed": sum(s["n_failed"] for s in st)})

        # 3. image strips of the strongest nodes (first direction), the most affected images first
        images = {r["image_id"]: r for r in store.report_images(class_name, cid, directions[0])
                  if r["editor_id"] in (editor_id, None)}
        d0 = directions[0]
        ranked = sorted((n for n in nodes if d0 in n["effects"] and n["effects"][d0]["mean_delta_prob"] is not None),
                        key=lambda n: (-abs(n["effects"][d0]["mean_delta_prob"]), n["path"]))[:STRIP_NODES]
        per_image = {}
        for r in store.image_effects_of(class_name, [n["node_id"] for n in ranked], cid, d0):
            if r["editor_id"] == editor_id:
                per_image.setdefault(r["node_id"], []).append(r)
        chosen = {n["node_id"]: [r["image_id"] for r in sorted(
            per_image.get(n["node_id"], []),
            key=lambda r: (r["mean_delta_prob"] is None, -abs(r["mean_delta_prob"] or 0), r["image_id"]))][:STRIP_IMAGES]
            for n in ranked}
        wanted_images = sorted({i for ids in chosen.values() for i in ids})
        edits = store.report_edits(class_name, [n["node_id"] for n in ranked], wanted_images, cid)
        cells = _cells(store, edits, images, editor_id)
        effect_of = {(r["node_id"], r["image_id"]): r["mean_delta_prob"] for rows in per_image.values() for r in rows}
        strips = []
        for n in ranked:
            rows = tuple(_row(store, images[i], [c for c in cells.get((n["node_id"], i), [])],
                              effect_of.get((n["node_id"], i))) for i in chosen[n["node_id"]] if i in images)
            strips.append(Strip(n["node_id"], n["label"], n["path"], n["effects"][d0]["mean_delta_prob"], rows))

        # 4. per-image explanations: the images with the strongest single effect
        explanations = []
        label_to_id = {n["path"]: n["node_id"] for n in nodes}
        for img in [r for r in images.values() if r["strongest_effect"] is not None][:EXPLAINED_IMAGES]:
            top = store.image_explanation(img["image_id"], class_name, cid, d0)[:EXPLAIN_ROWS]
            first = [label_to_id[r["path"]] for r in top[:EXPLAIN_EDITS] if r["path"] in label_to_id]
            ex_edits = store.report_edits(class_name, first, [img["image_id"]], cid)
            ex_cells = _cells(store, ex_edits, images, editor_id)
            row_cells, owners = [], []
            for node_id in first:
                label = next(n["label"] for n in nodes if n["node_id"] == node_id)
                for c in ex_cells.get((node_id, img["image_id"]), []):
                    row_cells.append(c)
                    owners.append(label)
            explanations.append(Explanation(_row(store, img, row_cells, img["strongest_effect"]),
                                            tuple({k: r[k] for k in ("rank", "node", "path", "mean_delta_prob", "n_edits")}
                                                  for r in top), tuple(owners)))

        meta = {
            "db": str(Path(db)), "class_name": class_name, "classifier": _label(clf), "classifier_id": cid,
            "compare": _label(base) if base else None,
            "editor": (editor["spec"] or editor["name"]) if editor else None, "editor_id": editor_id,
            "taxonomy": f"{tax['name']} {tax['taxonomy_id'][:8]}", "taxonomy_created": str(tax["created_at"]),
            "counts": {k: info[k] for k in ("images", "nodes", "edits", "baselines", "edits_blocked", "scores")},
            "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "diffex_version": _version(), "directions": directions,
        }
    comparison = None
    if base is not None:
        comparison = _compare(db, base["classifier_id"], cid, class_name, d0, meta)
    return ReportData(meta, nodes, directions, strips, explanations, comparison)


def _compare(db, a: str, b: str, class_name: str, direction: str, meta: dict) -> dict[str, Any]:
    """A (--compare) against B (--classifier): the paired permutation test of `diffex compare`."""
    from ..analysis.compare import compare_classifiers

    result = compare_classifiers(db, a, b, class_name, direction=direction)
    rows = [asdict(r) for r in result.rows]
    return {"a": meta["compare"], "b": meta["classifier"], "method": result.method, "rows": rows,
            "n_changed": len(result.changed)}


def _picture_of_edit(store: Store, e: dict) -> Picture:
    if e["status"] == "blocked":
        return Picture(e["edit_id"], None, "blocked by the safety checker")
    if e["status"] != "ok" or not e["cache_path"]:
        return Picture(e["edit_id"], None, f"edit {e['status']}")
    path = store.cache.path(e["cache_path"])
    # the cache names files by their pixel hash: the thumbnail key is that hash
    return Picture(Path(e["cache_path"]).stem, path, None if path.is_file() else "not in the cache (diffex verify)")


def _cells(store: Store, edits: list[dict], images: dict, editor_id) -> dict[tuple[str, str], list[EditCell]]:
    out: dict[tuple[str, str], list[EditCell]] = {}
    for e in edits:
        if e["editor_id"] != editor_id:
            continue
        base = images.get(e["image_id"], {}).get("prob_baseline")
        prob = e["prob_edit"] if e["status"] == "ok" else None
        delta = prob - base if prob is not None and base is not None else None
        out.setdefault((e["node_id"], e["image_id"]), []).append(
            EditCell(e["direction"], e["seed"], e["status"], bool(e["valid"]), prob, delta, _picture_of_edit(store, e)))
    return out


def _row(store: Store, img: dict, cells: list[EditCell], effect: float | None) -> StripRow:
    uri = Path(img["uri"])
    original = Picture(img["image_id"], uri if uri.is_file() else None,
                       None if uri.is_file() else "original not found at its path")
    if img["baseline_path"] and img["baseline_status"] == "ok":
        bpath = store.cache.path(img["baseline_path"])
        baseline = Picture(Path(img["baseline_path"]).stem, bpath, None if bpath.is_file() else "not in the cache")
    else:
        baseline = Picture(f"baseline-{img['image_id']}", None, "no baseline")
    return StripRow(img["image_id"], uri.name, img["prob_original"], img["prob_baseline"], effect,
                    original, baseline, tuple(cells))
