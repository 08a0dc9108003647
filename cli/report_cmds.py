"""`diffex report` and `diffex check`: thin shells over diffex/report/ and
diffex/analysis/policy.py. Errors follow the policy of cli/main.py's DiffexGroup."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from diffex.errors import DiffexError, UsageError

from .output import format_rows, jsonable


@click.command()
@click.option("--db", type=click.Path(), required=True, help="The diffex DuckDB file.")
@click.option("--class", "class_name", required=True, help="The class whose probability the report explains.")
@click.option("--classifier", default=None, help="Classifier: id, id prefix, name or spec (default: the store's default).")
@click.option("--compare", default=None, metavar="CLASSIFIER",
              help="An earlier classifier version to compare with (A = this, B = --classifier).")
@click.option("--taxonomy", default=None, help="Taxonomy version to draw (default: the newest).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write (default: <db stem>-report.html beside the db).")
def report(db, class_name, classifier, compare, taxonomy, out) -> None:
    """Write one self-contained HTML report (thumbnails inlined; no network, works from file://):
    the hierarchy with each node's effect and CI, image strips of the strongest semantics,
    per-image explanations, the comparison with --compare, and provenance. Read from the store
    alone: no model is loaded. Try:

    diffex report --db data/demo.duckdb --class old --classifier demo:v2 --compare demo:v1
    """
    from diffex.report import write_report

    out = Path(out) if out else Path(db).with_name(f"{Path(db).stem}-report.html")
    result = write_report(db, out, class_name, classifier, compare=compare, taxonomy=taxonomy)
    click.echo(f"wrote {result.path} ({result.bytes / 1e6:.2f} MB: {result.nodes} nodes, {result.strips} image strips, "
               f"{result.explanations} explained images, {result.thumbnails} thumbnails)")
    click.echo(f"open it: file://{result.path.resolve()}")


def _index_first(db, classifier, images, taxonomy) -> str:
    """Index `classifier` with the arguments of the store's last index run (its editor, beam,
    samples, directions, embedder), so only what is missing is computed: for a retrained
    classifier, its forward passes over the cached edits. Returns its classifier id."""
    from diffex.indexing.indexer import run_index
    from diffex.store import Store

    with Store.open(db, read_only=True) as store:
        last = store.last_index_args()
    if last is None:
        raise DiffexError(f"{db} has no index run to repeat; run `diffex index` first")
    keep = ("beam", "samples", "depth", "min_delta", "classes", "directions", "embedder", "joint", "joint_top")
    stats = run_index(db, list(images), taxonomy, classifier, last["editor"], **{k: last[k] for k in keep if k in last},
                      progress=sys.stderr.isatty())
    click.echo(f"indexed {classifier}: edits computed {stats.edits_computed}, reused {stats.edits_reused}; "
               f"scores computed {stats.scores_computed}; {stats.seconds:.1f} s", err=True)
    return stats.classifier_id


@click.command()
@click.option("--db", type=click.Path(), required=True, help="The diffex DuckDB file.")
@click.option("--classifier", required=True, help="The classifier to check: id, id prefix, name or spec.")
@click.option("--policy", type=click.Path(dir_okay=False), required=True, help="Policy file (TOML, [[rule]] tables).")
@click.option("--junit", type=click.Path(dir_okay=False), default=None, help="Also write a JUnit XML file (one testcase per rule).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--images", "images", multiple=True, metavar="PATH_OR_GLOB",
              help="With --taxonomy: index the classifier first (only its forward passes over cached edits).")
@click.option("--taxonomy", type=click.Path(), default=None, help="With --images: the taxonomy to index against.")
@click.pass_context
def check(ctx, db, classifier, policy, junit, as_json, images, taxonomy) -> None:
    """Gate CI on a policy: exit 0 when every rule passes, 1 when any is violated (with a table,
    --json, --junit), 2 when the policy cannot be evaluated (unknown node, class, classifier).
    Try:

    diffex check --db data/demo.duckdb --classifier demo:v2 --policy policy.toml --junit check.xml
    """
    from diffex.analysis.policy import PolicyError, evaluate, junit_xml, load_policy

    load_policy(policy)  # a malformed policy fails before any indexing
    if bool(images) != bool(taxonomy):
        raise UsageError("give --images and --taxonomy together (to index the classifier first), or neither")
    if images:
        classifier = _index_first(db, classifier, images, taxonomy)
    try:
        result = evaluate(db, classifier, policy)
    except PolicyError as exc:
        if str(exc).startswith("--classifier: unknown classifier"):
            raise PolicyError(f"{exc}; to index it first, add --images PATH --taxonomy FILE "
                              "(only its forward passes over the cached edits are computed)") from None
        raise
    if junit:
        Path(junit).write_text(junit_xml(result), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(jsonable(result.to_dict()), indent=2))
    else:
        rows = [[r.index, "PASS" if r.passed else "FAIL", r.name, r.checked, len(r.violations),
                 None if r.worst is None else round(r.worst, 4), r.limit] for r in result.rules]
        click.echo(format_rows(["rule", "status", "what", "checked", "violations", "worst", "limit"], rows, "table"))
        for r in result.rules:
            for v in r.violations:
                detail = (f"new at rank {v['rank']}" if r.kind == "no_new_in_top" else f"{v['value']:.4f} > {r.limit}")
                click.echo(f"  rule {r.index}: {v['node']} / {v['class']}: {detail}")
        failed = sum(not r.passed for r in result.rules)
        click.echo(f"\n{result.classifier}: " + ("every rule passes" if not failed else f"{failed} of {len(result.rules)} rules violated"))
    ctx.exit(0 if result.passed else 1)
