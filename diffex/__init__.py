"""diffex: explain image classifiers with semantic edits, cached in a queryable DuckDB store.

Notebook use::

    import diffex
    stats = diffex.run_index("data/my.duckdb", ["photos/"], "taxonomy.json", "demo:v1", "demo")
    with diffex.open_store("data/my.duckdb", read_only=True) as store:
        rows = store.top_subtypes("old", k=10)
    diffex.run_query("data/my.duckdb", "SELECT * FROM node_effects LIMIT 5").dicts()

Search and version comparison live in `diffex.search.search` and `diffex.compare.compare_classifiers`.
"""

from .errors import DiffexError, UsageError
from .indexer import IndexStats, run_index
from .query import QueryResult, run_query
from .store import Store
from .taxonomy import load_taxonomy


__version__ = "0.1.0"


def open_store(path, read_only: bool = False, cache_dir=None) -> Store:
    """Open (creating or migrating unless read_only) the store at `path`."""
    return Store.open(path, read_only=read_only, cache_dir=cache_dir)


__all__ = [
    "DiffexError", "UsageError", "IndexStats", "run_index", "QueryResult", "run_query",
    "Store", "open_store", "load_taxonomy", "__version__",
]
