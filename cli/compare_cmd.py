"""`diffex compare`: a thin shell over diffex/analysis/compare.py. Errors follow the policy of
cli/main.py's DiffexGroup, which invokes this command."""

from __future__ import annotations

import click

from diffex.errors import UsageError

from .output import FORMATS, format_rows

COLUMNS = ["node", "parent", "depth", "class_name", "effect_a", "effect_b", "diff", "ci_low", "ci_high",
           "p_permutation", "p_permutation_bh", "significant", "n_images", "n_edits"]


@click.command()
@click.option("--db", type=click.Path(), required=True, help="The diffex DuckDB file.")
@click.option("--classifier", "classifiers", multiple=True, required=True, metavar="A",
              help="Give twice: A (before) then B (after); id, id prefix, name or spec (e.g. demo:v1).")
@click.option("--class", "class_name", default=None, help="Target class (default: every class both have).")
@click.option("--direction", type=click.Choice(["add", "remove"]), default="add", show_default=True,
              help="Which edits to compare.")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="False discovery rate (Benjamini-Hochberg).")
@click.option("--min-diff", type=float, default=0.02, show_default=True,
              help="Smallest |change of mean delta P| worth flagging.")
@click.option("--permutations", "n_permutations", type=int, default=9999, show_default=True,
              help="Monte Carlo sign flips when there are more than 16 images (fewer: exact).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the permutations.")
@click.option("--changed", "only_changed", is_flag=True, help="List only the significant changes.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format.")
def compare(db, classifiers, class_name, direction, alpha, min_diff, n_permutations, seed, only_changed, fmt) -> None:
    """What changed between two classifier versions: each node's effect under A and B over
    the same cached edits, B - A, a paired sign-flip permutation test (p_permutation,
    Benjamini-Hochberg adjusted: p_permutation_bh) and a significance flag. (The SQL macro
    compare_classifiers runs a paired t-test instead: its p-values differ.) Try:

    diffex compare --db data/demo.duckdb --classifier demo:v1 --classifier demo:v2 --class old
    """
    from diffex.analysis.compare import compare_classifiers

    if len(classifiers) != 2:
        raise UsageError(f"give --classifier exactly twice (A then B), got {len(classifiers)}")
    result = compare_classifiers(db, classifiers[0], classifiers[1], class_name, direction=direction, alpha=alpha,
                                 min_diff=min_diff, n_permutations=n_permutations, seed=seed)
    rows = result.changed if only_changed else list(result.rows)
    click.echo(format_rows(COLUMNS, [[getattr(r, c) for c in COLUMNS] for r in rows], fmt))
    if fmt == "table":
        a, b = (c["spec"] or c["name"] for c in (result.classifier_a, result.classifier_b))
        click.echo(f"\n{len(result.changed)} of {len(result.rows)} node effects changed from A={a} to B={b} "
                   f"({result.method})")
