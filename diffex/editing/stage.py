"""The edit stage: make sure every requested edit exists in the store and the image cache,
computing only what is missing. One editor session per image (invert once, edit many);
images go to the editor `editor.batch_size` at a time, each edit applied to the whole group."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable, Sequence

from PIL import Image

from .base import Editor
from ..hashing import edit_id_for
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


def ensure_edits(
    store: Store,
    editor: Editor,
    images: dict[str, Image.Image],
    requests: Sequence[EditRequest],
    progress: Callable | None = None,
) -> EditCounts:
    """Compute the missing edits of `requests`. Images are edited `editor.batch_size` at a time
    and each group's edits are committed together, so an interrupted run keeps every finished
    group and the next run resumes there. A 'blocked' edit (pixels withheld by the editor's
    safety checker) is kept as such: recomputing it would give the same result."""
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

    image_ids = list(missing)
    step = max(1, int(getattr(editor, "batch_size", 1) or 1))
    total = sum(len(r) for r in missing.values())
    bar = progress(total=total, desc="editing", unit="edit") if progress and total else None
    try:
        for start in range(0, len(image_ids), step):
            group = image_ids[start : start + step]
            records: list[EditRecord] = []
            with ExitStack() as stack:
                sessions = {i: stack.enter_context(editor.open(images[i], i, store.cache.root)) for i in group}
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
                    for req, out in zip(reqs, outputs):
                        digest, rel = store.cache.put(out.image)
                        records.append(
                            EditRecord(
                                edit_id=ids[req], image_id=req.image_id, editor_id=editor_id, kind=req.kind,
                                prompts=req.prompts, direction=req.direction, seed=req.seed,
                                output_sha256=digest, cache_path=rel, status=out.status,
                                seconds=seconds, node_ids=req.node_ids,
                            )
                        )
                    if bar is not None:
                        bar.update(len(reqs))
            store.add_edits(records, known=existing)
            counts.computed += len(records)
            counts.blocked += sum(r.status == "blocked" for r in records)
    finally:
        if bar is not None:
            bar.close()
    return counts
