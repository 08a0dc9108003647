"""diffex: explain image classifiers with semantic edits, cached in a queryable DuckDB store.

Notebook use::

    import diffex
    stats = diffex.run_index("data/my.duckdb", ["photos/"], "taxonomy.json", "demo:v1", "demo")
    with diffex.open_store("data/my.duckdb", read_only=True) as store:
        rows = store.top_subtypes("old", k=10)
    diffex.run_query("data/my.duckdb", "SELECT * FROM node_effects LIMIT 5").dicts()

Search and version comparison live in `diffex.embedding.search.search` and
`diffex.analysis.compare.compare_classifiers`. The layers: docs/architecture.md.
"""

from importlib import import_module

from .errors import DiffexError, UsageError

__version__ = "0.1.0"

# Imported on first use (PEP 562), so `import diffex.errors` (every CLI command) does not pay
# for the indexer, the store and their dependencies.
_LAZY = {
    "IndexStats": "indexing.indexer", "run_index": "indexing.indexer", "QueryResult": "store.query",
    "run_query": "store.query", "Store": "store.core", "load_taxonomy": "taxonomy.tree",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffex' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def open_store(path, read_only: bool = False, cache_dir=None):
    """Open (creating or migrating unless read_only) the store at `path`: a diffex.store.Store."""
    from .store.core import Store

    return Store.open(path, read_only=read_only, cache_dir=cache_dir)


__all__ = [
    "DiffexError", "UsageError", "IndexStats", "run_index", "QueryResult", "run_query",
    "Store", "open_store", "load_taxonomy", "__version__",
]
