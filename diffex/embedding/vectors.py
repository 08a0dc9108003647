"""The FAISS vector index: a file DERIVED from the database's `embeddings` table (the source of
truth), one per embedder, never mixing two models. The only module that imports faiss.

Layout, beside the image cache of `data/x.duckdb`:

    data/x-cache/vectors/<embedder_id>.faiss   IndexIDMap2(IndexFlatIP(dim)) of unit vectors
    data/x-cache/vectors/<embedder_id>.json    embedder id, dim, the item ids in the index,
                                               and the count and checksum they had in the db

A FAISS id is a fixed function of the database item id (`faiss_id`), so the mapping is the
same whoever builds the file. `VectorIndex.open` compares the sidecar with the database
(count and a checksum over ids and vectors, computed by DuckDB) on every open and rebuilds
the file when it is missing, unreadable, from another model or inconsistent, or extends it
when rows were only added. The file and the database therefore never silently disagree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import atomic
from ..errors import DiffexError
from ..store.core import Store

KINDS: tuple[str, ...] = ("image", "edit")  # what the index holds; texts and nodes stay in SQL
FORMAT = 1


def faiss_id(item_id: str) -> int:
    """int64 FAISS id of a database item id: the first 60 bits of its sha256."""
    return int(hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:15], 16)


def vector_dir(store: Store) -> Path:
    return store.cache.root / "vectors"


@dataclass
class VectorIndex:
    """An open index: `status` says what `open` had to do ('fresh', 'extended', 'rebuilt')."""

    embedder_id: str
    dim: int
    index: object
    item_ids: list[str]
    status: str = "fresh"
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def open(cls, store: Store, embedder_id: str, folder: "str | Path | None" = None) -> "VectorIndex":
        """The index of `embedder_id`'s image and edit vectors, checked against the database,
        rebuilt or extended as needed (and saved when the folder is writable)."""
        import faiss

        dim = _dim(store, embedder_id)
        path = index_path(store, embedder_id, folder)
        count, checksum = store.embedding_fingerprint(embedder_id, KINDS)
        side = _read_sidecar(path.with_suffix(".json"))
        index = _read_index(path) if side else None
        usable = _usable(side, index, embedder_id, dim)
        if usable and (side["count"], side["checksum"]) == (count, checksum):
            return cls(embedder_id, dim, index, list(side["item_ids"]), "fresh", path)
        if usable and side["count"] < count and \
                store.embedding_fingerprint(embedder_id, KINDS, side["item_ids"]) == (side["count"], side["checksum"]):
            # rows were only added: append them
            ids, _, matrix = store.embeddings(embedder_id, KINDS, exclude_ids=side["item_ids"])
            _add(index, ids, matrix, existing=side["item_ids"])
            out = cls(embedder_id, dim, index, list(side["item_ids"]) + ids, "extended", path)
        else:
            ids, _, matrix = store.embeddings(embedder_id, KINDS)
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            _add(index, ids, matrix)
            out = cls(embedder_id, dim, index, ids, "rebuilt", path)
        n_now, sum_now = store.embedding_fingerprint(embedder_id, KINDS, out.item_ids)
        if n_now != count or len(out) != count:
            raise DiffexError(f"the vector index of {embedder_id[:12]} could not be brought in line with the database "
                              f"({len(out)} vectors, {count} rows); is another process writing it?")
        out._save(sum_now)
        return out

    def _save(self, checksum: str) -> None:
        import faiss

        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(self.path, faiss.serialize_index(self.index).tobytes())
            side = {"format": FORMAT, "embedder_id": self.embedder_id, "dim": self.dim, "count": len(self.item_ids),
                    "checksum": checksum, "kinds": list(KINDS), "item_ids": self.item_ids}
            atomic.write_bytes(self.path.with_suffix(".json"), json.dumps(side).encode("utf-8"))
        except OSError:
            pass  # a read-only place: the index still serves this process from memory

    def search(self, query: np.ndarray, k: int, embedder_id: str | None = None) -> list[tuple[str, float]]:
        """The k nearest items to ONE query vector: [(item id, cosine similarity)], best first.
        `embedder_id` (of the query's model) must be this index's: vectors never mix."""
        if embedder_id is not None and embedder_id != self.embedder_id:
            raise DiffexError(f"query vector from embedder {embedder_id[:12]} cannot search the index of "
                              f"{self.embedder_id[:12]}: vectors of different models never mix")
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise DiffexError(f"query vector has dimension {q.shape[1]}, the index {self.dim}")
        if not len(self) or k < 1:
            return []
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        sims, fids = self.index.search(q, min(int(k), len(self)))
        by_fid = {faiss_id(i): i for i in self.item_ids}
        return [(by_fid[int(f)], float(s)) for s, f in zip(sims[0], fids[0]) if f != -1]


def index_path(store: Store, embedder_id: str, folder: "str | Path | None" = None) -> Path:
    """Where the index of `embedder_id` lives; its sidecar is the same path with `.json`."""
    return (Path(folder) if folder else vector_dir(store)) / f"{embedder_id}.faiss"


def index_status(store: Store, embedder_id: str, folder: "str | Path | None" = None) -> str:
    """What `VectorIndex.open` would find, without building or writing anything: 'ok' (the
    file matches the database), 'missing' (never built: the first search builds it) or
    'stale' (unreadable, from another model, or out of line with the database: open would
    rebuild or extend it). Raises DiffexError for an embedder the store does not have."""
    dim = _dim(store, embedder_id)
    path = index_path(store, embedder_id, folder)
    side_path = path.with_suffix(".json")
    if not path.exists() and not side_path.exists():
        return "missing"
    side = _read_sidecar(side_path)
    index = _read_index(path) if side else None
    if not _usable(side, index, embedder_id, dim):
        return "stale"
    fresh = (side["count"], side["checksum"]) == store.embedding_fingerprint(embedder_id, KINDS)
    return "ok" if fresh else "stale"


def _dim(store: Store, embedder_id: str) -> int:
    emb = [r for r in store.embedders() if r["embedder_id"] == embedder_id]
    if not emb:
        raise DiffexError(f"embedder {embedder_id[:12]} has no vectors in {store.path}")
    return int(emb[0]["dim"])


def _usable(side: dict | None, index, embedder_id: str, dim: int) -> bool:
    """The sidecar and the FAISS file are whole, of this model, and agree with each other."""
    return (
        side is not None and index is not None and side.get("format") == FORMAT
        and side.get("embedder_id") == embedder_id and side.get("dim") == dim and index.d == dim
        and index.ntotal == len(side.get("item_ids", [])) == side.get("count")
    )


def _add(index, ids: Sequence[str], matrix: np.ndarray, existing: Sequence[str] = ()) -> None:
    if not len(ids):
        return
    fids = np.array([faiss_id(i) for i in ids], dtype=np.int64)
    if len(set(fids.tolist()) | {faiss_id(i) for i in existing}) != len(fids) + len(existing):
        raise DiffexError("two database ids map to one FAISS id (a 60-bit hash collision); please report it")
    index.add_with_ids(np.ascontiguousarray(matrix, dtype=np.float32), fids)


def _read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_index(path: Path):
    import faiss

    try:
        return faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
    except Exception:  # missing, truncated or not a FAISS file: rebuilt by the caller
        return None


