"""The store: the only code that talks to DuckDB. The connection and the Store (core.py),
schema and migrations (migrate.py), derived tables (derived.py), locks (locks.py), the file
cache (cache.py) and the read-only query sandbox (query.py). `diffex verify`, which also
checks vector indexes and editor caches, is diffex/indexing/verify.py."""

from .core import Store, check_db_path

__all__ = ["Store", "check_db_path"]
