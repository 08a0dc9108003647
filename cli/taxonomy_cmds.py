"""`diffex taxonomy ...`: a thin shell over diffex/taxonomy/propose.py (propose) and diffex/taxonomy/curation.py (the rest).
Errors follow the policy of cli/main.py's DiffexGroup, which invokes these commands."""

from __future__ import annotations

import json

import click

from .output import FORMATS, format_rows, jsonable

db_required = click.option("--db", type=click.Path(), required=True, help="The diffex DuckDB file.")
which_option = click.option("--taxonomy", "which", default=None, metavar="ID",
                            help="Version to work on: id, id prefix or name (default: the newest).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def _echo_json(obj) -> None:
    click.echo(json.dumps(jsonable(obj), indent=2, ensure_ascii=False))


def _report(result, as_json: bool) -> None:
    if as_json:
        _echo_json(result.to_dict())
        return
    again = " (an earlier version, now the newest again)" if result.existed else ""
    click.echo(f"new taxonomy version {result.taxonomy_id[:12]} from {result.parent_taxonomy_id[:12]}{again}: "
               f"{result.note}; {result.nodes} nodes")
    for note in result.notes:
        click.echo(f"  note: {note}")


@click.group(name="taxonomy")
def taxonomy() -> None:
    """Propose (with a vision-language model), inspect and curate semantic hierarchies.

    Every change makes a new taxonomy version; nodes keep their identity by path, so
    re-indexing reuses the cached edits of every node that did not change. Paths are
    written 'facial hair > beard > goatee' or 'facial hair/beard/goatee'.
    """


@taxonomy.command()
@click.option("--images", "images", type=click.Path(), required=True, metavar="DIR", help="Folder (or glob) of sample images.")
@click.option("--vlm", "vlm", required=True, metavar="SPEC", help="openai:MODEL (OPENAI_BASE_URL, OPENAI_API_KEY) or hf:MODEL_ID_OR_PATH.")
@click.option("--levels", type=click.IntRange(1, 8), default=3, show_default=True, help="How many levels deep to ask for.")
@click.option("--samples", type=click.IntRange(1, 64), default=8, show_default=True, help="Images shown to the model.")
@click.option("--db", type=click.Path(), default=None, help="Cache the answer here and store the taxonomy as a version.")
@click.option("--out", type=click.Path(), default=None, help="Write the paper-style JSON here (default: print it).")
@click.option("--domain", default=None, help="Name the domain in the prompt, e.g. 'portrait photos'.")
@click.option("--refresh", is_flag=True, help="Ask the model even when a cached answer exists.")
@json_option
def propose(images, vlm, levels, samples, db, out, domain, refresh, as_json) -> None:
    """Ask a vision-language model for the hierarchy of semantics in IMAGES."""
    from diffex.taxonomy.tree import to_nested
    from diffex.taxonomy.propose import propose_taxonomy

    result = propose_taxonomy(images, vlm, levels=levels, samples=samples, db=db, out=out, domain=domain, refresh=refresh)
    if as_json:
        _echo_json(result.to_dict())
        return
    if out is None:
        _echo_json(to_nested(result.taxonomy))
    summary = (f"{len(result.taxonomy.nodes)} nodes in {len(result.taxonomy.children(None))} groups from "
               f"{len(result.images)} image(s) with {result.model} ({'cached answer' if result.cached else 'asked'}; {result.status})")
    where = f"; wrote {out}" if out else ""
    stored = f"; version {result.taxonomy.taxonomy_id[:12]} in {db}" if db else ""
    click.echo(summary + where + stored, err=out is None)
    for note in result.repairs:
        click.echo(f"  repaired: {note}", err=out is None)


@taxonomy.command()
@db_required
@which_option
@click.option("--format", "fmt", type=click.Choice(("tree",) + FORMATS), default="tree", show_default=True,
              help="tree (indented text), or rows of nodes; json gives the version with its nodes and nested tree.")
def show(db, which, fmt) -> None:
    """Print a taxonomy version as a tree."""
    from diffex.taxonomy.curation import render_tree, show as show_version

    info = show_version(db, which)
    if fmt == "tree":
        click.echo(render_tree(info))
    elif fmt == "json":
        _echo_json(info)
    else:
        cols = ["path", "label", "depth", "prompt", "node_id", "parent_id"]
        click.echo(format_rows(cols, [[n[c] for c in cols] for n in info["nodes"]], fmt))


@taxonomy.command()
@db_required
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format.")
def versions(db, fmt) -> None:
    """List the taxonomy versions in DB, the newest first, with their lineage."""
    from diffex.taxonomy.curation import versions as list_versions

    cols = ["taxonomy_id", "name", "nodes", "created_at", "parent_taxonomy_id", "note", "source"]
    click.echo(format_rows(cols, [[r[c] for c in cols] for r in list_versions(db)], fmt))


@taxonomy.command()
@db_required
@which_option
@click.option("--parent", default=None, metavar="PATH", help="Where to add it (default: a new top-level group).")
@click.option("--prompt", default=None, help="Editing prompt, when it should differ from the label.")
@click.argument("label")
@json_option
def add(db, which, parent, prompt, label, as_json) -> None:
    """Add LABEL under --parent, as a new version."""
    from diffex.taxonomy.curation import add_node

    _report(add_node(db, label, parent=parent, prompt=prompt, taxonomy=which), as_json)


@taxonomy.command()
@db_required
@which_option
@click.argument("path")
@json_option
def remove(db, which, path, as_json) -> None:
    """Remove the node at PATH and everything below it, as a new version."""
    from diffex.taxonomy.curation import remove_node

    _report(remove_node(db, path, taxonomy=which), as_json)


@taxonomy.command()
@db_required
@which_option
@click.argument("path")
@click.argument("new_label")
@click.option("--prompt", default=None, help="Editing prompt (default: the new label).")
@json_option
def rename(db, which, path, new_label, prompt, as_json) -> None:
    """Rename the node at PATH to NEW_LABEL, as a new version."""
    from diffex.taxonomy.curation import rename_node

    _report(rename_node(db, path, new_label, prompt=prompt, taxonomy=which), as_json)


@taxonomy.command()
@db_required
@which_option
@click.argument("source")
@click.argument("into")
@json_option
def merge(db, which, source, into, as_json) -> None:
    """Merge node SOURCE into node INTO: SOURCE's children move under INTO, as a new version."""
    from diffex.taxonomy.curation import merge_nodes

    _report(merge_nodes(db, source, into, taxonomy=which), as_json)


@taxonomy.command()
@db_required
@which_option
@click.option("--out", type=click.Path(), default=None, help="File to write (default: print it).")
def export(db, which, out) -> None:
    """Write a version as paper-style JSON, usable with `diffex index --taxonomy`."""
    from diffex.taxonomy.curation import export as export_version

    data = export_version(db, out, which)
    if out is None:
        _echo_json(data)
    else:
        click.echo(f"wrote {out}")
