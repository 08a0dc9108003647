"""Schema versioning (Kinto style): schema.sql is the whole current schema; numbered files in
schema/migrations bring an older database up one version at a time, each in a transaction."""

from __future__ import annotations

import re
from importlib import resources

from ..errors import DiffexError

_MIGRATION = re.compile(r"^(\d{4})_[\w-]+\.sql$")


def schema_sql(name: str = "schema.sql") -> str:
    return resources.files("diffex.schema").joinpath(name).read_text(encoding="utf-8")


def migrations() -> dict[int, str]:
    """{target version: SQL} for every numbered migration file."""
    out = {}
    for entry in resources.files("diffex.schema.migrations").iterdir():
        m = _MIGRATION.match(entry.name)
        if m:
            out[int(m.group(1))] = entry.read_text(encoding="utf-8")
    return out


def current_version() -> int:
    m = re.search(r"INSERT INTO diffex_schema VALUES \((\d+)\)", schema_sql())
    assert m, "schema.sql must insert its version"
    return int(m.group(1))


def database_version(con) -> int | None:
    """The stored version, or None for an empty database; raises for a non-diffex one."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "diffex_schema" not in tables:
        if tables:
            raise DiffexError("this DuckDB file is not a diffex store (no diffex_schema table)")
        return None
    row = con.execute("SELECT max(version) FROM diffex_schema").fetchone()
    return int(row[0])


def check_readable(version: int | None) -> None:
    if version is not None and version > current_version():
        raise DiffexError(
            f"database schema version {version} is newer than this diffex supports ({current_version()}); "
            "upgrade diffex to open it"
        )


def migrate(con) -> int | None:
    """Create or upgrade the schema in place; returns the version it found (None: a new
    database). Views are re-created."""
    version = found = database_version(con)
    check_readable(version)
    target = current_version()
    if version is None:
        _in_transaction(con, schema_sql())
    else:
        steps = migrations()
        while version < target:
            nxt = version + 1
            if nxt not in steps:
                raise DiffexError(f"no migration from schema version {version} to {nxt}")
            _in_transaction(con, steps[nxt])
            got = database_version(con)
            if got != nxt:
                raise DiffexError(f"migration to version {nxt} left the database at version {got}")
            version = nxt
    _in_transaction(con, schema_sql("views.sql"))
    return found


def _in_transaction(con, sql: str) -> None:
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(sql)
        con.execute("COMMIT")
    except Exception:
        try:
            con.execute("ROLLBACK")
        except Exception:
            pass  # a failed COMMIT (disk full) leaves no transaction to roll back: report the failure itself
        raise
