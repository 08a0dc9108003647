"""`diffex verify`: check a store's rows against its cache folder and its derived data, and
repair what can be recomputed. DuckDB is the source of truth; the image cache is content
addressed and the FAISS files and effect tables are derived (docs/STYLE.md, point 4), so each
of them can be checked against the rows.

The checks, one row each in the report:

- `edit rows`, `score rows`, `edit links`: rows that point at a row that is not there.
  Reported, never repaired: diffex never writes them, so they mean a bug or a hand edit, and
  deleting them would throw away the evidence.
- `cached edit images`: every 'ok' or 'blocked' edit has its PNG. A missing one is reported;
  verify cannot recompute it (that needs the editor and the original image), the next
  `diffex index` with the same arguments does, bit-identically (`diffex/editing/stage.py`).
- `cached pixels`: a present PNG whose decoded pixels do not hash to the edit's
  `output_sha256` is corrupt; `--repair` deletes it, so it becomes missing (above).
- `unreferenced files`: PNGs no edit points at, leftover temporary files, and vector files of
  embedders the store does not have; `--repair` deletes them.
- `inversions`: cached LEDITS++ inversions are kept when their sidecar names an image and an
  editor of this store and the file name is their key; torn pairs, leftover temporary files
  and inversions of other images or editors are unreferenced and `--repair` deletes them.
  (An interrupted run's inversions are of stored images and editors: they are kept for the
  resume.)
- `vector index <embedder>`: the FAISS file against the embeddings table; a stale one is
  rebuilt by `--repair` (a missing one is fine: the first search builds it).
- `effect tables`: effect_images, effect_nodes and effect_pairs against a recomputation from the rows;
  `--repair` rebuilds them (the only repair that writes the database).

Only the layout diffex writes is scanned (`ab/`, `inversions/ab/`, `vectors/` under the cache
folder); anything else there is left alone. `--repair` deletes unreferenced files, so do not
run it on a cache folder shared by several stores.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ..embedding import vectors
from ..errors import DiffexError
from ..hashing import hash_image
from ..store.locks import index_run_lock
from ..store.core import Store

EXAMPLES = 3  # ids or paths shown per check
_PREFIX = re.compile(r"^[0-9a-f]{2}$")


@dataclass(frozen=True)
class CheckResult:
    """One check. status: 'ok', 'problem' (something is wrong now), 'repaired' (it was wrong
    and --repair fixed all of it) or 'skipped'. count: the problems found (before any repair),
    repaired: how many of them --repair fixed, examples: a few of the ids or paths concerned."""

    check: str
    status: str
    count: int
    detail: str
    repaired: int = 0
    examples: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.status != "problem"


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_store` found; `healthy` is False while any check has a problem left."""

    db: str
    cache_dir: str
    repair: bool
    checks: tuple[CheckResult, ...]

    @property
    def healthy(self) -> bool:
        return all(c.healthy for c in self.checks)

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.check == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"db": self.db, "cache_dir": self.cache_dir, "repair": self.repair, "healthy": self.healthy,
                "checks": [{**asdict(c), "examples": list(c.examples)} for c in self.checks]}


def verify_store(db: "str | Path", repair: bool = False, cache_dir: "str | Path | None" = None,
                 check_pixels: bool = True) -> VerifyReport:
    """Check the store at `db` (and its cache folder, by default `<db stem>-cache`).

    Without `repair` nothing is written: the database is opened read-only and the cache is
    only read. With `repair`, corrupt and unreferenced files are deleted, stale vector
    indexes rebuilt and drifting effect tables rebuilt (opening the database for writing only
    for that). check_pixels=False only checks that cached files exist (no decoding).
    Raises DiffexError for a path that is not a diffex store, or while an index run writes it."""
    db = Path(db)
    # 1. read the rows (read-only; this also turns bad input into one DiffexError)
    with Store.open(db, read_only=True, cache_dir=cache_dir) as store, _no_index_run(db):
        with store.hold():
            edits = store.edit_files()
            dangling = store.dangling_rows(EXAMPLES)
            image_ids, editor_ids = store.image_and_editor_ids()
            embedders = store.embedders()
            drift = store.verify_effects(repair=False)
        root = store.cache.root
        checks = _row_checks(dangling)
        # 2. the cache against the rows (the database file is let go meanwhile)
        checks += _edit_image_checks(store, edits, repair, check_pixels)
        checks.append(_unreferenced_check(root, edits, {e["embedder_id"] for e in embedders}, repair))
        checks.append(_inversion_check(root, image_ids, editor_ids, repair))
        # 3. derived data: vector indexes, then the effect tables
        checks += _vector_checks(store, embedders, repair)
    if repair and any(drift.values()):
        with Store.open(db, cache_dir=cache_dir) as writer, _no_index_run(db):
            writer.verify_effects(repair=True)
    checks.append(_effects_check(drift, repair))
    return VerifyReport(str(db), str(root), repair, tuple(checks))


@contextmanager
def _no_index_run(db: Path) -> Iterator[None]:
    """Hold the index-run lock: an index run writes cache files before it commits their rows,
    so a check during one would see them as unreferenced (and a repair would delete them)."""
    try:
        lock = index_run_lock(db)
        lock.__enter__()
    except DiffexError:
        raise DiffexError(f"an index run is writing to {db}; verify it when the run has finished") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _result(check: str, found: int, fixed: int, ok: str, problem: str, examples=()) -> CheckResult:
    """The check's row: `ok` is its detail when nothing was found, `problem` otherwise."""
    status = "problem" if found > fixed else ("repaired" if found else "ok")
    return CheckResult(check, status, found, problem if found else ok, fixed, tuple(list(examples)[:EXAMPLES]))


def _row_checks(dangling: dict[str, dict]) -> list[CheckResult]:
    groups = [
        ("edit rows", ("edits_without_image", "of a missing image"), ("edits_without_editor", "of a missing editor")),
        ("score rows", ("scores_without_item", "of a missing image or edit"),
         ("scores_without_classifier", "of a missing classifier")),
        ("edit links", ("links_without_edit", "to a missing edit"), ("links_without_node", "to a missing node")),
    ]
    out = []
    for check, *parts in groups:
        found = sum(dangling[k]["count"] for k, _ in parts)
        text = "; ".join(f"{dangling[k]['count']} {what}" for k, what in parts if dangling[k]["count"])
        examples = [x for k, _ in parts for x in dangling[k]["examples"]]
        out.append(_result(check, found, 0, "every row points at a stored row",
                           f"{text} (not repaired: diffex never writes such rows; look at them with `diffex query`)",
                           examples))
    return out


def _edit_image_checks(store: Store, edits: list[dict], repair: bool, check_pixels: bool) -> list[CheckResult]:
    cache = store.cache
    need = [e for e in edits if e["status"] in ("ok", "blocked")]
    bad_rows = [e["edit_id"] for e in need if not e["cache_path"] or not e["output_sha256"]
                or e["cache_path"] != f"{e['output_sha256'][:2]}/{e['output_sha256']}.png"]
    by_file: dict[str, list[dict]] = defaultdict(list)
    bad = set(bad_rows)
    for e in need:
        if e["edit_id"] not in bad:
            by_file[e["cache_path"]].append(e)
    # pixels first: a corrupt file deleted by --repair is then counted as missing
    present = sorted(rel for rel in by_file if cache.has(rel))
    if check_pixels:
        corrupt = [rel for rel, same in zip(present, _map(lambda rel: _pixels_match(cache, rel), present)) if not same]
        for rel in corrupt if repair else ():
            cache.path(rel).unlink(missing_ok=True)
        n_edits = sum(len(by_file[rel]) for rel in corrupt)
        pixels = _result("cached pixels", len(corrupt), len(corrupt) if repair else 0,
                         f"{len(present)} cached files hash to their edits' output_sha256",
                         f"{len(corrupt)} cached files ({n_edits} edits) whose pixels differ from output_sha256; "
                         + ("deleted: the next `diffex index` with the same arguments recomputes them" if repair
                            else "--repair deletes them, so the next `diffex index` recomputes them"),
                         corrupt)
    else:
        pixels = CheckResult("cached pixels", "skipped", 0, "not checked (--no-pixels)")
    missing = sorted(rel for rel in by_file if not cache.has(rel))
    n_missing = sum(len(by_file[rel]) for rel in missing)
    images = _result("cached edit images", n_missing, 0,
                     f"all {len(need)} ok/blocked edits have their cached file ({len(by_file)} files)",
                     f"{n_missing} cached edit images missing ({len(missing)} files); the next `diffex index` "
                     "with the same arguments recomputes them bit-identically",
                     [by_file[rel][0]["edit_id"] for rel in missing])
    rows = _result("edit files", len(bad_rows), 0, "every ok/blocked edit names its file by its pixel hash",
                   f"{len(bad_rows)} ok/blocked edits without a pixel hash or with a cache_path that is not "
                   "named by it (not repaired)", bad_rows)
    return [rows, images, pixels]


def _pixels_match(cache, rel: str) -> bool:
    expected = Path(rel).stem
    try:
        return hash_image(cache.load(rel)) == expected
    except Exception:  # truncated or not an image: corrupt
        return False


def _map(fn, items: list) -> list:
    """fn over items on a few threads (decoding and hashing release the GIL)."""
    if len(items) < 16:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def _files(folder: Path) -> list[Path]:
    """Plain files directly inside `folder` (none when it does not exist)."""
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if e.is_file(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _prefix_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False) and _PREFIX.match(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _unreferenced_check(root: Path, edits: list[dict], embedder_ids: set[str], repair: bool) -> CheckResult:
    referenced = {e["cache_path"] for e in edits if e["cache_path"]}
    images = [p for d in _prefix_dirs(root) for p in _files(d) if f"{d.name}/{p.name}" not in referenced]
    keep = {f"{eid}{suffix}" for eid in embedder_ids for suffix in (".faiss", ".json")}
    vector_files = [p for p in _files(root / "vectors") if p.name not in keep]
    stray = images + vector_files
    if repair:
        for p in stray:
            p.unlink(missing_ok=True)
    parts = [f"{len(images)} image-cache files no edit points at"] if images else []
    parts += [f"{len(vector_files)} vector files of no stored embedder"] if vector_files else []
    return _result("unreferenced files", len(stray), len(stray) if repair else 0,
                   "every cached image is an edit's", "; ".join(parts) + ("; deleted" if repair else "; --repair deletes them"),
                   [str(p.relative_to(root)) for p in stray])


def _inversion_check(root: Path, image_ids: set[str], editor_ids: set[str], repair: bool) -> CheckResult:
    from ..editing.ledits.spec import INVERSIONS, inversion_key  # no diffusers import: key and layout only

    folder = root / INVERSIONS
    files = [p for d in _prefix_dirs(folder) for p in _files(d)]
    by_key: dict[str, list[Path]] = defaultdict(list)
    stray: list[Path] = []
    for p in files:
        key, _, ext = p.name.partition(".")
        if key and ext in ("safetensors", "json"):
            by_key[key].append(p)
        else:  # a temporary file a killed run left (".<name>.<pid>.<random>") or a foreign one
            stray.append(p)
    kept = 0
    for key, group in by_key.items():
        names = {p.name for p in group}
        ok = names == {f"{key}.safetensors", f"{key}.json"}
        if ok:
            try:
                side = json.loads((group[0].parent / f"{key}.json").read_text(encoding="utf-8"))
                ok = (side.get("image_id") in image_ids and side.get("editor_id") in editor_ids
                      and key == side.get("key") == inversion_key(side["image_id"], side["editor_id"], side["seed"]))
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
        if ok:
            kept += 1
        else:
            stray.extend(group)
    if repair:
        for p in stray:
            p.unlink(missing_ok=True)
    return _result("inversions", len(stray), len(stray) if repair else 0,
                   f"{kept} cached inversions, all of stored images and editors" if kept else "no cached inversions",
                   f"{len(stray)} inversion files of no stored image or editor, torn or left over"
                   + ("; deleted" if repair else "; --repair deletes them"),
                   [str(p.relative_to(root)) for p in stray])


def _vector_checks(store: Store, embedders: list[dict], repair: bool) -> list[CheckResult]:
    if not embedders:
        return [CheckResult("vector index", "ok", 0, "no embedder in this store")]
    out = []
    for emb in embedders:
        eid, name = emb["embedder_id"], emb["spec"] or emb["name"]
        state = vectors.index_status(store, eid)
        check = f"vector index {name}"
        if state == "missing":
            out.append(CheckResult(check, "ok", 0, "not built yet: the first `diffex search` builds it"))
            continue
        if state == "ok":
            n = store.embedding_fingerprint(eid, vectors.KINDS)[0]
            out.append(CheckResult(check, "ok", 0, f"{n} image and edit vectors; matches the database"))
            continue
        fixed = 0
        if repair:
            vectors.VectorIndex.open(store, eid)
            fixed = int(vectors.index_status(store, eid) == "ok")
        path = str(vectors.index_path(store, eid).relative_to(store.cache.root))
        out.append(_result(check, 1, fixed, "", "stale: it disagrees with the embeddings table"
                           + ("; rebuilt" if fixed else " (searches rebuild it; --repair rebuilds it now)"), [path]))
    return out


def _effects_check(drift: dict[str, int], repair: bool) -> CheckResult:
    found = sum(drift.values())
    return _result("effect tables", found, found if repair else 0,
                   "effect_images, effect_nodes, effect_pairs and the side-effect counts equal a recomputation from the rows",
                   f"{drift['effect_images']} effect_images rows and {drift['effect_nodes']} effect_nodes rows "
                   f"and {drift.get('effect_pairs', 0)} effect_pairs rows "
                   f"and {drift.get('side_effects', 0)} side-effect count rows differ "
                   "from a recomputation" + ("; rebuilt" if repair else "; --repair rebuilds them"),
                   [f"{t}: {n}" for t, n in drift.items() if n])
