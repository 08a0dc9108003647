"""diffex: explain image classifiers with semantic edits, cached in a queryable DuckDB store.

Notebook use::

    import diffex
    stats = diffex.run_index("data/my.duckdb", ["photos/"], "taxonomy.json", "demo:v1", "demo")
    with diffex.open_store("data/my.duckdb", read_only=True) as store:
        rows = store.top_subtypes("old", k=10)
    diffex.run_query("data/my.duckdb", "SELECT * FROM node_effects LIMIT 5").dicts()
"""

from .errors import DiffexError, UsageError
from .indexer import IndexStats, run_index
from .query import QueryResult, run_query
from .store import Store
from .taxonomy import load_taxonomy


def search(db, text=None, image=None, k: int = 20, **options):
    """Nearest edits (or images) to a text or image file, with their effects; see diffex.search.search."""
    from .search import search as _search

    return _search(db, text=text, image=image, k=k, **options)


def compare(db, a, b, class_name=None, **options):
    """Paired comparison of two classifiers over the same cached edits; see diffex.compare."""
    from .compare import compare_classifiers

    return compare_classifiers(db, a, b, class_name, **options)

__version__ = "0.1.0"


def open_store(path, read_only: bool = False, cache_dir=None) -> Store:
    """Open (creating or migrating unless read_only) the store at `path`."""
    return Store.open(path, read_only=read_only, cache_dir=cache_dir)


__all__ = [
    "DiffexError", "UsageError", "IndexStats", "run_index", "QueryResult", "run_query",
    "Store", "open_store", "load_taxonomy", "search", "compare", "__version__",
]
