"""The `diffex` command line: a thin shell that parses arguments, calls one library function
and hands its rows to cli/output.py. Library errors become one line and exit 1; usage errors
exit 2; Ctrl-C keeps what is committed and exits 130."""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from pathlib import Path

import click

from diffex.errors import DiffexError, DiffexWarning, OptionError, UsageError

from .output import FORMATS, format_rows, jsonable


class Failure(click.ClickException):
    """A one-line error with its exit code: 1 for library errors, 2 for usage, 130 for Ctrl-C."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(" ".join(str(message).split("\n")[:1]))
        self.exit_code = exit_code


def _one_line_warnings(plain):
    """A showwarning that prints diffex's own warnings (skipped files, an implausible taxonomy)
    as one `Warning:` line on stderr and hands any other warning to `plain`."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DiffexWarning):
            click.echo(f"Warning: {' '.join(str(message).split())}", err=True)
        else:
            plain(message, category, filename, lineno, file, line)

    return show


class DiffexGroup(click.Group):
    """Applies diffex's error policy to every command, whether run from the shell or a test."""

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():  # restores the filters and showwarning afterwards
            warnings.simplefilter("always", DiffexWarning)
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OptionError as exc:  # a library option, said as this command's flag
            raise Failure(exc.message(lambda option: "--" + option.replace("_", "-")), 2) from None
        except UsageError as exc:
            raise Failure(str(exc), 2) from None
        except DiffexError as exc:
            raise Failure(str(exc), 1) from None
        except BrokenPipeError:
            # `diffex query ... | head`: the reader left; stop quietly like any Unix tool
            sys.stderr.close()
            os._exit(0)
        except KeyboardInterrupt:
            raise Failure("interrupted: everything committed so far is kept; run the same command again to resume", 130) from None
        except Exception as exc:  # an internal bug: one line, the traceback on request
            if type(exc).__name__ == "InterruptException" or str(exc).startswith("Query interrupted"):
                # Ctrl-C that lands inside a DuckDB call surfaces as duckdb's InterruptException
                # or as a RuntimeError("Query interrupted"), not as KeyboardInterrupt
                raise Failure("interrupted: everything committed so far is kept; run the same command again to resume", 130) from None
            from diffex.store.core import storage_error

            if (failed := storage_error(exc)) is not None:  # disk full, file size limit, I/O error
                raise Failure(str(failed), 1) from None
            if os.environ.get("DIFFEX_DEBUG"):
                raise
            raise Failure(f"internal error {type(exc).__name__}: {exc} (set DIFFEX_DEBUG=1 for the traceback)", 1) from None


def main() -> None:
    """Console entry point."""
    cli(prog_name="diffex")


format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format."
)
db_option = click.option(
    "--db", type=click.Path(dir_okay=True), required=True, help="The diffex DuckDB file."
)


def _emit(columns, rows, fmt: str) -> None:
    click.echo(format_rows(columns, rows, fmt))


def _print_json(obj) -> None:
    click.echo(json.dumps(jsonable(obj), indent=2))


@click.group(cls=DiffexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffex")
def cli() -> None:
    """Explain image classifiers with semantic edits, cached in a queryable DuckDB store."""


@cli.command()
@click.option("--db", type=click.Path(), default="data/demo.duckdb", show_default=True, help="Database to fill.")
@click.option("--images", "n_images", type=click.IntRange(2, 5000), default=32, show_default=True, help="Demo images to render.")
@click.option("--classifier", type=click.Choice(["demo:v1", "demo:v2"]), default="demo:v1", show_default=True,
              help="Which shipped demo classifier to explain.")
@click.option("--samples", type=click.IntRange(1, 64), default=2, show_default=True, help="Edit seeds per (image, node).")
@click.option("--editor", default="demo", show_default=True,
              help="The demo editor, or one that misbehaves: 'demo?entangle=A:B:P&spill=A:B:P&fail=A:P' (README).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def demo(db, n_images, classifier, samples, editor, as_json) -> None:
    """Build the offline demo world, index it and show what moves the demo classifier."""
    from diffex.indexing.demo_run import run_demo

    if editor != "demo" and not editor.startswith("demo?"):
        raise click.UsageError(f"--editor must be the demo editor ('demo' or 'demo?...'), got {editor!r}")
    result = run_demo(db, n_images=n_images, classifier=classifier, samples=samples, editor=editor,
                      progress=not as_json and sys.stderr.isatty())
    if as_json:
        _print_json(result)
        return
    click.echo(f"Indexed {result['images']} with {classifier} into {result['db']}")
    s = result["stats"]
    click.echo(f"  edits computed {s['edits_computed']}, reused {s['edits_reused']}; scores computed {s['scores_computed']}; {s['seconds']:.1f} s")
    click.echo(f"\nTop subtypes moving P({result['class']}) (mean change vs the null-edit baseline, 95% CI):\n")
    cols = ["rank", "node", "parent", "mean_delta_prob", "ci_low", "ci_high", "n_images", "n_invalid", "effect"]
    cols = [c for c in cols if c in (result["rows"][0] if result["rows"] else {})]
    # issue 13: a row whose effect may be borrowed from a side effect says so
    flagged = [r for r in result["rows"] if r.get("confounded_with")]
    if flagged:
        cols.append("confound")
    _emit(cols, [[r[c] for c in cols if c != "confound"]
                 + ([f"! {r['confounded_with']} {r['confound_share']:.0%} (clean {r['clean_delta_prob']})"
                     if r.get("confounded_with") else ""] if flagged else []) for r in result["rows"]], "table")
    if flagged:
        click.echo(f"(! confound: another concept appeared in that share of the node's edits; see "
                   f"SELECT * FROM confounds('{result['class']}'))")
    click.echo(f"\nPlanted dependency (ground truth): {', '.join(result['planted'])}; "
               f"recovered at rank 1: {'yes' if result['top'] and result['top'][0] in result['planted'] else 'NO'}")
    click.echo("(n_invalid: edits the demo CLIP judged not to show the concept, left out of the effect)")
    click.echo(f"Ask more: diffex query --db {result['db']} \"SELECT * FROM top_subtypes('{result['class']}', 10)\"")
    click.echo(f"          diffex search --db {result['db']} \"a face with a goatee\" --class {result['class']} --k 5")
    click.echo(f"Report: file://{Path(result['report']).resolve()}  ({result['report_bytes'] / 1e6:.2f} MB, open it in a browser)")


@cli.command()
@db_option
@click.option("--images", "image_specs", multiple=True, metavar="PATH_OR_GLOB", help="Image file, directory or glob (repeatable).")
@click.argument("more_images", nargs=-1, metavar="[PATH_OR_GLOB]...")
@click.option("--taxonomy", type=click.Path(), required=True, help="Semantic hierarchy: .json, .yaml/.yml, or an indented .txt/.md outline.")
@click.option("--classifier", required=True, help="Classifier SPEC: demo:v1, demo:v2, python:PATH_OR_MODULE:ATTR, hf:MODEL_ID_OR_PATH, "
                   "torchscript:PATH?class_names=a,b&size=224&mean=...&std=..., clip:MODEL_ID_OR_PATH?labels=a,b")
@click.option("--editor", default=None, help="Editor SPEC: demo, ledits:MODEL_ID_OR_PATH[?opts], ip2p:MODEL_ID_OR_PATH[?opts], "
              "python:PATH_OR_MODULE:ATTR, ... (default: demo, which edits only demo-world images).")
@click.option("--beam", type=int, default=8, show_default=True, help="Nodes kept per class at each level; 0 expands the whole tree.")
@click.option("--samples", default="4", show_default=True, metavar="N|auto",
              help="Edit seeds per (image, node), or 'auto': draw images and seeds where the ranking is uncertain.")
@click.option("--budget", type=int, default=None, help="With --samples auto: at most this many node edits in all.")
@click.option("--max-seeds", type=int, default=4, show_default=True, help="With --samples auto: most seeds per (image, node).")
@click.option("--top", type=int, default=10, show_default=True, help="With --samples auto: how many strongest nodes per class to resolve.")
@click.option("--depth", type=int, default=None, help="Deepest level to score (default: all).")
@click.option("--min-delta", type=float, default=0.0, show_default=True, help="Expand only nodes with |mean delta P| at least this.")
@click.option("--classes", multiple=True, help="Target classes of the beam search (repeatable; default all).")
@click.option("--direction", "directions", multiple=True, type=click.Choice(["add", "remove"]), default=("add",),
              show_default=True, help="Edit directions to try (repeatable).")
@click.option("--require-gain", is_flag=True, help="Keep a child only when it explains more than its parent.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Image cache (default: <db stem>-cache beside the db).")
@click.option("--embedder", default=None, metavar="SPEC",
              help="Store CLIP vectors and judge edit validity: clip:MODEL_ID_OR_PATH, demo.")
@click.option("--validity-threshold", type=float, default=None,
              help="Edits whose CLIP direction similarity is below this are invalid (default: the embedder's).")
@click.option("--joint", type=int, default=0, show_default=True,
              help="After the walk, edit combinations of N semantics together (0 = off, 2-5) and report the best per class.")
@click.option("--joint-top", type=int, default=None,
              help="Combine among the top M single nodes per class (default: max(beam, 4)).")
@click.option("--ray", "ray", default=None, is_flag=False, flag_value="local", metavar="[ADDRESS|local]",
              help="Run the edit, classify and embed work on Ray actors (pip install 'diffex[ray]'): `local` (the "
                   "default value) starts Ray on this machine, else a cluster address; this process alone writes DB.")
@click.option("--ray-actors", type=int, default=None, help="Ray actors (default: one per GPU, else one per CPU).")
@click.option("--ray-gpus-per-actor", type=float, default=None, help="GPUs per Ray actor (default 1 when there are GPUs).")
@click.option("--json", "as_json", is_flag=True, help="Print the run's counts as one JSON object.")
def index(db, image_specs, more_images, taxonomy, classifier, editor, beam, samples, budget, max_seeds, top, depth,
          min_delta, classes, directions, require_gain, cache_dir, embedder, validity_threshold, joint, joint_top, ray,
          ray_actors, ray_gpus_per_actor, as_json) -> None:
    """Edit, score and store: fill DB with what every semantic does to the classifier."""
    from diffex.indexing.indexer import run_index

    specs = list(image_specs) + list(more_images)
    if not specs:
        raise UsageError("give images with --images PATH_OR_GLOB")
    classes = [c for item in classes for c in item.split(",") if c]
    if samples.strip().lower() == "auto":
        samples = "auto"
    elif samples.strip().lstrip("-").isdigit():
        samples = int(samples)
    else:
        raise UsageError(f"--samples must be a number of seeds or 'auto', got {samples!r}")
    stats = run_index(db, specs, taxonomy, classifier, editor, beam=beam, samples=samples, budget=budget,
                      max_seeds=max_seeds, top=top, depth=depth,
                      min_delta=min_delta, classes=classes or None, directions=directions,
                      require_gain=require_gain, cache_dir=cache_dir, embedder=embedder,
                      validity_threshold=validity_threshold, joint=joint, joint_top=joint_top,
                      ray=ray, ray_actors=ray_actors, ray_gpus_per_actor=ray_gpus_per_actor,
                      progress=not as_json and sys.stderr.isatty())
    if as_json:
        _print_json(stats.to_dict())
    else:
        click.echo(f"{stats.images} images, {stats.nodes_scored} nodes scored to depth {stats.depth_reached}: "
                   f"edits computed {stats.edits_computed}, reused {stats.edits_reused}; "
                   f"scores computed {stats.scores_computed}; {stats.seconds:.1f} s")
        if stats.schedule == "auto":
            click.echo(f"adaptive schedule: {stats.edits_requested} node edits on {stats.image_seeds} (image, seed) pairs; "
                       "nodes stopped " + ", ".join(f"{r} {n}" for r, n in stats.stop_reasons.items())
                       + " (see the view node_effects_schedule)")
        if stats.edits_blocked:
            click.echo(f"{stats.edits_blocked} edits blanked by the model's safety checker: stored as 'blocked' and "
                       "left out of every effect (the editor option safety=0 loads the model without it)")
        if stats.edits_failed:
            click.echo(f"{stats.edits_failed} edits of {len(stats.failures)} image groups failed (stored as 'failed', "
                       "left out of every effect); the same command retries them")
        for cls, best in stats.best_joint.items():
            click.echo(f"best joint for {cls}: {' + '.join(best['nodes'])}  mean delta P {best['mean_delta_prob']:+.4f}"
                       f" (sum of singles {best['sum_single_delta_prob'] or 0:+.4f})")


# Rows shown when --limit is not given: a screenful-ish for people, a generous cap for files
# (a csv/json of millions of rows is built in memory; --limit 0 takes them all on purpose).
DEFAULT_LIMITS = {"table": 1000, "markdown": 1000, "json": 100_000, "csv": 100_000, "nl": 100_000}


_MACRO_CALL = re.compile(r"\b(top_subtypes|top_nodes|effect_tree|image_explanation|top_combinations|effects_for)\s*\(", re.I)


@cli.command()
@db_option
@click.option("--classifier", default=None, help="Classifier to pin: a spec (demo:v1), name, id or id prefix.")
@click.option("--unpin", is_flag=True, help="Unpin: queries default to the most recently indexed classifier again.")
def use(db, classifier, unpin) -> None:
    """Pin the classifier every query of DB answers for by default, so indexing another one
    does not change what `top_subtypes('old', 10)` means. Try:

    diffex use --db data/demo.duckdb --classifier demo:v1
    """
    from diffex.store.core import Store

    if bool(classifier) == bool(unpin):
        raise UsageError("give --classifier SPEC to pin one, or --unpin")
    with Store.open(db) as store:
        row = store.pin_classifier(None if unpin else classifier)
    click.echo("unpinned: queries default to the most recently indexed classifier" if row is None
               else f"pinned {row['spec'] or row['name']} ({row['classifier_id'][:12]}): queries of {db} default to it")


@cli.command()
@db_option
@click.argument("sql")
@click.option("-p", "--param", "params", type=(str, str), multiple=True, metavar="NAME VALUE",
              help="Bind $NAME to VALUE (repeatable).")
@format_option
@click.option("--limit", type=click.IntRange(min=0), default=None, metavar="N",
              help="Return at most N rows, with a note on stderr when there were more; 0 for all. "
                   "Default: 1000 for table and markdown, 100000 for json, csv and nl.")
@click.option("--timeout", type=click.FloatRange(min=0), default=60, show_default=True, metavar="SECONDS",
              help="Stop the query after this long (exit 1); 0 for no limit.")
@click.option("--memory-limit", default="25%", show_default=True, metavar="SIZE",
              help="DuckDB's memory cap: 2GB, 512MiB, or a share of this machine's memory such as 25%. "
                   "Bigger sorts and joins spill to a temporary folder under $TMPDIR, removed afterwards.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="DuckDB threads (default: one per CPU core).")
def query(db, sql, params, fmt, limit, timeout, memory_limit, threads) -> None:
    """Run one read-only SQL statement against DB ('-' reads it from stdin). Try:

    SELECT * FROM top_subtypes('old', 10)

    Only SELECT-like statements run (WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN);
    the database and every other file stay untouched.
    """
    from diffex.store.query import run_query

    if sql == "-":
        sql = sys.stdin.read()
    if limit is None:
        limit = DEFAULT_LIMITS[fmt]
    result = run_query(db, sql, dict(params), limit=limit, timeout=timeout, memory_limit=memory_limit, threads=threads)
    _emit(result.columns, result.rows, fmt)
    if fmt in ("table", "markdown") and _MACRO_CALL.search(sql) and "classifier" not in sql.lower().replace("classifier_", ""):
        # an effect macro without `classifier :=` answers for the store's default: say which
        row = run_query(db, """
            SELECT classifier_label(spec, name, classifier_id), pinned_at IS NOT NULL,
                   (SELECT string_agg(coalesce(spec, name), ', ' ORDER BY created_at) FROM editors),
                   (SELECT name || ' ' || left(taxonomy_id, 8) FROM taxonomies ORDER BY created_at DESC LIMIT 1)
            FROM classifiers ORDER BY pinned_at DESC NULLS LAST, indexed_at DESC NULLS LAST LIMIT 1""").rows
        if row:
            label, pinned, editors, taxonomy = row[0]
            why = "pinned with `diffex use`" if pinned else "the most recently indexed; `diffex use` pins one"
            click.echo(f"(classifier: {label}, {why}; editors: {editors}; newest taxonomy: {taxonomy})", err=True)
    if result.truncated:
        click.echo(f"(showing the first {limit} rows; --limit 0 for all)", err=True)


@cli.command()
@db_option
@click.argument("text", required=False)
@click.option("--k", "k", type=int, default=20, show_default=True, help="How many results.")
@click.option("--class", "class_name", default=None, help="Add each result's P(CLASS) and its change vs the baseline.")
@click.option("--classifier", default=None, help="Classifier of --class (default: the most recently indexed).")
@click.option("--image", type=click.Path(dir_okay=False), default=None, help="Search by an image file instead of text.")
@click.option("--kind", type=click.Choice(["edit", "image"]), default="edit", show_default=True,
              help="Search edited images or the original images.")
@click.option("--nodes", "nodes", is_flag=True, help="Find the taxonomy nodes nearest to TEXT (any words, not only labels).")
@click.option("--embedder", default=None, metavar="SPEC", help="Embedder whose vectors to search (default: the most recent).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Image cache (default: <db stem>-cache beside the db).")
@format_option
def search(db, text, k, class_name, classifier, image, kind, nodes, embedder, cache_dir, fmt) -> None:
    """Find edits (or images, or taxonomy nodes) by meaning, with their effect on a class. Try:

    diffex search --db data/demo.duckdb "a face with a goatee" --class old --k 10
    """
    from diffex.embedding import search as lib

    if nodes:
        if image is not None or text is None:
            raise UsageError("--nodes takes a TEXT query, not --image")
        rows = lib.nodes_like(db, text, k=k, embedder=embedder, cache_dir=cache_dir)
    else:
        rows = lib.search(db, text=text, image=image, k=k, kind=kind, class_name=class_name,
                          classifier=classifier, embedder=embedder, cache_dir=cache_dir)
    columns = list(rows[0]) if rows else ["rank", "similarity", "node", "path"]
    if fmt == "table" and kind == "image" and not nodes:
        # an original image has no node, direction or edit: what identifies it is its id and file
        columns = ["rank", "similarity", "image_id", "image_path"] + [c for c in ("class_name", "prob") if c in columns]
        rows = [{**r, "image_id": (r.get("image_id") or "")[:12], "image_path": r.get("uri")} for r in rows]
    elif fmt == "table":  # ids and paths make a table unreadable; json/csv keep every column
        columns = [c for c in columns if c not in ("edit_id", "image_id", "uri", "cache_path", "classifier_name")]
    _emit(columns, [[r.get(c) for c in columns] for r in rows], fmt)


@cli.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(db, as_json) -> None:
    """Show what DB holds: counts, classifiers, editors."""
    from diffex.store.core import Store

    with Store.open(db, read_only=True) as store:
        data = store.info()
    if as_json:
        _print_json(data)
        return
    for key in ("db", "schema_version", "cache_dir", "taxonomies", "images", "nodes", "edits", "baselines", "edits_blocked", "scores"):
        click.echo(f"{key:15} {data[key]}")
    click.echo("classifiers:")
    for c in data["classifiers"]:
        click.echo(f"  {c['classifier_id'][:12]}  {c['spec'] or c['name']}  classes={','.join(c['class_names'] or [])}  indexed={c['indexed_at']}")
    click.echo("editors:")
    for e in data["editors"]:
        click.echo(f"  {e['editor_id'][:12]}  {e['spec'] or e['name']}")


@cli.command()
@db_option
def migrate(db) -> None:
    """Upgrade DB to this version's schema (runs automatically on every write)."""
    from diffex.store.core import Store

    with Store.open(db) as store:
        click.echo(f"{store.path}: schema version {store.info()['schema_version']}")


@cli.command(short_help="Check DB against its cache and derived data; --repair fixes what it can.")
@db_option
@click.option("--repair", is_flag=True,
              help="Delete corrupt and unreferenced cache files, rebuild stale vector indexes and drifting effect tables.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Image cache (default: <db stem>-cache beside the db).")
@click.option("--no-pixels", is_flag=True, help="Only check that cached images exist; do not decode and hash them.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.pass_context
def verify(ctx, db, repair, cache_dir, no_pixels, as_json) -> None:
    """Check DB against its cache folder and derived data, and repair what can be recomputed.

    Checks: rows pointing at missing rows; cached edit images missing or with other pixels
    than their hash; cache files nothing points at; stale FAISS indexes; effect tables that
    differ from a recomputation. Without --repair nothing is written. Exit status 0: healthy
    (after --repair: healthy now), 1: problems remain. Missing cached images are recomputed
    by the next `diffex index` with the same arguments.
    """
    from diffex.indexing.verify import verify_store

    report = verify_store(db, repair=repair, cache_dir=cache_dir, check_pixels=not no_pixels)
    if as_json:
        _print_json(report.to_dict())
    else:
        cols = ["check", "status", "count", "detail"]
        _emit(cols, [[c.check, c.status, c.count, c.detail] for c in report.checks], "table")
        for c in report.checks:
            if c.examples and c.status != "ok":
                click.echo(f"  {c.check}: {', '.join(c.examples)}")
        click.echo(f"\n{report.db}: " + ("healthy" if report.healthy else
                   f"{sum(not c.healthy for c in report.checks)} checks with problems left"))
    ctx.exit(0 if report.healthy else 1)

from .taxonomy_cmds import taxonomy  # noqa: E402 (a command group in its own file)

cli.add_command(taxonomy)

from .compare_cmd import compare  # noqa: E402 (one command in its own file)

cli.add_command(compare)

from .report_cmds import check, report  # noqa: E402 (issue 14: the HTML report and the CI policy gate)

cli.add_command(report)
cli.add_command(check)


if __name__ == "__main__":
    main()
