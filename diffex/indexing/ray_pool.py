"""Indexing on Ray (`--ray local|ADDRESS`): the edit, classify and embed work of an index run
runs on a pool of Ray actors, one per GPU (or CPU slot), each holding its loaded models; this
process, the driver, stays the only one that opens the DuckDB file and commits what comes back,
group by group, as a plain run does (docs/scale-out.md).

- Edits: an image group (editor.batch_size images, the plain run's groups) always goes to the
  same actor, chosen by the position of its first image in the run, so an image's inversion
  is made and reused on one actor across the levels of the beam walk.
- Scores and vectors: the plain run's chunks (scoring.stage.CHUNK, embedding.stage.CHUNK), to
  whichever actor is free; the same chunks give the same batches, so the same numbers.
- Pixels travel as PNG bytes, unless the workers see the store's cache folder (shared storage,
  detected with a marker file): then a worker writes edited images there and returns their path.
- Faults: actors are restarted when their process dies and Ray re-runs the lost task
  (max_task_retries); a group whose worker dies every time is stored as 'failed'. An editor
  error on one group comes back as 'failed' edits from edit_group itself.

Ray is imported only here, and only when a pool starts: `import diffex` never pays for it."""

from __future__ import annotations

import io
import os
import secrets
import tempfile
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from PIL import Image, PngImagePlugin

from ..editing.stage import EditRequest, EditResult, edit_group, failed_group
from ..errors import DiffexError
from ..hashing import sha256_bytes
from ..store.cache import ImageCache

INSTALL_HINT = "--ray needs Ray, an optional extra: pip install 'diffex[ray]'"
IN_FLIGHT = 2  # tasks queued per actor: one running, one ready; bounds what a dead actor loses
TASK_RETRIES = 3  # re-runs of a task whose actor process died, before its group is stored as failed


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _ray():
    try:
        import ray
    except ImportError:
        raise DiffexError(INSTALL_HINT) from None
    return ray


# ---------------------------------------------------------------------------- pictures on the wire
def to_wire(image: Image.Image) -> bytes:
    """PNG bytes of `image` with its text chunks (the demo world keeps its face spec there)."""
    info = PngImagePlugin.PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def from_wire(data: "bytes | str") -> Image.Image:
    """An image from `to_wire` bytes, cached file bytes, or a path on shared storage, decoded as
    ImageCache.load decodes (RGB), its text chunks kept in `.info`."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        info = {k: v for k, v in im.info.items() if isinstance(v, str)}
        rgb = im.convert("RGB")
    rgb.info.update(info)
    return rgb


def _blob(load: Callable[[], Image.Image], shared: bool) -> "bytes | str":
    """What a worker needs to see the image a loader gives: the cached file (its path on shared
    storage, else its bytes: no decoding here) or the in-memory picture as PNG."""
    path = getattr(load, "cache_file", None)
    if path is not None:
        return str(path) if shared else Path(path).read_bytes()
    return to_wire(load())


# ---------------------------------------------------------------------------- the actor
class DiffexWorker:
    """One Ray actor: builds the run's editor, classifier and embedder from their SPECs (through
    the usual registries and so the one loading policy, diffex/models.py) on first use, checks
    they are the models the driver registered (same ids), and never opens the database."""

    def __init__(self, specs: dict[str, str | None], ids: dict[str, str | None], cache_root: str, marker: str | None):
        self.specs, self.ids = specs, ids
        self.cache_root = Path(cache_root)
        self.shared = marker is not None and (self.cache_root / marker).is_file()  # the driver wrote it: same folder
        if self.shared:
            self.work_dir = self.cache_root
        else:  # inversions of this worker's images, kept on its own disk
            self.work_dir = Path(tempfile.gettempdir()) / "diffex-worker-cache" / sha256_bytes(cache_root.encode())[:16]
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self.models: dict[str, Any] = {}

    def pid(self) -> int:
        return os.getpid()

    def sees_shared_cache(self) -> bool:
        return self.shared

    def _model(self, kind: str) -> Any:
        if kind not in self.models:
            from ..editing import load_editor
            from ..embedding import load_embedder
            from ..scoring import load_classifier

            load = {"editor": load_editor, "classifier": load_classifier, "embedder": load_embedder}[kind]
            model = load(self.specs[kind])
            got = getattr(model, f"{kind}_id")
            if got != self.ids[kind]:
                raise DiffexError(f"the {kind} {self.specs[kind]!r} loads as {got[:12]} on a Ray worker but as "
                                  f"{self.ids[kind][:12]} on the driver: give every node the same model files")
            self.models[kind] = model
        return self.models[kind]

    def edit(self, group: list[str], requests: list[EditRequest], *pictures: bytes) -> list[EditResult]:
        images = {i: from_wire(b) for i, b in zip(group, pictures)}
        missing: dict[str, list[EditRequest]] = {}
        for req in requests:
            missing.setdefault(req.image_id, []).append(req)
        editor = self._model("editor")  # a model that does not load is the run's error, not this image's
        results = edit_group(editor, images, group, missing, self.work_dir)
        cache = ImageCache(self.cache_root) if self.shared else None
        out = []
        for r in results:
            if r.image is None:
                out.append(r)
                continue
            digest, png = ImageCache.encode(r.image)
            if cache is not None:
                digest, rel = cache.put_encoded(digest, png)
                out.append(replace(r, image=None, digest=digest, cache_path=rel))
            else:
                out.append(replace(r, image=None, digest=digest, png=png))
        return out

    def score(self, blobs: list) -> tuple[Any, Any]:
        from ..scoring import score_images

        return score_images(self._model("classifier"), [from_wire(b) for b in blobs])

    def embed(self, blobs: list) -> Any:
        return self._model("embedder").embed_images([from_wire(b) for b in blobs])


# ---------------------------------------------------------------------------- the pool
@dataclass
class RayPlacement:
    """address: 'local' (start a Ray instance with this machine's resources) or a cluster's
    address ('auto', 'ray://host:10001', 'host:6379'); actors: how many (default: one per GPU,
    or per CPU when there is none); gpus_per_actor (default 1 when the cluster has GPUs, else 0);
    temp_dir: Ray's session folder when this process starts Ray (default Ray's own);
    shared_cache: False sends every picture as bytes even when the workers see the store's cache
    folder (None: use it when they all see it)."""

    address: str = "local"
    actors: int | None = None
    gpus_per_actor: float | None = None
    temp_dir: str | None = None
    shared_cache: bool | None = None


class RayPool:
    """The executor an index run hands its work to (ensure_edits / ensure_scores /
    ensure_embeddings `executor=`): `edit_groups` and `map_chunks` yield results as actors finish
    them; the caller commits. `close()` ends the actors, and Ray itself when this pool started it."""

    def __init__(self, placement: RayPlacement, specs: dict[str, str | None], ids: dict[str, str | None],
                 cache_root: Path):
        ray = _ray()
        self.ray, self.placement = ray, placement
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            import logging

            kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            if placement.address == "local":
                if placement.temp_dir:
                    kwargs["_temp_dir"] = str(placement.temp_dir)
                if placement.actors:  # more actors than cores is the user's call (a bench, a slow editor)
                    kwargs["num_cpus"] = max(os.cpu_count() or 1, placement.actors)
                ray.init(**kwargs)
            else:
                try:
                    ray.init(address=placement.address, **kwargs)
                except Exception as exc:  # noqa: BLE001 (ConnectionError, RuntimeError, ...: one line)
                    raise DiffexError(f"cannot reach the Ray cluster at {placement.address}: {exc}") from None
        try:
            self._start_actors(specs, ids, Path(cache_root))
        except BaseException:
            self.close()
            raise

    def _start_actors(self, specs, ids, cache_root: Path) -> None:
        ray, p = self.ray, self.placement
        res = ray.cluster_resources()
        gpus = p.gpus_per_actor if p.gpus_per_actor is not None else (1.0 if res.get("GPU", 0) >= 1 else 0.0)
        n = p.actors or (int(res.get("GPU", 0) // gpus) if gpus else int(res.get("CPU", 1)))
        if n < 1:
            raise DiffexError(f"the Ray cluster has {res.get('GPU', 0):g} GPUs, too few for one actor of {gpus:g} GPUs")
        cache_root.mkdir(parents=True, exist_ok=True)
        self.marker = cache_root / f".diffex-ray-{secrets.token_hex(6)}"
        self.marker.write_text("written by the driver of an index run; workers that see it share this cache\n")
        self.token = self.marker.name.rsplit("-", 1)[1]
        cls = ray.remote(DiffexWorker)
        self.actors = [
            cls.options(name=f"diffex-{self.token}-{k}", namespace="diffex", num_cpus=1, num_gpus=gpus,
                        max_restarts=-1, max_task_retries=TASK_RETRIES).remote(
                specs, ids, str(cache_root), None if p.shared_cache is False else self.marker.name)
            for k in range(n)
        ]
        self.pids = ray.get([a.pid.remote() for a in self.actors])  # every actor up before the work starts
        self.shared = all(ray.get([a.sees_shared_cache.remote() for a in self.actors]))
        self.picture_refs: dict[str, Any] = {}

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 (already gone)
                pass
        self.actors = []
        marker = getattr(self, "marker", None)
        if marker is not None:
            marker.unlink(missing_ok=True)
        if self.owns_ray and self.ray.is_initialized():
            self.ray.shutdown()

    # ------------------------------------------------------------------ edits
    def edit_groups(self, editor, images: dict[str, Image.Image], groups: Sequence[list[str]],
                    missing: dict[str, list[EditRequest]], cache_root: Path, progress: Callable | None = None
                    ) -> Iterator[tuple[list[str], list[EditResult]]]:
        """Each group on the actor its first image belongs to; (group, results) as they finish."""
        n = len(self.actors)
        position = {i: k for k, i in enumerate(images)}
        queues = [deque() for _ in range(n)]
        for group in groups:
            queues[position[group[0]] % n].append(group)
        size = lambda g: sum(len(missing[i]) for i in g)  # noqa: E731
        total = sum(size(g) for g in groups)
        bars = []
        if progress and total:
            bars = [progress(total=total, desc="editing", unit="edit", position=0)]
            bars += [progress(total=sum(size(g) for g in q), desc=f"  actor {k}", unit="edit", position=k + 1)
                     for k, q in enumerate(queues) if q]
        bar_of = {k: bars[1 + j] for j, k in enumerate(k for k, q in enumerate(queues) if q)} if bars else {}

        def next_task(k: int):
            if not queues[k]:
                return None
            group = queues[k].popleft()
            refs = [self._picture(i, images[i]) for i in group]
            reqs = [r for i in group for r in missing[i]]
            return self.actors[k].edit.remote(group, reqs, *refs), group

        try:
            lost = lambda group, why: failed_group(group, missing, why)  # noqa: E731
            for k, group, results in self._drain(next_task, lost):
                for bar in (bars[:1] + [bar_of[k]]) if bars else []:
                    bar.update(len(results))
                yield group, results
        finally:
            for bar in bars:
                bar.close()

    def _drain(self, next_task: Callable[[int], Any], on_lost: Callable[[Any, str], Any] | None = None):
        """Keep IN_FLIGHT tasks queued on each actor: `next_task(k)` submits actor k's next task
        and returns (ref, payload), or None when it has none left. Yields (k, payload, result)
        as tasks finish; a lost task's result is `on_lost(payload, reason)` (or it raises)."""
        inflight: dict[Any, tuple[int, Any]] = {}

        def fill(k: int) -> None:
            while sum(1 for a, _ in inflight.values() if a == k) < IN_FLIGHT:
                task = next_task(k)
                if task is None:
                    return
                inflight[task[0]] = (k, task[1])

        try:
            for k in range(len(self.actors)):
                fill(k)
            while inflight:
                [ref], _ = self.ray.wait(list(inflight), num_returns=1)
                k, payload = inflight.pop(ref)
                result = self._get(ref, None if on_lost is None else (lambda why: on_lost(payload, why)))
                fill(k)
                yield k, payload, result
        finally:
            for ref in inflight:
                self.ray.cancel(ref, force=False)

    def _picture(self, image_id: str, image: Image.Image) -> Any:
        """An original image in Ray's object store, put once per run and shared by every task."""
        if image_id not in self.picture_refs:
            self.picture_refs[image_id] = self.ray.put(to_wire(image))
        return self.picture_refs[image_id]

    def _get(self, ref, on_lost: Callable[[str], Any] | None = None) -> Any:
        """A task's result; a DiffexError raised in the worker is raised here (one line). A task
        whose actor died on every retry gives `on_lost(reason)`, or raises without it."""
        ex = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except ex.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, DiffexError):
                raise DiffexError(str(cause)) from None
            raise DiffexError(f"a Ray worker failed: {type(cause or exc).__name__}: {str(cause or exc).splitlines()[0]}") from None
        except (ex.RayActorError, ex.WorkerCrashedError, ex.ObjectLostError) as exc:
            why = f"its Ray worker died {TASK_RETRIES + 1} times ({type(exc).__name__})"
            if on_lost is None:
                raise DiffexError(f"a Ray task was lost: {why}") from None
            return on_lost(why)

    # ------------------------------------------------------------------ scores and vectors
    def map_chunks(self, kind: str, chunks: Sequence[Sequence[tuple]], progress: Callable | None = None,
                   desc: str = "") -> Iterator[tuple[Sequence[tuple], Any]]:
        """kind 'score' (items (id, loader): result (logits, probs)) or 'embed' (items
        (id, kind, loader): result vectors). Chunks go to whichever actor is free;
        (chunk, result) as they finish."""
        pending = deque(chunks)
        bar = progress(total=sum(len(c) for c in chunks), desc=desc, unit="img") if progress and chunks else None

        def next_task(k: int):
            if not pending:
                return None
            chunk = pending.popleft()
            return getattr(self.actors[k], kind).remote([_blob(item[-1], self.shared) for item in chunk]), chunk

        try:
            for _, chunk, result in self._drain(next_task):
                if bar is not None:
                    bar.update(len(chunk))
                yield chunk, result
        finally:
            if bar is not None:
                bar.close()


def start_pool(placement: RayPlacement, editor, classifier, embedder, given: dict[str, Any], cache_root: Path) -> RayPool:
    """A pool for one index run. The models are rebuilt on the workers from their SPECs: the
    strings the caller gave, else the `.spec` the registries record; an object without one
    cannot travel."""
    specs: dict[str, str | None] = {}
    ids: dict[str, str | None] = {}
    for kind, model in (("editor", editor), ("classifier", classifier), ("embedder", embedder)):
        if model is None:
            specs[kind] = ids[kind] = None
            continue
        spec = given.get(kind) if isinstance(given.get(kind), str) else getattr(model, "spec", "")
        if not spec:
            raise DiffexError(f"with --ray the {kind} must be given as a SPEC string (workers build their own), "
                              f"not as a Python object")
        specs[kind], ids[kind] = spec, getattr(model, f"{kind}_id")
    return RayPool(placement, specs, ids, cache_root)
