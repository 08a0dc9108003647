"""Read-only SQL over a store: external file access off and configuration locked, so a query
can read the database and nothing else, and can never change it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import duckdb

from . import migrate
from .errors import DiffexError
from .store import _check_path, connect

SANDBOX = {"enable_external_access": False, "lock_configuration": True}


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


def run_query(db: "str | Path", sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
    """Run `sql` (named parameters as `$name`) read-only. Raises DiffexError with DuckDB's reason."""
    path = Path(db)
    _check_path(path, read_only=True)
    if not sql or not sql.strip():
        raise DiffexError("empty query")
    con = connect(path, read_only=True, config=SANDBOX)
    try:
        migrate.check_readable(migrate.database_version(con))
        try:
            cur = con.execute(sql, dict(params) if params else None)
        except duckdb.Error as exc:
            raise DiffexError(f"query failed: {_first_line(exc)}") from None
        if cur.description is None:
            return QueryResult([], [])
        return QueryResult([d[0] for d in cur.description], cur.fetchall())
    finally:
        con.close()


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith("Error:") else (lines[0] if lines else type(exc).__name__)
    return text
