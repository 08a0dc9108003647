"""`diffex report`: one self-contained HTML page of what moves a class, written from the store
alone (no model loaded, nothing recomputed). data.py reads the store, thumbs.py makes the
thumbnails, render.py writes the page; assets/ holds its inline CSS and JS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import ReportData, gather
from .render import render, write_html


@dataclass(frozen=True)
class ReportResult:
    path: Path
    bytes: int  # size of the HTML file
    thumbnails: int  # distinct pictures embedded
    thumbnail_bytes: int  # their encoded size before base64
    nodes: int
    strips: int
    explanations: int


def write_report(db: "str | Path", out: "str | Path", class_name: str, classifier: str | None = None,
                 compare: str | None = None, taxonomy: str | None = None) -> ReportResult:
    """Write the report of `class_name` under `classifier` (default: the store's default) to
    `out`; with `compare`, also how that earlier classifier differs. Raises DiffexError."""
    data = gather(db, class_name, classifier, compare=compare, taxonomy=taxonomy)
    path, thumbs = write_html(data, out)
    return ReportResult(path, path.stat().st_size, len(thumbs), thumbs.bytes, len(data.nodes),
                        len(data.strips), len(data.explanations))


__all__ = ["ReportData", "ReportResult", "gather", "render", "write_html", "write_report"]
