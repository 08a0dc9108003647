"""The edit stage: make sure every requested edit exists in the store and the image cache,
computing only what is missing. One editor session per image (invert once, edit many);
images go to the editor `editor.batch_size` at a time, each edit applied to the whole group."""

from __future__ import annotations

import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from .base import Editor
from ..errors import DiffexError, DiffexWarning
from ..hashing import edit_id_for
from ..models import first_line
from ..store.core import Store
from ..types import Concept, EditRecord


@dataclass(frozen=True)
class EditRequest:
    """One edit to have: `concepts == ()` is the image's null-edit baseline."""

    image_id: str
    concepts: tuple[Concept, ...]
    seed: int
    node_ids: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return "baseline" if not self.concepts else ("single" if len(self.concepts) == 1 else "joint")

    @property
    def direction(self) -> str:
        dirs = {c.direction for c in self.concepts}
        return "none" if not dirs else (dirs.pop() if len(dirs) == 1 else "mixed")

    @property
    def prompts(self) -> tuple[str, ...]:
        # a mixed joint edit keeps each concept's direction in its prompt key
        if self.direction == "mixed":
            return tuple(f"{c.direction}:{c.prompt}" for c in self.concepts)
        return tuple(c.prompt for c in self.concepts)

    def edit_id(self, editor_id: str) -> str:
        return edit_id_for(self.image_id, editor_id, self.prompts, self.direction, self.seed)


def baseline_request(image_id: str) -> EditRequest:
    return EditRequest(image_id=image_id, concepts=(), seed=0)


@dataclass
class EditCounts:
    computed: int = 0
    reused: int = 0
    blocked: int = 0  # computed, but withheld by the editor (status 'blocked')
    failed: int = 0  # the editor raised on their image: stored as 'failed', retried by the next run
    failures: list[dict] = field(default_factory=list)  # {"image_id", "edits", "error"} per failed group


@dataclass
class EditResult:
    """One computed edit as it comes back to the driver: the pixels in memory (`image`, in
    process), as PNG bytes with their hash (`png`, `digest`, from a remote worker), or already
    in the shared cache (`digest`, `cache_path`); status 'failed' carries `error` and no pixels."""

    request: EditRequest
    status: str
    seconds: float = 0.0
    image: Image.Image | None = None
    png: bytes | None = None
    digest: str | None = None
    cache_path: str | None = None
    error: str | None = None


def edit_group(editor: Editor, images: dict[str, Image.Image], group: Sequence[str],
               missing: dict[str, list[EditRequest]], cache_root: Path,
               tick: Callable[[int], None] | None = None) -> list[EditResult]:
    """The edits `missing[i]` of the images `group` (at most editor.batch_size), one editor
    session per image. Runs wherever the editor lives (this process or a Ray worker): it knows
    no store. An exception from the editor fails the whole group: its edits come back as
    status 'failed' with the error, and the run goes on with the next group. `tick(n)` is
    called after each editor call with the edits it made (a progress bar)."""
    try:
        out: list[EditResult] = []
        with ExitStack() as stack:
            sessions = {i: stack.enter_context(editor.open(images[i], i, cache_root)) for i in group}
            # the same edit (concepts, seed) of every image in the group is one editor call;
            # by seed first, so each image's inversion for that seed is loaded once
            jobs: dict[tuple, list[EditRequest]] = {}
            for i in group:
                for req in missing[i]:
                    jobs.setdefault((req.seed, req.concepts), []).append(req)
            for (seed, concepts), reqs in sorted(jobs.items(), key=lambda kv: kv[0][0]):
                t0 = time.perf_counter()
                outputs = editor.edit_batch([sessions[r.image_id] for r in reqs], concepts, seed)
                seconds = (time.perf_counter() - t0) / len(reqs)
                out.extend(EditResult(req, o.status, seconds, image=o.image) for req, o in zip(reqs, outputs))
                if tick is not None:
                    tick(len(reqs))
        return out
    except Exception as exc:  # noqa: BLE001 (one bad image must not end a days-long run; recorded, retried next run)
        return failed_group(group, missing, f"{type(exc).__name__}: {first_line(exc)}")


def failed_group(group: Sequence[str], missing: dict[str, list[EditRequest]], error: str) -> list[EditResult]:
    return [EditResult(req, "failed", error=error) for i in group for req in missing[i]]


def groups_of(missing: dict[str, list[EditRequest]], editor: Editor) -> list[list[str]]:
    """Images in request order, `editor.batch_size` at a time: the unit of work and of commit."""
    image_ids = list(missing)
    step = max(1, int(getattr(editor, "batch_size", 1) or 1))
    return [image_ids[start : start + step] for start in range(0, len(image_ids), step)]


def in_process(editor: Editor, images, groups, missing, cache_root: Path, progress=None):
    """The plain executor: each group in this process, in order. A Ray executor
    (diffex/indexing/ray_pool.py) has the same shape and yields groups as workers finish them."""
    total = sum(len(missing[i]) for g in groups for i in g)
    bar = progress(total=total, desc="editing", unit="edit") if progress and total else None
    try:
        for group in groups:
            done = [0]

            def tick(n: int) -> None:
                done[0] += n
                if bar is not None:
                    bar.update(n)

            results = edit_group(editor, images, group, missing, cache_root, tick)
            if bar is not None and len(results) > done[0]:  # a failed group: its edits are settled too
                bar.update(len(results) - done[0])
            yield group, results
    finally:
        if bar is not None:
            bar.close()


def ensure_edits(
    store: Store,
    editor: Editor,
    images: dict[str, Image.Image],
    requests: Sequence[EditRequest],
    progress: Callable | None = None,
    executor: Any = None,
) -> EditCounts:
    """Compute the missing edits of `requests`. Images are edited `editor.batch_size` at a time
    and each group's edits are committed together as it arrives, so an interrupted run keeps
    every finished group and the next run resumes there. A 'blocked' edit (pixels withheld by
    the editor's safety checker) is kept as such: recomputing it would give the same result.
    `executor`: where the groups run (None: this process; see diffex/indexing/ray_pool.py)."""
    editor_id = editor.editor_id
    ids = {req: req.edit_id(editor_id) for req in requests}
    existing = store.edits_by_id(sorted(set(ids.values())))
    counts = EditCounts()
    missing: dict[str, list[EditRequest]] = {}
    reused_links: list[tuple[str, str]] = []
    seen: set[str] = set()
    for req, edit_id in ids.items():
        row = existing.get(edit_id)
        if row and row["status"] in ("ok", "blocked") and store.cache.has(row["cache_path"]):
            if edit_id not in seen:
                counts.reused += 1
            reused_links.extend((edit_id, n) for n in req.node_ids)
        elif edit_id not in seen:
            # absent, failed, or its cached file was deleted: (re)compute, same seed, same pixels
            missing.setdefault(req.image_id, []).append(req)
        seen.add(edit_id)
    store.link_edit_nodes(reused_links)

    run = executor.edit_groups if executor is not None else in_process
    for group, results in run(editor, images, groups_of(missing, editor), missing, store.cache.root, progress):
        records = [_record(store, editor_id, ids[r.request], r) for r in results]
        store.add_edits(records, known=existing)
        failed = [r for r in results if r.status == "failed"]
        counts.computed += len(records) - len(failed)
        counts.blocked += sum(r.status == "blocked" for r in records)
        if failed:
            counts.failed += len(failed)
            for image_id in dict.fromkeys(r.request.image_id for r in failed):
                n = sum(r.request.image_id == image_id for r in failed)
                counts.failures.append({"image_id": image_id, "edits": n, "error": failed[0].error})
                warnings.warn(DiffexWarning(f"the editor failed on image {image_id[:12]}: {failed[0].error}; "
                                            f"its {n} edits are stored as 'failed' and retried by the next run"))
    return counts


def _record(store: Store, editor_id: str, edit_id: str, r: EditResult) -> EditRecord:
    """The edit's row, its pixels put in the store's cache (unless a worker already did)."""
    digest, rel = r.digest, r.cache_path
    if r.status == "failed":
        digest = rel = None
    elif r.image is not None:
        digest, rel = store.cache.put(r.image)
    elif r.png is not None:
        digest, rel = store.cache.put_encoded(r.digest, r.png)
    elif not store.cache.has(rel):
        raise DiffexError(f"a worker reported edit {edit_id[:12]} at {store.cache.path(rel or '')}, which this process "
                          "cannot read: the cache is not on storage shared with the workers")
    req = r.request
    return EditRecord(edit_id=edit_id, image_id=req.image_id, editor_id=editor_id, kind=req.kind,
                      prompts=req.prompts, direction=req.direction, seed=req.seed, output_sha256=digest,
                      cache_path=rel, status=r.status, seconds=r.seconds, node_ids=req.node_ids)
