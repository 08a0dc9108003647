"""ReportData -> one self-contained HTML file: the CSS and JS (assets/) and every thumbnail
are inlined, so it works from file:// and offline. Each thumbnail is embedded once (a JSON map
of data URIs) and set on its <img> only when the image scrolls into view or its page is shown,
so 500 nodes x 200 images stays light to open; the tree is collapsible <details>."""

from __future__ import annotations

import json
from html import escape
from importlib import resources
from pathlib import Path

from .data import EditCell, Picture, ReportData, StripRow
from .thumbs import Thumbnails

PAGE = 6  # strip rows shown per "show more"
COMPARE_SHOWN = 25  # comparison rows shown before the rest fold away


def _asset(name: str) -> str:
    return resources.files("diffex.report").joinpath("assets", name).read_text(encoding="utf-8")


def _num(x: float | None, signed: bool = True, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


class _Renderer:
    def __init__(self, data: ReportData, thumbs: Thumbnails):
        self.data = data
        self.thumbs = thumbs
        bounds = [abs(v) for n in data.nodes for e in n["effects"].values()
                  for v in (e["ci_low"], e["ci_high"], e["mean_delta_prob"]) if v is not None]
        self.scale = max(bounds + [0.05])  # the bar of the largest |CI bound| spans half the cell

    # -- pictures
    def picture(self, pic: Picture, caption: str, extra: str = "", title: str = "") -> str:
        cls = f"thumb {extra}".strip()
        if pic.path is not None and pic.missing is None and self.thumbs.add(pic.key, pic.path):
            inner = f'<img data-k="{escape(pic.key)}" alt="{escape(title or caption)}" width="96" height="96">'
        else:
            inner = f'<div class="placeholder">{escape(pic.missing or "unreadable file")}</div>'
            cls += " missing"
        return f'<figure class="{cls}" title="{escape(title)}">{inner}<figcaption>{caption}</figcaption></figure>'

    def edit_cell(self, c: EditCell, owner: str | None = None) -> str:
        what = f"{owner}: " if owner else ""
        what += f"{c.direction} s{c.seed}"
        if c.status == "blocked":
            return self.picture(c.picture, f"{escape(what)}<br>blocked", "blocked", "blocked: not measured")
        if c.status != "ok":
            return self.picture(c.picture, f"{escape(what)}<br>{escape(c.status)}", "failed", c.status)
        cap = f"{escape(what)}<br>P {_num(c.prob, False)} &Delta;{_num(c.delta)}"
        if not c.valid:
            return self.picture(c.picture, cap + "<br><b>invalid</b>", "invalid",
                                "invalid: the concept did not appear; left out of the effect")
        return self.picture(c.picture, cap, "", f"{what}: P={_num(c.prob, False)}")

    def strip_row(self, row: StripRow, page: int, owners: tuple[str, ...] | None = None) -> str:
        hidden = " hidden" if page > 0 else ""
        cells = [self.picture(row.original, f"original<br>P {_num(row.prob_original, False)}", "original", row.name),
                 self.picture(row.baseline, f"baseline<br>P {_num(row.prob_baseline, False)}", "baseline",
                              "null-edit baseline: the editor's reconstruction")]
        cells += [self.edit_cell(c, owners[i] if owners else None) for i, c in enumerate(row.edits)]
        if not row.edits:
            cells.append('<div class="placeholder">no edits stored</div>')
        return (f'<tr class="strip-row" data-page="{page}"{hidden}><th scope="row">{escape(row.name)}'
                f'<br><span class="eff">mean &Delta; {_num(row.effect)}</span></th>'
                f'<td><div class="cells">{"".join(cells)}</div></td></tr>')

    # -- the tree
    def bar(self, eff: dict | None, direction: str) -> str:
        if eff is None or eff["mean_delta_prob"] is None:
            return '<span class="bar-cell empty" title="not measured"></span>'
        pos = lambda v: 50 + 50 * max(-1.0, min(1.0, v / self.scale))  # noqa: E731
        m = eff["mean_delta_prob"]
        left, right = sorted((pos(0), pos(m)))
        lo, hi = eff["ci_low"], eff["ci_high"]
        ci = "" if lo is None or hi is None else (
            f'<span class="ci" style="left:{pos(lo):.2f}%;width:{max(0.3, pos(hi) - pos(lo)):.2f}%"></span>')
        sign = "up" if m > 0 else "down"
        return (f'<span class="bar-cell {direction}" title="{direction}: mean {_num(m)} CI [{_num(lo)}, {_num(hi)}]">'
                f'<span class="axis"></span><span class="bar {sign}" style="left:{left:.2f}%;width:{max(0.3, right - left):.2f}%">'
                f'</span>{ci}</span>')

    def node_row(self, n: dict) -> str:
        parts = [f'<span class="label">{escape(n["label"])}</span>']
        for d in self.data.directions:
            e = n["effects"].get(d)
            parts.append(self.bar(e, d))
            if e is None or e["mean_delta_prob"] is None:
                parts.append('<span class="num">n/a</span><span class="ci-text"></span>')
            else:
                parts.append(f'<span class="num">{_num(e["mean_delta_prob"])}</span>'
                             f'<span class="ci-text">[{_num(e["ci_low"])}, {_num(e["ci_high"])}]</span>')
        e0 = next(iter(n["effects"].values()), None)
        counts = (f'{e0["n_images"]} img &middot; {e0["n_edits"]} edits &middot; {e0["n_invalid"]} invalid'
                  if e0 else "not indexed")
        counts += f' &middot; {n["n_blocked"]} blocked' + (f' &middot; {n["n_failed"]} failed' if n["n_failed"] else "")
        strip = any(s.node_id == n["node_id"] for s in self.data.strips)
        link = f' <a class="to-strip" href="#strip-{escape(n["node_id"])}">images</a>' if strip else ""
        return "".join(parts) + f'<span class="counts">{counts}{link}</span>'

    def tree(self) -> str:
        children: dict[str | None, list[dict]] = {}
        for n in self.data.nodes:
            children.setdefault(n["parent_id"], []).append(n)
        ids = {n["node_id"] for n in self.data.nodes}

        def walk(n: dict) -> str:
            kids = children.get(n["node_id"], [])
            attrs = f'data-node="{escape(n["node_id"])}" data-depth="{n["depth"]}" data-label="{escape(n["label"])}"'
            if not kids:
                return f'<div class="node leaf" {attrs}><div class="row">{self.node_row(n)}</div></div>'
            inner = "".join(walk(k) for k in kids)
            return (f'<details class="node" {attrs}><summary class="row">{self.node_row(n)}</summary>'
                    f'<div class="children">{inner}</div></details>')

        roots = [n for n in self.data.nodes if n["parent_id"] not in ids]
        return "".join(walk(n) for n in roots)

    # -- sections
    def strips(self) -> str:
        out = []
        for s in self.data.strips:
            rows = "".join(self.strip_row(r, i // PAGE) for i, r in enumerate(s.rows))
            more = (f'<button class="more" data-shown="1">Show {PAGE} more of {len(s.rows)} images</button>'
                    if len(s.rows) > PAGE else "")
            out.append(f'<article class="strip" id="strip-{escape(s.node_id)}"><h3>{escape(s.label)} '
                       f'<small>{escape(s.path)}</small> <span class="eff">mean &Delta;P {_num(s.effect)}</span></h3>'
                       f'<table class="strip-table"><tbody>{rows}</tbody></table>{more}</article>')
        return "".join(out) or "<p>No node has a measured effect yet.</p>"

    def explanations(self) -> str:
        out = []
        for ex in self.data.explanations:
            table = "".join(f'<tr><td>{r["rank"]}</td><td title="{escape(r["path"])}">{escape(r["node"])}</td>'
                            f'<td class="num">{_num(r["mean_delta_prob"])}</td><td>{r["n_edits"]}</td></tr>'
                            for r in ex.nodes)
            out.append(f'<article class="explain"><h3>{escape(ex.row.name)} <small>{escape(ex.row.image_id[:12])}</small></h3>'
                       f'<table class="strip-table">{self.strip_row(ex.row, 0, ex.edit_nodes)}</table>'
                       f'<table class="ranked"><thead><tr><th>rank</th><th>node</th><th>mean &Delta;P</th><th>edits</th></tr>'
                       f'</thead><tbody>{table}</tbody></table></article>')
        return "".join(out) or "<p>No image has a measured effect yet.</p>"

    def comparison(self) -> str:
        c = self.data.comparison
        if c is None:
            return ""
        rows = []
        for i, r in enumerate(c["rows"]):
            diff_eff = {"mean_delta_prob": r["diff"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}
            flag = '<span class="badge sig">changed</span>' if r["significant"] else ""
            rows.append(f'<tr{" class=sig" if r["significant"] else ""}><td title="{escape(r["path"])}">{escape(r["node"])}</td>'
                        f'<td class="num">{_num(r["effect_a"])}</td><td class="num">{_num(r["effect_b"])}</td>'
                        f'<td>{self.bar(diff_eff, "diff")}</td><td class="num">{_num(r["diff"])}</td>'
                        f'<td>[{_num(r["ci_low"])}, {_num(r["ci_high"])}]</td>'
                        f'<td class="num">{_num(r["p_permutation_bh"], False)}</td><td>{r["n_images"]}</td><td>{flag}</td></tr>')
        head = ("<thead><tr><th>node</th><th>A</th><th>B</th><th>B - A</th><th></th><th>95% CI</th>"
                "<th>p (BH)</th><th>images</th><th></th></tr></thead>")
        shown, rest = rows[:COMPARE_SHOWN], rows[COMPARE_SHOWN:]
        more = (f'<details><summary>{len(rest)} more nodes</summary><table class="compare">{head}<tbody>{"".join(rest)}'
                f'</tbody></table></details>') if rest else ""
        return (f'<section id="compare"><h2>Comparison: A = {escape(c["a"])}, B = {escape(c["b"])}</h2>'
                f'<p>{c["n_changed"]} of {len(c["rows"])} node effects changed ({escape(c["method"])}).</p>'
                f'<table class="compare">{head}<tbody>{"".join(shown)}</tbody></table>{more}</section>')

    def provenance(self) -> str:
        m = self.data.meta
        items = [("store", m["db"]), ("classifier", f'{m["classifier"]} ({m["classifier_id"][:12]})'),
                 ("compared with", m["compare"]), ("editor", m["editor"]), ("taxonomy", m["taxonomy"]),
                 ("directions", ", ".join(m["directions"])),
                 ("counts", ", ".join(f"{k} {v}" for k, v in m["counts"].items())),
                 ("generated", m["generated_at"]), ("diffex", m["diffex_version"]),
                 ("how", "written from the store alone: no model loaded, nothing recomputed")]
        return "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in items if v is not None)

    def page(self) -> str:
        m = self.data.meta
        cls = escape(m["class_name"])
        body = (
            f'<header><h1>What moves P({cls}) &mdash; {escape(m["classifier"])}</h1>'
            f'<p class="sub">Mean change of P({cls}) when a semantic is edited into each image, against the image\'s '
            f'null-edit baseline, with its 95% CI over images. Invalid edits (the concept never appeared) and blocked '
            f'edits are shown as such and never averaged in.</p>'
            f'<nav><a href="#tree">Hierarchy</a> <a href="#strips">Image strips</a> <a href="#images">Images</a>'
            + (' <a href="#compare">Comparison</a>' if self.data.comparison else "")
            + ' <a href="#provenance">Provenance</a></nav></header>'
            f'<section id="tree"><h2>Semantic hierarchy</h2><div class="tools">'
            f'<input id="filter" type="search" placeholder="Filter nodes" aria-label="Filter nodes">'
            f'<button id="expand-all">Expand all</button><button id="collapse-all">Collapse all</button>'
            f'<span class="legend">bars: mean &Delta;P({cls}) '
            + " | ".join(escape(d) for d in self.data.directions)
            + f', whisker: 95% CI; full half-width = {self.scale:.3f}</span></div>'
            f'<div class="tree">{self.tree()}</div></section>'
            f'<section id="strips"><h2>Image strips of the strongest semantics</h2>{self.strips()}</section>'
            f'<section id="images"><h2>Per-image explanations (strongest first)</h2>{self.explanations()}</section>'
            + self.comparison()
            + f'<section id="provenance"><h2>Provenance</h2><dl>{self.provenance()}</dl></section>'
        )
        thumbs = json.dumps(self.thumbs.uris(), separators=(",", ":")).replace("</", "<\\/")
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>diffex report: P({cls}) under {escape(m["classifier"])}</title>'
            f'<style>{_asset("report.css")}</style></head><body>{body}'
            f'<script type="application/json" id="thumbs">{thumbs}</script>'
            f'<script>{_asset("report.js")}</script></body></html>'
        )


def render(data: ReportData, thumbs: Thumbnails | None = None) -> tuple[str, Thumbnails]:
    """The report's HTML and the thumbnails it embeds."""
    thumbs = thumbs or Thumbnails()
    return _Renderer(data, thumbs).page(), thumbs


def write_html(data: ReportData, out: "str | Path") -> tuple[Path, Thumbnails]:
    """Render and write atomically (a half-written report never replaces a good one)."""
    import os
    import tempfile

    html, thumbs = render(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out, thumbs
