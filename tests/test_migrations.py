"""Schema versions: a frozen v1 database with rows migrates to the current schema intact."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from diffex import DiffexError, open_store
from diffex.store.migrate import current_version

V1 = Path(__file__).parent / "data" / "schema_v1.sql"


def _columns(con):
    return con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name NOT IN (SELECT view_name FROM duckdb_views()) ORDER BY ALL"
    ).fetchall()


def test_v1_database_migrates_and_keeps_its_rows(tmp_path):
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute(V1.read_text())
    con.execute("INSERT INTO images VALUES ('img1', '/x/a.png', 64, 64, now())")
    con.execute("INSERT INTO nodes VALUES ('n1', NULL, 'beard', 'beard', 1, 'beard')")
    con.execute("INSERT INTO classifiers VALUES ('c1', 'clf', 'demo:v1', now(), now())")
    con.execute("INSERT INTO classes VALUES ('c1', 0, 'young'), ('c1', 1, 'old')")
    con.execute("INSERT INTO edits VALUES ('e0', 'img1', 'ed', 'baseline', [], 'none', 0, 'h0', 'h0.png', 'ok', 0.1, now())")
    con.execute("INSERT INTO scores VALUES ('c1', 'e0', 0, 0.5, 0.6), ('c1', 'e0', 1, 0.1, 0.4)")
    assert con.execute("SELECT version FROM diffex_schema").fetchone()[0] == 1
    con.close()

    with open_store(db) as store:
        assert store.info()["schema_version"] == current_version()
        assert store.con.execute("SELECT uri FROM images").fetchall() == [("/x/a.png",)]
        assert store.con.execute("SELECT sum(prob) FROM scores").fetchone()[0] == pytest.approx(1.0)
        assert store.con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0  # added by v2
        migrated = _columns(store.con)
    fresh = duckdb.connect(str(tmp_path / "new.duckdb"))
    fresh.close()
    with open_store(tmp_path / "new.duckdb") as store:
        assert _columns(store.con) == migrated  # migrations and schema.sql describe the same tables


def test_newer_schema_is_refused_without_touching_it(tmp_path, cli_run):
    db = tmp_path / "future.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE diffex_schema (version INTEGER); INSERT INTO diffex_schema VALUES (99)")
    con.close()
    before = db.read_bytes()
    with pytest.raises(DiffexError, match="newer"):
        open_store(db)
    result = cli_run("info", "--db", db)
    assert result.exit_code == 1 and "version 99 is newer" in result.output
    assert db.read_bytes() == before


def test_non_diffex_database_is_refused(tmp_path):
    db = tmp_path / "other.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    with pytest.raises(DiffexError, match="not a diffex store"):
        open_store(db)
