"""`diffex query` as a bounded sandbox: a catalogue of hostile statements, each refused in one
line with the store byte-identical, and the row, time and memory bounds."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time

import duckdb
import pytest

from diffex import DiffexError, UsageError, run_index, run_query

SECRET = "s3cr3t-marker"


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_images, classifier_file):
    db = tmp_path_factory.mktemp("sandbox") / "q.duckdb"
    tax = {"categories": {"hair colour": ["grey hair", "black hair"]}}
    run_index(db, [str(demo_images)], tax, f"python:{classifier_file}:make", beam=0, samples=1)
    return db


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    """Files a query must not read: each holds SECRET."""
    folder = tmp_path_factory.mktemp("victim")
    (folder / "data.csv").write_text(f"a,b\n1,{SECRET}\n")
    (folder / "data.json").write_text(json.dumps({"a": SECRET}) + "\n")
    con = duckdb.connect(str(folder / "other.duckdb"))
    con.execute(f"CREATE TABLE t AS SELECT '{SECRET}' AS a")
    con.execute(f"COPY t TO '{folder / 'data.parquet'}' (FORMAT parquet)")
    con.close()
    return folder


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


FILES = "reads only its own database"  # DuckDB's sandbox refused a file, extension or setting

# (statement, what the one-line message must say). {victim} holds files with SECRET, {out} must stay empty.
HOSTILE = [
    # reading other files, through every table function that touches files
    ("SELECT * FROM read_csv('{victim}/data.csv')", FILES),
    ("SELECT * FROM read_csv_auto('{victim}/data.csv')", FILES),
    ("SELECT * FROM read_json('{victim}/data.json')", FILES),
    ("SELECT * FROM read_json_auto('{victim}/data.json')", FILES),
    ("SELECT * FROM read_ndjson('{victim}/data.json')", FILES),
    ("SELECT * FROM read_json_objects('{victim}/data.json')", FILES),
    ("SELECT * FROM read_parquet('{victim}/data.parquet')", FILES),
    ("SELECT * FROM parquet_scan('{victim}/data.parquet')", FILES),
    ("SELECT * FROM parquet_metadata('{victim}/data.parquet')", FILES),
    ("SELECT * FROM parquet_schema('{victim}/data.parquet')", FILES),
    ("SELECT * FROM parquet_kv_metadata('{victim}/data.parquet')", FILES),
    ("SELECT * FROM read_text('{victim}/data.csv')", FILES),
    ("SELECT * FROM read_blob('{victim}/data.csv')", FILES),
    ("SELECT * FROM glob('{victim}/*')", FILES),
    ("SELECT * FROM sniff_csv('{victim}/data.csv')", FILES),
    ("SELECT * FROM read_duckdb('{victim}/other.duckdb', table_name := 't')", FILES),
    ("SELECT * FROM '{victim}/data.csv'", FILES),
    ("SELECT * FROM read_text('/proc/self/environ')", FILES),
    ("SELECT * FROM read_csv('https://example.com/x.csv')", FILES),
    # writing or copying files
    ("COPY nodes TO '{out}/x.csv'", "COPY statements are not allowed"),
    ("COPY (SELECT 1) TO '{out}/x.parquet' (FORMAT parquet)", "COPY statements are not allowed"),
    ("COPY nodes FROM '{victim}/data.csv'", "COPY statements are not allowed"),
    ("EXPORT DATABASE '{out}/dump'", "EXPORT DATABASE statements are not allowed"),
    ("IMPORT DATABASE '{victim}'", "IMPORT DATABASE"),
    ("COPY FROM DATABASE q TO other", "COPY FROM DATABASE"),
    ("EXPLAIN ANALYZE COPY nodes TO '{out}/e.csv'", "COPY statements are not allowed"),
    # other databases, extensions, settings
    ("ATTACH '{out}/new.duckdb' AS o", "ATTACH statements are not allowed"),
    ("ATTACH '{victim}/other.duckdb' AS o (READ_ONLY)", "ATTACH statements are not allowed"),
    ("DETACH q", "DETACH statements are not allowed"),
    ("INSTALL httpfs", "INSTALL or LOAD statements are not allowed"),
    ("LOAD parquet", "INSTALL or LOAD statements are not allowed"),
    ("UPDATE EXTENSIONS", "unrecognised statements are not allowed"),
    ("SET enable_external_access = true", "SET, RESET or USE statements are not allowed"),
    ("SET GLOBAL memory_limit = '100GB'", "SET, RESET or USE statements are not allowed"),
    ("RESET threads", "SET, RESET or USE statements are not allowed"),
    ("USE memory", "SET, RESET or USE statements are not allowed"),
    ("SET VARIABLE x = 1", "SET, RESET or USE statements are not allowed"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("PRAGMA table_info('images')", "DESCRIBE t, SHOW TABLES"),
    # DDL and DML, temporary objects included
    ("CREATE TABLE t AS SELECT 1", "CREATE statements are not allowed"),
    ("CREATE TEMP TABLE t AS SELECT 1", "CREATE statements are not allowed"),
    ("CREATE VIEW v AS SELECT 1", "CREATE statements are not allowed"),
    ("CREATE MACRO m(x) AS x + 1", "CREATE statements are not allowed"),
    ("CREATE TEMP MACRO m(x) AS x + 1", "CREATE statements are not allowed"),
    ("CREATE SECRET (TYPE s3, KEY_ID 'a', SECRET 'b')", "CREATE statements are not allowed"),
    ("INSERT INTO nodes SELECT * FROM nodes", "INSERT statements are not allowed"),
    ("UPDATE images SET uri = 'x'", "UPDATE statements are not allowed"),
    ("DELETE FROM scores", "DELETE statements are not allowed"),
    ("TRUNCATE scores", "DELETE statements are not allowed"),
    ("DROP TABLE scores", "DROP or DEALLOCATE statements are not allowed"),
    ("ALTER TABLE images ADD COLUMN x INTEGER", "ALTER statements are not allowed"),
    ("MERGE INTO images USING images AS s ON images.image_id = s.image_id WHEN MATCHED THEN DELETE",
     "MERGE INTO statements are not allowed"),
    # several statements in one string
    ("SELECT 1; DROP TABLE images", "2 statements (SELECT; DROP)"),
    ("SELECT 1; SELECT 2", "2 statements (SELECT; SELECT)"),
    ("SELECT 1; COPY nodes TO '{out}/x.csv'; SELECT 3", "3 statements (SELECT; COPY; SELECT)"),
    # system functions that write, switch logging or run SQL from a string
    ("CALL checkpoint()", "CALL or CHECKPOINT statements are not allowed"),
    ("CHECKPOINT", "CALL or CHECKPOINT statements are not allowed"),
    ("FORCE CHECKPOINT", "CALL or CHECKPOINT statements are not allowed"),
    ("CALL enable_logging(storage := 'file', storage_path := '{out}/log')", "CALL or CHECKPOINT statements"),
    ("SELECT * FROM checkpoint()", "checkpoint() changes the database's state"),
    ("WITH c AS (SELECT * FROM force_checkpoint()) SELECT * FROM c", "force_checkpoint() changes"),
    ("SELECT * FROM enable_logging(storage := 'file', storage_path := '{out}/log')", "enable_logging() changes"),
    ("SELECT * FROM images, LATERAL (SELECT * FROM truncate_duckdb_logs())", "truncate_duckdb_logs() changes"),
    ("SELECT * FROM query('SELECT * FROM read_text(''{victim}/data.csv'')')", "query() changes"),
    ("VACUUM", "VACUUM or ANALYZE statements are not allowed"),
    ("BEGIN TRANSACTION", "BEGIN, COMMIT or ROLLBACK statements are not allowed"),
    ("PREPARE p AS SELECT 1", "PREPARE statements are not allowed"),
    ("PIVOT nodes ON depth USING count(*)", "PIVOT without an explicit IN"),
    ("EXPLAIN (FORMAT json) SELECT 1", "EXPLAIN is allowed only as EXPLAIN [ANALYZE] <query>"),
]


@pytest.mark.parametrize("sql, says", HOSTILE, ids=[h[0][:60] for h in HOSTILE])
def test_hostile_statement_is_refused_in_one_line_and_changes_nothing(store, victim, tmp_path, cli_run, sql, says):
    out = tmp_path / "out"
    out.mkdir()
    beside = sorted(p.name for p in store.parent.iterdir())
    before = _digest(store)
    result = cli_run("query", "--db", store, sql.format(victim=victim, out=out))
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: query refused: ") and result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.output and SECRET not in result.output
    assert _digest(store) == before
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in store.parent.iterdir()) == beside  # no .wal, no .tmp beside it


def test_hostile_statement_in_a_real_process(store, tmp_path):
    """The console path: exit status, stderr and no traceback, not only click's test runner."""
    before = _digest(store)
    proc = subprocess.run([sys.executable, "-m", "diffex.cli.main", "query", "--db", str(store), "-"],
                          input=f"SELECT count(*) FROM images;\nCOPY images TO '{tmp_path}/x.csv';",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ("Error: query refused: 2 statements (SELECT; COPY); diffex query runs exactly one "
                           "(SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE, or EXPLAIN of one of those)\n")
    assert _digest(store) == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sql, first_column", [
    ("SHOW TABLES", "name"),
    ("DESCRIBE images", "column_name"),
    ("SUMMARIZE nodes", "column_name"),
    ("SELECT * FROM pragma_table_info('images')", "cid"),
    ("EXPLAIN SELECT count(*) FROM nodes", "explain_key"),
    ("EXPLAIN ANALYZE SELECT count(*) FROM nodes", "explain_key"),
    ("/* a comment first */\nWITH n AS (SELECT depth FROM nodes) SELECT count(*) AS n FROM n;", "n"),
    ("FROM nodes SELECT count(*) AS n", "n"),
    ("VALUES (1, 'a')", "col0"),
    ("PIVOT nodes ON depth IN (1, 2) USING count(*) GROUP BY label", "label"),
    ("SELECT * FROM range(3)", "range"),
])
def test_read_only_statements_run(store, cli_run, sql, first_column):
    before = _digest(store)
    result = cli_run("query", "--db", store, sql, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and list(rows[0])[0] == first_column
    assert _digest(store) == before


def test_the_sandbox_settings_are_in_force_and_locked(store):
    row = run_query(store, """SELECT current_setting('enable_external_access') AS external,
        current_setting('lock_configuration') AS locked, current_setting('memory_limit') AS memory,
        current_setting('threads') AS threads, current_setting('autoload_known_extensions') AS autoload""",
        memory_limit="200MB", threads=1).dicts()[0]
    assert row == {"external": False, "locked": True, "memory": "190.7 MiB", "threads": 1, "autoload": False}


# -- rows --------------------------------------------------------------------------------

def test_table_shows_1000_rows_of_millions_with_a_note(store, cli_run):
    result = cli_run("query", "--db", store, "SELECT range AS n FROM range(5000000)")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + 1000 and lines[2].strip() == "0" and lines[-1].strip() == "999"
    assert result.stderr == "(showing the first 1000 rows; --limit 0 for all)\n"


def test_csv_default_limit_is_larger_and_limit_0_takes_all(store, cli_run):
    result = cli_run("query", "--db", store, "SELECT range AS n FROM range(250000)", "--format", "csv")
    assert result.stdout.splitlines()[1:] == [str(i) for i in range(100_000)]
    assert result.stderr == "(showing the first 100000 rows; --limit 0 for all)\n"
    result = cli_run("query", "--db", store, "SELECT range AS n FROM range(2500)", "--limit", "0", "--format", "nl")
    assert [json.loads(line)["n"] for line in result.stdout.splitlines()] == list(range(2500))
    assert result.stderr == ""


def test_limit_exactly_met_is_not_truncated(store, cli_run):
    result = cli_run("query", "--db", store, "SELECT range AS n FROM range(5)", "--limit", "5", "--format", "json")
    assert [r["n"] for r in json.loads(result.stdout)] == [0, 1, 2, 3, 4] and result.stderr == ""
    result = cli_run("query", "--db", store, "SELECT range AS n FROM range(6)", "--limit", "5", "--format", "json")
    assert [r["n"] for r in json.loads(result.stdout)] == [0, 1, 2, 3, 4]
    assert result.stderr == "(showing the first 5 rows; --limit 0 for all)\n"


def test_library_fetches_only_limit_plus_one_rows(store):
    # a billion rows: fetching them all takes minutes and tens of GB, so this returns its 10 rows
    # well inside the 1 s timeout only if at most limit + 1 rows are ever produced (were they
    # all fetched, the timeout stops it after about 0.7 GB)
    result = run_query(store, "SELECT range AS n FROM range(1000000000)", limit=10, timeout=1)
    assert result.truncated and [r[0] for r in result.rows] == list(range(10))
    # existing callers: no limit by default, positional params, .dicts()
    full = run_query(store, "SELECT range AS n FROM range($k)", {"k": 3000})
    assert not full.truncated and len(full.rows) == 3000 and full.dicts()[-1] == {"n": 2999}
    assert run_query(store, "SELECT range AS n FROM range(3000)", limit=0).rows == full.rows


# -- time --------------------------------------------------------------------------------
# In subprocesses: were the timeout broken, the test fails at subprocess.run's limit and the
# process is killed, instead of hanging the suite on a query of hours.

LONG = "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range + b.range = 7"  # 10^12 pairs: hours


def test_timeout_stops_a_long_query(store):
    before = _digest(store)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "diffex.cli.main", "query", "--db", str(store), LONG, "--timeout", "1"],
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "Error: query stopped after 1 s (--timeout)\n")
    assert elapsed < 30, elapsed  # 1 s of query plus the interpreter's start-up
    assert _digest(store) == before
    assert run_query(store, "SELECT count(*) FROM images").rows == [(6,)]


def test_library_timeout(store):
    code = ("import sys; from diffex import DiffexError, run_query\n"
            "try:\n    run_query(sys.argv[1], sys.argv[2], timeout=0.5)\n"
            "except DiffexError as exc:\n    print(exc)")
    proc = subprocess.run([sys.executable, "-c", code, str(store), LONG], capture_output=True, text=True, timeout=120)
    assert proc.stdout == "query stopped after 0.5 s (--timeout)\n", proc.stderr


def test_a_quick_query_is_untouched_by_its_timeout(store):
    threads = threading.active_count()
    assert run_query(store, "SELECT 42 AS x", timeout=0.5).rows == [(42,)]
    assert run_query(store, "SELECT 42 AS x", timeout=0).rows == [(42,)]
    time.sleep(0.1)
    assert threading.active_count() == threads  # the timer was cancelled, not left to fire into a closed connection


# -- memory ------------------------------------------------------------------------------

BIG = "SELECT count(DISTINCT s) FROM (SELECT range::VARCHAR || repeat('x', 200) AS s FROM range(3000000))"


def test_memory_limit_fails_a_hungry_query_cleanly(store, cli_run):
    before = _digest(store)
    start = time.monotonic()
    result = cli_run("query", "--db", store, BIG, "--memory-limit", "50MB")
    assert result.exit_code == 1
    assert result.output.startswith("Error: query needs more memory than its limit of 50MB (--memory-limit): Out of Memory Error")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert time.monotonic() - start < 60
    assert _digest(store) == before
    # the same limit is no obstacle to an ordinary query
    ok = cli_run("query", "--db", store, "SELECT count(*) AS n FROM images", "--memory-limit", "50MB", "--format", "json")
    assert json.loads(ok.stdout) == [{"n": 6}]


def test_a_big_sort_spills_to_a_private_folder_that_is_removed(store, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sql = ("SELECT max(r) AS r FROM (SELECT row_number() OVER (ORDER BY s) AS r FROM "
           "(SELECT (range * 7919 % 2000000)::VARCHAR || repeat('x', 50) AS s FROM range(2000000)))")
    assert run_query(store, sql, memory_limit="100MB", threads=1).rows == [(2_000_000,)]
    from diffex.store.query import _POOL

    # the folder lives as long as the warm connection that may spill into it (idle 2 s at most)
    assert [p.name[:13] for p in tmp_path.iterdir()] == ["diffex-query-"]
    _POOL.close_all()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, says", [
    (("--memory-limit", "5"), "memory limit '5' is not an amount such as 2GB"),
    (("--memory-limit", "lots"), "memory limit 'lots' is not an amount"),
    (("--memory-limit", "1MB"), "memory limit '1MB' is too small: at least 16MB"),
    (("--memory-limit", "0%"), "a percentage must be above 0 and at most 100"),
    (("--memory-limit", "150%"), "a percentage must be above 0 and at most 100"),
    (("--timeout", "-1"), "-1"),
    (("--limit", "-5"), "-5"),
    (("--threads", "0"), "0"),
])
def test_bad_bounds_are_usage_errors(store, cli_run, args, says):
    result = cli_run("query", "--db", store, "SELECT 1", *args)
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output


def test_library_checks_its_bounds(store):
    with pytest.raises(UsageError, match="limit must be 0"):
        run_query(store, "SELECT 1", limit=-1)
    with pytest.raises(UsageError, match="timeout must be 0"):
        run_query(store, "SELECT 1", timeout=-2)
    with pytest.raises(UsageError, match="'12 parsecs' is not an amount"):
        run_query(store, "SELECT 1", memory_limit="12 parsecs")
    with pytest.raises(DiffexError, match="empty query"):
        run_query(store, "-- only a comment")
    assert run_query(store, "SELECT 1 AS one", memory_limit="512MiB").rows == [(1,)]
    assert run_query(store, "SELECT 1 AS one", memory_limit=None).rows == [(1,)]
