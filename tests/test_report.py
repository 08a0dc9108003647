"""`diffex report` (issue 14): the demo's report opened from a local file in a real headless
Chromium (tests/browser.py drives it over the DevTools protocol): no console errors, the tree
and its bars render, every image loads, a node expands, strips page, the screenshot is sane."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image, ImageStat

from diffex.store import Store

from browser import Chromium, install_chromium  # noqa: E402 (tests/ is on sys.path under pytest rootdir conftest)


@pytest.fixture(scope="session")
def chromium():
    path, why = install_chromium()
    if path is None:
        pytest.skip(f"no headless Chromium: {why}")
    return path


def test_demo_prints_where_its_report_is(demo_v1_v2):
    out = demo_v1_v2["demo"].output
    assert "Report: file://" in out
    assert (demo_v1_v2["tmp"] / "demo-report.html").stat().st_size > 10_000


def test_report_renders_in_headless_chromium(demo_v1_v2, chromium, tmp_path, cli_run):
    db = demo_v1_v2["db"]
    out = tmp_path / "report.html"
    result = cli_run("report", "--db", db, "--class", "old", "--classifier", "demo:v2", "--compare", "demo:v1", "--out", out)
    assert result.exit_code == 0, result.output
    size = out.stat().st_size
    assert 20_000 < size < 3_000_000, size  # thumbnails, not full-size PNGs
    with Store.open(db, read_only=True) as store:
        n_nodes = len(store.taxonomy_node_rows(store.resolve_taxonomy()["taxonomy_id"]))

    with Chromium(chromium, tmp_path) as page:
        page.open(out.resolve().as_uri())
        js = page.evaluate
        assert js("document.title") == "diffex report: P(old) under demo:v2"
        # the tree: every node, top-level groups visible with bars of non-zero width
        assert js("document.querySelectorAll('.tree .node').length") == n_nodes
        widths = js("Array.from(document.querySelectorAll('.tree > .node > .row .bar'))"
                    ".map(b => b.getBoundingClientRect().width)")
        assert len(widths) >= 6 and all(w > 0 for w in widths)
        # expanding a node shows its children
        child = "document.querySelector('.tree details[data-label=\"headwear\"] > .children > .node .row')"
        # (a closed <details> hides its content with content-visibility: checkVisibility() knows)
        assert js(f"{child}.checkVisibility()") is False
        js("document.querySelector('.tree details[data-label=\"headwear\"] > summary').click()")
        assert js(f"{child}.checkVisibility()") is True and js(f"{child}.getBoundingClientRect().height") > 0
        assert js("document.querySelector('.tree details[data-label=\"headwear\"]').open") is True
        # the strongest strip is top hat, with its images lazily loaded in view
        assert js("document.querySelector('#strips .strip h3').textContent").startswith("top hat")
        js("document.querySelector('#strips').scrollIntoView()")
        deadline = time.monotonic() + 10
        while js("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length") == 0:
            assert time.monotonic() < deadline, "no thumbnail loaded after scrolling to the strips"
            time.sleep(0.1)
        # paging: the first strip's second page appears on "show more"
        hidden = "document.querySelectorAll('#strips .strip')[0].querySelectorAll('tr.strip-row[hidden]').length"
        before = js(hidden)
        if before:
            js("document.querySelector('#strips .strip button.more').click()")
            assert js(hidden) < before
        # every image loads
        js("window.diffexReport.loadAll()")
        n_images = js("Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))"
                      ".then(() => document.images.length)")
        broken = js("Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.alt)")
        assert n_images > 50 and broken == []
        assert js("window.diffexReport.thumbnails") == js("new Set(Array.from(document.images).map(i => i.dataset.k)).size")
        # the comparison ranks the planted changes first (8 images are too few for BH significance)
        ranked = js("Array.from(document.querySelectorAll('#compare tbody tr td:first-child')).map(t => t.textContent)")
        assert len(ranked) == n_nodes and "top hat" in ranked[:3]
        # filtering the tree keeps the match and its ancestors
        js("const f = document.getElementById('filter'); f.value = 'goatee'; f.dispatchEvent(new Event('input'))")
        assert js("document.querySelector('.tree [data-label=\"goatee\"] .row').checkVisibility()") is True
        assert js("document.querySelector('.tree [data-label=\"skin tone\"]').checkVisibility()") is False
        js("window.scrollTo(0, 0)")
        shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        assert page.errors == []
    assert shot.width >= 800 and shot.height >= 500
    spread = ImageStat.Stat(shot).stddev
    assert max(spread) > 20 and len(shot.getcolors(1 << 20)) > 50  # not blank


def test_report_errors_are_one_line(demo_v1_v2, tmp_path, cli_run):
    db = demo_v1_v2["db"]
    bad_class = cli_run("report", "--db", db, "--class", "ancient", "--out", tmp_path / "r.html")
    assert bad_class.exit_code == 1 and "unknown class 'ancient'" in bad_class.output
    same = cli_run("report", "--db", db, "--class", "old", "--classifier", "demo:v1", "--compare", "demo:v1",
                   "--out", tmp_path / "r.html")
    assert same.exit_code == 2 and "same classifier" in same.output
    assert not (tmp_path / "r.html").exists()
