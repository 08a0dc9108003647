"""Read-only, bounded SQL over a store, in the manner of datasette's database layer.
(One module of ~420 lines: the fences below only hold together, so they live side by side.)

Two fences keep a query from doing anything but reading the database:
1. DuckDB's own: the file opens read-only with external access off (no other file, no
   extension, no network) and the configuration locked (no SET can undo that).
2. Ours, checked before anything runs, so the message says what is wrong: exactly one
   statement, and it must read (SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE, or
   EXPLAIN [ANALYZE] of one of those), calling no table function that changes the
   database's state (checkpoint(), logging switches, ...) or runs SQL from a string.

And three bounds keep it from taking the machine: a time limit (`connection.interrupt()`
from a timer), a memory limit set before the configuration is locked (sorts and joins
spill to a private temporary folder, at most a quarter of that disk's free space), and
a row limit that fetches at most limit + 1 rows, so a huge result never materialises.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import duckdb

from . import migrate
from ..errors import DiffexError, UsageError
from .locks import FileLocks
from .core import _check_path, connect

DEFAULT_TIMEOUT = 60.0
# DuckDB's own default is 80% of the memory it detects (cgroup limits included); a query
# beside an index run must leave most of it alone. A percentage keeps this right on a
# laptop and on a large server alike.
DEFAULT_MEMORY_LIMIT = "25%"
MIN_MEMORY_BYTES = 16_000_000  # below this DuckDB may not even open a store

SANDBOX = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,  # DuckDB applies the other options of this dict first
}

READ_STATEMENTS = (duckdb.StatementType.SELECT,)  # SHOW, DESCRIBE, SUMMARIZE and PIVOT ... IN (...) parse as SELECT

# Table functions a SELECT can call that change the database's state, or run SQL from a string
# that this check cannot see. Under the sandbox they are no-ops or fail, but a read-only query
# has no reason to call them, and refusing them says so plainly.
REFUSED_TABLE_FUNCTIONS = frozenset({
    "checkpoint", "force_checkpoint",
    "enable_logging", "disable_logging", "truncate_duckdb_logs",
    "enable_profiling", "disable_profiling",
    "add_grammar_extension", "remove_grammar_extension",
    "create_external_resource", "register_external_resource", "register_external_resource_type",
    "deregister_external_resource", "destroy_external_resource",
    "query", "json_execute_serialized_sql",
})

# What a refused statement type is called in the message (DuckDB's type names are internal).
_STATEMENT_WORDS = {
    "PRAGMA": "PRAGMA, IMPORT DATABASE or COPY FROM DATABASE",
    "SET": "SET, RESET or USE",
    "VARIABLE_SET": "SET VARIABLE",
    "LOAD": "INSTALL or LOAD",
    "EXPORT": "EXPORT DATABASE",
    "CALL": "CALL or CHECKPOINT",
    "VACUUM": "VACUUM or ANALYZE",
    "TRANSACTION": "BEGIN, COMMIT or ROLLBACK",
    "CREATE_FUNC": "CREATE FUNCTION or MACRO",
    "DROP": "DROP or DEALLOCATE",
    "MULTI": "multi-part (PIVOT without an explicit IN (...) list?)",
}
_HINTS = {"PRAGMA": "; DESCRIBE t, SHOW TABLES and SELECT * FROM pragma_table_info('t') read the same"}
ALLOWED = "SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE, or EXPLAIN of one of those"

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class QueryResult:
    """Columns and rows of one query; `truncated` is True when the row limit cut rows off."""

    columns: list[str]
    rows: list[tuple]
    truncated: bool = False

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


def run_query(
    db: "str | Path",
    sql: str,
    params: Mapping[str, Any] | None = None,
    *,
    limit: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    memory_limit: str | None = DEFAULT_MEMORY_LIMIT,
    threads: int | None = None,
) -> QueryResult:
    """Run one read-only statement `sql` (named parameters as `$name`) against the store `db`.

    limit: return at most this many rows and set `truncated` if there were more (None or 0: all).
    timeout: seconds before the query is stopped (None or 0: no limit).
    memory_limit: DuckDB's cap, '2GB', '512MiB' or a share of the machine's memory like '25%'
      (None: DuckDB's default, 80%). Larger sorts and joins spill to a private temporary
      folder under $TMPDIR, removed afterwards.
    threads: DuckDB worker threads (None: one per CPU core).

    Raises UsageError for a bad limit, timeout or memory limit; DiffexError when the statement
    is refused (more than one, or not a read), stopped by the timeout or the memory limit, or
    when DuckDB rejects it (the reason in one line).
    """
    # 1. check inputs
    path = Path(db)
    _check_path(path, read_only=True)
    if not sql or not sql.strip():
        raise DiffexError("empty query")
    if limit is not None and limit < 0:
        raise UsageError(f"limit must be 0 (no limit) or more, not {limit}")
    if timeout is not None and timeout < 0:
        raise UsageError(f"timeout must be 0 (no limit) or more seconds, not {timeout}")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be 1 or more, not {threads}")
    if memory_limit is not None:
        _check_memory_limit(memory_limit)

    # 2. the sandbox: a warm connection of this process with these bounds, else a new one
    #    (the bounds go in before the configuration is locked)
    with _POOL.connection(path, memory_limit, threads) as con:
        migrate.check_readable(migrate.database_version(con))
        # 3. refuse anything but one read statement, before it runs
        check_statement(con, sql)
        # 4. run it under the time limit, fetching at most limit + 1 rows
        with _Deadline(con, timeout) as deadline:
            try:
                cur = con.execute(sql, dict(params) if params else None)
                if cur.description is None:
                    return QueryResult([], [])
                columns = [d[0] for d in cur.description]
                rows = cur.fetchall() if not limit else cur.fetchmany(limit + 1)
            except duckdb.InterruptException:
                if deadline.fired:
                    raise DiffexError(f"query stopped after {timeout:g} s (--timeout)") from None
                raise  # Ctrl-C: the CLI turns it into 'interrupted', exit 130
            except duckdb.OutOfMemoryException as exc:
                cap = f"its limit of {memory_limit}" if memory_limit is not None else "DuckDB's default limit"
                raise DiffexError(f"query needs more memory than {cap} (--memory-limit): {_first_line(exc)}") from None
            except duckdb.PermissionException as exc:
                raise DiffexError(f"query refused: diffex query reads only its own database, no other file, "
                                  f"extension or setting ({_first_line(exc)})") from None
            except duckdb.Error as exc:
                if deadline.fired:  # whatever the interrupt surfaced as, the deadline is the cause
                    raise DiffexError(f"query stopped after {timeout:g} s (--timeout)") from None
                raise DiffexError(f"query failed: {_first_line(exc)}") from None
    truncated = bool(limit) and len(rows) > limit
    return QueryResult(columns, rows[:limit] if truncated else rows, truncated)


class _Pool:
    """Warm sandboxed read-only connections, one per (file, bounds), kept between queries of
    one process (a notebook, a CI step asking many questions): opening a large store costs
    tens of milliseconds, often more than the question. A kept connection holds the file's
    shared lock, so it is closed the moment another process queues for the file (an index
    run's commit: a watchdog checks every 20 ms), after IDLE_S unused, and before a Store of
    this process opens the same file with another configuration (DuckDB refuses two)."""

    IDLE_S = 2.0

    def __init__(self):
        self._lock = threading.RLock()
        self._entries: dict[tuple, dict] = {}
        self._watchdog: threading.Thread | None = None

    @contextmanager
    def connection(self, path: Path, memory_limit: str | None, threads: int | None):
        key = (str(path.resolve()), memory_limit, threads)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry["busy"]:  # another thread is asking: a cursor of its own
                cursor = entry["con"].cursor()
            else:
                cursor = None
                if entry is None:
                    self.evict(path)  # DuckDB allows one configuration per file and process
                    entry = self._entries[key] = self._open(path, memory_limit, threads)
                entry["busy"] = True
        if cursor is not None:
            try:
                yield cursor
            finally:
                cursor.close()
            return
        try:
            yield entry["con"]
        except BaseException:
            with self._lock:
                self._close(key)  # after an error or an interrupt, start clean next time
            raise
        finally:
            with self._lock:
                if key in self._entries:
                    entry["busy"] = False
                    entry["used"] = time.monotonic()
        self._start_watchdog()

    def _open(self, path: Path, memory_limit: str | None, threads: int | None) -> dict:
        spill = tempfile.mkdtemp(prefix="diffex-query-")
        config = {**SANDBOX, "temp_directory": spill,
                  "max_temp_directory_size": f"{max(shutil.disk_usage(spill).free // 4, 1)}B"}
        if memory_limit is not None:
            config["memory_limit"] = memory_limit.strip()
        if threads is not None:
            config["threads"] = threads
        # the file is shared with an index run: wait for its commit to end, then read (docs/store.md)
        locks = FileLocks(path)
        try:
            locks.acquire(exclusive=False)
            con = connect(path, read_only=True, config=config, retry_s=5.0)
        except BaseException:
            locks.release()
            locks.close()
            shutil.rmtree(spill, ignore_errors=True)
            raise
        return {"con": con, "locks": locks, "spill": spill, "busy": False, "used": time.monotonic()}

    def _close(self, key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            try:
                entry["con"].close()
            finally:
                entry["locks"].release()
                entry["locks"].close()
                shutil.rmtree(entry["spill"], ignore_errors=True)

    def evict(self, path: "str | Path") -> None:
        """Close this process's idle warm connections to `path` (a Store is about to open it)."""
        resolved = str(Path(path).resolve())
        with self._lock:
            for key in [k for k, e in self._entries.items() if k[0] == resolved and not e["busy"]]:
                self._close(key)

    def close_all(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._close(key)

    def _start_watchdog(self) -> None:
        with self._lock:
            if self._watchdog is None or not self._watchdog.is_alive():
                self._watchdog = threading.Thread(target=self._watch, name="diffex-query-pool", daemon=True)
                self._watchdog.start()

    def _watch(self) -> None:
        while True:
            time.sleep(0.02)
            with self._lock:
                if not self._entries:
                    self._watchdog = None
                    return
                now = time.monotonic()
                for key, entry in list(self._entries.items()):
                    if not entry["busy"] and (now - entry["used"] > self.IDLE_S or entry["locks"].someone_waiting()):
                        self._close(key)


_POOL = _Pool()
atexit.register(_POOL.close_all)


def check_statement(con: "duckdb.DuckDBPyConnection", sql: str) -> None:
    """Raise DiffexError ('query refused: ...') unless `sql` is exactly one read statement."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise DiffexError(f"query failed: {_first_line(exc)}") from None
    if not statements:
        raise DiffexError("empty query (only comments or semicolons)")
    kinds = [_statement_type(s) for s in statements]
    if len(statements) > 1:
        names = "; ".join(k.name if k is not None else "?" for k in kinds)
        raise DiffexError(f"query refused: {len(statements)} statements ({names}); diffex query runs exactly one ({ALLOWED})")
    kind = kinds[0]
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _explained(sql)
        if inner is None:
            raise DiffexError("query refused: EXPLAIN is allowed only as EXPLAIN [ANALYZE] <query>, without options")
        check_statement(con, inner)
        return
    if kind not in READ_STATEMENTS:
        hint = _HINTS.get(kind.name, "") if kind is not None else ""
        raise DiffexError(f"query refused: {_statement_word(kind)} statements are not allowed; diffex query runs one "
                          f"read-only statement ({ALLOWED}){hint}")
    called = _table_functions(con, sql) & REFUSED_TABLE_FUNCTIONS
    if called:
        names = ", ".join(f"{n}()" for n in sorted(called))
        raise DiffexError(f"query refused: {names} changes the database's state or runs SQL from a string; "
                          "diffex query only reads")


def _statement_type(statement) -> "duckdb.StatementType | None":
    """The statement's type; None for one that this duckdb module cannot name (seen: UPDATE
    EXTENSIONS raises ValueError '29 is not a valid StatementType'), which is refused."""
    try:
        return statement.type
    except ValueError:
        return None


def _statement_word(kind: "duckdb.StatementType | None") -> str:
    if kind is None:
        return "unrecognised"
    return _STATEMENT_WORDS.get(kind.name, kind.name.replace("_", " "))


def _explained(sql: str) -> str | None:
    """The statement after a leading `EXPLAIN [ANALYZE]`, or None when the text has another shape."""
    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(sql) if kind != duckdb.token_type.comment]
    words = [(pos, sql[pos:end].strip().upper(), kind)
             for (pos, kind), end in zip(tokens, [p for p, _ in tokens[1:]] + [len(sql)])]
    if not words or words[0][1] != "EXPLAIN":
        return None
    rest = words[1:]
    if rest and rest[0][1] in ("ANALYZE", "ANALYSE"):
        rest = rest[1:]
    if not rest or rest[0][1] in ("EXPLAIN", "("):  # options such as (FORMAT json): not needed, not checked
        return None
    return sql[rest[0][0]:]


def _table_functions(con: "duckdb.DuckDBPyConnection", sql: str) -> set[str]:
    """Names of the table functions a SELECT calls, from DuckDB's own parse tree. Empty when the
    statement cannot be serialised; the sandbox configuration still holds then."""
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql($sql)", {"sql": sql}).fetchone()[0])
    except (duckdb.Error, TypeError, ValueError):
        return set()
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            function = node.get("function")
            if node.get("type") == "TABLE_FUNCTION" and isinstance(function, dict):
                names.add(str(function.get("function_name", "")).lower())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return names


def _check_memory_limit(value: str) -> None:
    """UsageError unless `value` is an amount DuckDB takes ('2GB', '512MiB', '25%') and not tiny."""
    if not isinstance(value, str):
        raise UsageError(f"memory limit must be a string such as '2GB' or '25%', not {value!r}")
    percent = _PERCENT.match(value)
    if percent:
        if not 0 < float(percent.group(1)) <= 100:
            raise UsageError(f"memory limit {value!r}: a percentage must be above 0 and at most 100")
        return
    amount = _MEMORY.match(value)
    if not amount:
        raise UsageError(f"memory limit {value!r} is not an amount such as 2GB, 512MiB or 25% "
                         "(units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    if float(amount.group(1)) * _UNITS[amount.group(2).lower()] < MIN_MEMORY_BYTES:
        raise UsageError(f"memory limit {value!r} is too small: at least {MIN_MEMORY_BYTES // 10**6}MB")


class _Deadline:
    """Interrupts `con` after `seconds` from a timer thread; `fired` says whether it did."""

    def __init__(self, con, seconds: float | None):
        self.con, self.seconds = con, seconds
        self.fired = False
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._stop) if seconds else None
        if self._timer is not None:
            self._timer.daemon = True

    def _stop(self) -> None:
        with self._lock:  # never interrupt a connection that finished (and may be closing)
            if not self._done:
                self.fired = True
                self.con.interrupt()

    def __enter__(self) -> "_Deadline":
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith("Error:") else (lines[0] if lines else type(exc).__name__)
    return text
