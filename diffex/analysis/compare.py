"""What changed between two classifier versions: every node's effect under A and under B,
PAIRED over the very same cached edits (each edit and its baseline scored by both), with a
permutation test over images and a Benjamini-Hochberg correction over the nodes compared.

Notebook use::

    from diffex.compare import compare_classifiers
    result = compare_classifiers("data/demo.duckdb", "demo:v1", "demo:v2", "old")
    [r.node for r in result.rows if r.significant]

The statistics, and why:
- The unit is the image (as for the confidence intervals of `node_effects`): per image, the
  difference d = mean over its edits of (delta P under B - delta P under A); `diff` is the
  mean of d over images, so `diff == effect_b - effect_a` exactly.
- ci_low, ci_high: 95% t interval of mean(d), clipped to [-2, 2], the range a difference of
  two changes of probability can take (each delta P is in [-1, 1]).
- p_permutation: two-sided paired sign-flip permutation test of mean(d) (under "no change"
  every image's d is as likely to have either sign). Exact enumeration up to 16 images,
  otherwise `n_permutations` seeded Monte Carlo flips, p = (1 + #{|mean*| >= |mean|}) / (1 + n).
- p_permutation_bh: those p-values Benjamini-Hochberg adjusted over every row returned
  (nodes x classes).
- significant: p_permutation_bh < alpha AND |diff| >= min_diff. Two versions of a network
  differ a little everywhere; with enough images a consistent 0.001 shift is "significant"
  and means nothing, so a change must also be large enough to matter (default 2 points of P).

Two tests, named apart: this module (and `diffex compare`) runs the permutation test; the
SQL macro `compare_classifiers` (schema/views.sql) runs a paired t-test with an approximate
t distribution instead (SQL cannot permute). Their p-values differ (on the demo, in the
second decimal for goatee and top hat: scripts/readme_numbers.py prints both); their flags
rarely do. Both used to be called `p_value` / `p_adjusted`, which made them look like one
test disagreeing with itself; `NodeChange.p_value` / `.p_adjusted` remain as aliases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DiffexError, UsageError
from ..store.core import Store
from ..types import DIRECTIONS

EXACT_MAX_IMAGES = 16  # 2**16 sign patterns: exact enumeration is cheaper than sampling


@dataclass(frozen=True)
class NodeChange:
    """One node's effect on one class under classifiers A and B (effects: mean delta P)."""

    node: str
    parent: str | None
    depth: int
    path: str
    direction: str
    class_name: str
    effect_a: float
    effect_b: float
    diff: float  # effect_b - effect_a
    ci_low: float | None  # 95% t interval of diff over images, within [-2, 2]
    ci_high: float | None
    p_permutation: float | None  # paired sign-flip permutation test; None with a single image
    p_permutation_bh: float | None  # Benjamini-Hochberg adjusted over the rows compared
    significant: bool
    n_images: int
    n_edits: int

    @property
    def p_value(self) -> float | None:
        """Old name of `p_permutation`."""
        return self.p_permutation

    @property
    def p_adjusted(self) -> float | None:
        """Old name of `p_permutation_bh`."""
        return self.p_permutation_bh


@dataclass(frozen=True)
class Comparison:
    classifier_a: dict[str, Any]
    classifier_b: dict[str, Any]
    classes: tuple[str, ...]
    direction: str
    alpha: float
    min_diff: float
    method: str
    rows: tuple[NodeChange, ...] = field(default=())

    @property
    def changed(self) -> list[NodeChange]:
        return [r for r in self.rows if r.significant]

    def dicts(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rows]


def sign_flip_p_value(d: np.ndarray, n_permutations: int = 9999, seed: int = 0) -> float:
    """Two-sided paired sign-flip permutation p-value of mean(d) (see module docstring)."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    obs = abs(d.mean())
    if n == 0:
        raise ValueError("no paired differences")
    if obs == 0:
        return 1.0
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))  # equal means up to rounding count as ties
    if n <= EXACT_MAX_IMAGES:
        signs = np.array(list(product((1.0, -1.0), repeat=n)))
        return float(np.mean(np.abs(signs @ d) / n >= obs - tol))
    # seeded by (seed, n) only: a node's p-value never depends on which other nodes are compared
    rng = np.random.default_rng([seed, n])
    signs = rng.choice((-1.0, 1.0), size=(n_permutations, n))
    hits = int(np.sum(np.abs(signs @ d) / n >= obs - tol))
    return (1 + hits) / (1 + n_permutations)


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """BH-adjusted p-values (step-up; None stays None and does not count as a test)."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    if not idx:
        return out
    p = np.array([p_values[i] for i in idx], dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    for rank, j in enumerate(order):
        out[idx[j]] = float(adjusted[rank])
    return out


def mean_interval(values: np.ndarray, low: float, high: float) -> tuple[float, float] | None:
    """95% t interval of the mean of `values` (None for fewer than two), clipped to the range
    [low, high] the quantity can take: a symmetric interval over a few images can reach past
    it (an 8-image effect showed ci_high 1.24 for a change of probability)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2:
        return None
    half = _t975(n - 1) * values.std(ddof=1) / np.sqrt(n)
    mean = float(values.mean())
    return max(low, mean - half), min(high, mean + half)


def _t975(df: int) -> float:
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
    if df <= 10:
        return table[df - 1]
    z = 1.959964  # same Cornish-Fisher expansion as the SQL macro t975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df * df)


def compare_classifiers(
    db: "str | Path | Store",
    classifier_a: str,
    classifier_b: str,
    class_name: str | None = None,
    *,
    direction: str = "add",
    alpha: float = 0.05,
    min_diff: float = 0.02,
    n_permutations: int = 9999,
    seed: int = 0,
) -> Comparison:
    """Compare two classifiers (id, id prefix, name or spec) stored in `db` on every node,
    over the edits both have scored. `class_name` None compares every class both have.
    Raises DiffexError on unknown classifiers/classes or when the two share no scored edits."""
    # 1. check inputs
    if direction not in DIRECTIONS:
        raise UsageError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    if not 0 < alpha < 1:
        raise UsageError(f"alpha must be between 0 and 1, got {alpha}")
    if min_diff < 0:
        raise UsageError(f"min_diff must be 0 or more, got {min_diff}")
    if n_permutations < 99:
        raise UsageError(f"n_permutations must be at least 99, got {n_permutations}")
    owns = not isinstance(db, Store)
    store = Store.open(db, read_only=True) if owns else db
    try:
        a = store.resolve_classifier(classifier_a)
        b = store.resolve_classifier(classifier_b)
        if a["classifier_id"] == b["classifier_id"]:
            raise DiffexError(
                f"{classifier_a!r} and {classifier_b!r} are the same classifier (same weights and preprocessing); "
                "compare two different versions"
            )
        if class_name is not None:
            store.check_class(class_name, a["classifier_id"])
            store.check_class(class_name, b["classifier_id"])
            classes = (class_name,)
        else:
            classes = tuple(c for c in a["class_names"] if c in set(b["class_names"]))
            if not classes:
                raise DiffexError(f"{a['spec'] or a['name']} and {b['spec'] or b['name']} share no class name")
        # 2. per (node, class, image) effects under A and B over the same edits
        rows = store.paired_image_effects(a["classifier_id"], b["classifier_id"], class_name, direction)
    finally:
        if owns:
            store.close()
    rows = [r for r in rows if r["class_name"] in classes]
    if not rows:
        raise DiffexError(
            f"no {direction!r} edits were scored by both {a['spec'] or a['name']} and {b['spec'] or b['name']}; "
            "index the same images and taxonomy with each (only classifier passes run, no edits)"
        )
    # 3. per node: effects, paired difference, CI, permutation p-value
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["path"], r["class_name"]), []).append(r)
    partial = []
    for (_, cls), items in sorted(groups.items()):
        d = np.array([it["diff"] for it in items])
        n = len(d)
        first = items[0]
        # a difference of two changes of probability (each in [-1, 1]) lies in [-2, 2]
        interval = mean_interval(d, -2.0, 2.0)
        partial.append(dict(
            node=first["node"], parent=first["parent"], depth=int(first["depth"]), path=first["path"],
            direction=direction, class_name=cls,
            effect_a=float(np.mean([it["effect_a"] for it in items])),
            effect_b=float(np.mean([it["effect_b"] for it in items])),
            diff=float(d.mean()),
            ci_low=None if interval is None else interval[0],
            ci_high=None if interval is None else interval[1],
            p_permutation=sign_flip_p_value(d, n_permutations, seed) if n > 1 else None,
            n_images=n, n_edits=int(sum(it["n_edits"] for it in items)),
        ))
    # 4. multiple testing over everything compared, then the flag
    adjusted = benjamini_hochberg([p["p_permutation"] for p in partial])
    changes = [
        NodeChange(**p, p_permutation_bh=q, significant=bool(q is not None and q < alpha and abs(p["diff"]) >= min_diff))
        for p, q in zip(partial, adjusted)
    ]
    changes.sort(key=lambda c: (not c.significant, -abs(c.diff), c.path, c.class_name))
    method = (
        f"paired sign-flip permutation test over images ({'exact' if max(c.n_images for c in changes) <= EXACT_MAX_IMAGES else f'{n_permutations} seeded permutations'}), "
        f"Benjamini-Hochberg over {sum(p is not None for p in adjusted)} tests; "
        f"significant = p_permutation_bh < {alpha} and |diff| >= {min_diff}"
    )
    return Comparison(
        classifier_a={k: a[k] for k in ("classifier_id", "name", "spec")},
        classifier_b={k: b[k] for k in ("classifier_id", "name", "spec")},
        classes=classes, direction=direction, alpha=alpha, min_diff=min_diff, method=method, rows=tuple(changes),
    )
