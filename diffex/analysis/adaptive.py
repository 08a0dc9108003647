"""The adaptive index schedule (`--samples auto`): which (node, image, seed) edits to draw next,
and when a node stops and why. Pure decisions: no store, no models; the indexer asks
`next_batch()`, runs the edits, and hands every measured delta back through `observe()`.

How it decides (docs/adaptive.md):
- Every node draws its samples from one fixed order of units (image, seed): seed 0 of every
  image (images in id order, a content-hash order), then seed 1 of every image, ... up to
  `max_seeds`. A node with k samples holds the first k units, so nodes share inversions and a
  dataset-level effect gets many images before any image gets a second seed.
- A node starts with `first` units and grows by `growth` per round while its interval still
  contains the answer's cut-off for some target class: the midpoint between the `top`-th and
  (`top`+1)-th strongest scored node (with fewer scored nodes than `top`: zero). The interval is
  for the node's effect on the run's images (what node_effects and a fixed run report): a
  two-stage t interval with the finite-population correction, so once every image is drawn only
  seed noise is left; and it is taken at 1 - alpha/looks (Bonferroni over the at most `looks`
  times a node's estimate changes), so early looks do not inflate the error. It stops 'in' or
  'out' once the interval clears the cut-off, 'close' once the interval's half-width is within
  `tolerance` (default 0.5) times the cut-off while still containing it (a tie: more samples
  would not split it), 'cap' at `max_seeds` seeds of every image, 'budget' when the edit budget
  is spent.
- A node with children is expanded once it has its first units, unless its upper bound cannot
  reach its level's beam cut-off (the midpoint between the level's `beam`-th and next node) for
  any class; a node that stops that way has its children recorded as 'pruned', never edited.
- Within a round, new nodes come first, then the most uncertain (interval widest around the
  cut-off), so a run cut short by its budget has spent it where the ranking was least sure.
  The budget only truncates that order: a larger budget draws a superset, so a re-run with a
  larger budget extends the same cache. Decisions use only the schedule's own draws, so the
  same inputs and budget give the same draws whatever else a store holds.
"""

from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from ..types import Node

STOP_REASONS = ("in", "out", "close", "cap", "budget", "pruned")


@dataclass(frozen=True)
class Draw:
    """One edit the schedule asks for: `node_id` edited in `direction` on `image_id` with `seed`."""

    node_id: str
    direction: str
    image_id: str
    seed: int


@dataclass
class _NodeState:
    node: Node
    k: int = 0  # units drawn (the first k of the unit order)
    stop: str | None = None
    expanded: bool = False
    # (direction, image_id, seed) -> {class: delta P} (None: the edit did not count: invalid or blocked)
    samples: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate:
    """A node's effect on one class in one direction, from the schedule's own draws."""

    mean: float
    low: float
    high: float
    n_images: int
    n_samples: int

    def abs_bounds(self) -> tuple[float, float]:
        """(lower, upper) bound of |effect|."""
        if self.low > 0:
            return self.low, self.high
        if self.high < 0:
            return -self.high, -self.low
        return 0.0, max(-self.low, self.high)


def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer `df` (the closed-form finite series)."""
    theta = math.atan(t / math.sqrt(df))
    c2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    if df % 2:  # odd: (2/pi)(theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        for j in range(1, (df - 1) // 2):
            term *= c2 * (2 * j) / (2 * j + 1)
            total += term
        return 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))
    for j in range(1, df // 2):  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term *= c2 * (2 * j - 1) / (2 * j)
        total += term
    return math.sin(theta) * total


@lru_cache(maxsize=4096)
def t_quantile(confidence: float, df: int) -> float:
    """Two-sided Student-t quantile: P(|T| < q) = confidence (exact series, bisection)."""
    if df < 1:
        return math.inf
    low, high = 0.0, 1.0
    while _t_central(high, df) < confidence:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_central(mid, df) < confidence else (low, mid)
    return high


class AdaptiveSchedule:
    """Decide the edits of an adaptive index run. `children(node_id or None)` lists a node's
    children in taxonomy order (None: the top level). `budget`: at most this many node edits
    in all (None: no limit), counted whether cached or not, so the draws depend only on the
    inputs and the budget. Raises ValueError for a bad knob."""

    def __init__(
        self,
        children: Callable[[str | None], Sequence[Node]],
        image_ids: Sequence[str],
        classes: Sequence[str],
        directions: Sequence[str] = ("add",),
        beam: int = 8,
        top: int = 10,
        max_seeds: int = 4,
        first: int = 8,
        growth: float = 1.5,
        confidence: float = 0.95,
        min_delta: float = 0.0,
        depth: int | None = None,
        budget: int | None = None,
        tolerance: float = 0.5,
    ):
        if not image_ids or not classes:
            raise ValueError("an adaptive schedule needs images and target classes")
        if max_seeds < 1 or first < 1 or growth <= 1 or not 0 < confidence < 1 or top < 1:
            raise ValueError("max_seeds, first, top >= 1, growth > 1, 0 < confidence < 1")
        self.children = children
        self.classes, self.directions = list(classes), list(directions)
        self.beam, self.top, self.first, self.growth = beam, top, first, growth
        self.confidence, self.min_delta, self.depth, self.budget = confidence, min_delta, depth, budget
        self.tolerance = tolerance
        images = sorted(set(image_ids))  # ids are content hashes: a fixed, input-order-free shuffle
        self.units = [(i, s) for s in range(max_seeds) for i in images]
        self.position = {u: p for p, u in enumerate(self.units)}
        self._memo: dict = {}  # estimates, cleared by observe()
        self.cap = len(self.units)
        self.n_images = len(images)
        # Bonferroni over looks: a node's interval is recomputed at most `looks` times (once per
        # unit count it reaches), each at 1 - alpha/looks, so all of them cover its effect
        # together with probability >= `confidence`, however early the schedule stops it
        ks, k = [], 0
        while k < self.cap:
            k = self._next_k(k)
            ks.append(k)
        self.looks = len(ks)
        self.look_confidence = 1 - (1 - confidence) / self.looks
        self.states: dict[str, _NodeState] = {}
        self.spent = 0  # node edits asked for so far
        self.out_of_budget = False
        self._open(None)

    # ------------------------------------------------------------------ the indexer's side
    def next_batch(self) -> list[Draw]:
        """The next round of edits to run (all at once; any order); [] when the schedule is done."""
        while True:
            self._settle()
            if self._expand():
                continue  # new nodes opened: settle again (they need their first units)
            break
        wanted = [s for s in self._ordered_active() if s.k < self.cap]
        batch: list[Draw] = []
        for state in wanted:
            k_next = self._next_k(state.k)
            units = self.units[state.k:k_next]
            room = None if self.budget is None else self.budget - self.spent - len(batch)
            per_unit = len(self.directions)
            if room is not None and len(units) * per_unit > room:
                units = units[: max(0, room // per_unit)]
                self.out_of_budget = True
            if not units:
                break
            state.k += len(units)
            batch.extend(Draw(state.node.node_id, d, i, s) for i, s in units for d in self.directions)
            if self.out_of_budget:
                break
        self.spent += len(batch)
        if not batch:
            self._finish()
        return batch

    def observe(self, samples: Iterable[tuple[str, str, str, int, str, float | None]]) -> None:
        """Record measured samples: (node_id, direction, image_id, seed, class_name, delta P or None).
        Samples of draws the schedule did not make are ignored (decisions use its own draws only)."""
        self._memo.clear()
        for node_id, direction, image_id, seed, cls, delta in samples:
            state = self.states.get(node_id)
            if state is None or self.position.get((image_id, seed), self.cap) >= state.k:
                continue
            per_class = state.samples.setdefault((direction, image_id, seed), {})
            if delta is None:
                state.samples[(direction, image_id, seed)] = None
            elif per_class is not None:
                per_class[cls] = float(delta)

    def records(self) -> list[dict]:
        """One row per (node, direction, class) the schedule reached (scored or pruned), in tree
        order: node_id, direction, class_name, n_images, n_samples, mean_delta_prob, ci_low,
        ci_high, stop_reason."""
        rows = []
        for state in self.states.values():
            for d in self.directions:
                for cls in self.classes:
                    e = self.estimate(state.node.node_id, d, cls)
                    rows.append({
                        "node_id": state.node.node_id, "direction": d, "class_name": cls,
                        "n_images": e.n_images if e else 0, "n_samples": e.n_samples if e else 0,
                        "mean_delta_prob": e.mean if e else None, "ci_low": e.low if e else None,
                        "ci_high": e.high if e else None, "stop_reason": state.stop or "budget",
                    })
        return rows

    def ranking(self, cls: str) -> list[tuple[str, float]]:
        """Scored nodes by |mean delta P(cls)| (the stronger direction), strongest first."""
        scored = [(s.node.node_id, s.node.path, self._strongest(s, cls)) for s in self.states.values() if s.k]
        scored = [(n, p, e.mean) for n, p, e in scored if e is not None]
        scored.sort(key=lambda t: (-abs(t[2]), t[1]))
        return [(n, m) for n, _, m in scored]

    # ------------------------------------------------------------------ estimates
    def estimate(self, node_id: str, direction: str, cls: str) -> Estimate | None:
        """Mean over images of the per-image mean delta, its t interval over images (None: no sample)."""
        key = (node_id, direction, cls)
        if key not in self._memo:
            self._memo[key] = self._estimate(node_id, direction, cls)
        return self._memo[key]

    def _estimate(self, node_id: str, direction: str, cls: str) -> Estimate | None:
        state = self.states[node_id]
        per_image: dict[str, list[float]] = {}
        n_samples = 0
        for (d, image_id, _), values in state.samples.items():
            if d == direction and values is not None and cls in values:
                per_image.setdefault(image_id, []).append(values[cls])
                n_samples += 1
        if not per_image:
            return None
        means = [sum(v) / len(v) for v in per_image.values()]
        n = len(means)
        mean = sum(means) / n
        if n < 2:
            return Estimate(mean, -1.0, 1.0, n, n_samples)
        between = sum((m - mean) ** 2 for m in means) / (n - 1)
        # the answer is the effect on this run's images (what node_effects and a fixed run
        # report), so a finite population: drawn images count fully, undrawn ones by sampling.
        # Two-stage variance: (1 - f) s_b^2 / n for the images, f * sum(s_w^2 / k_i) / n^2 for
        # the seeds within them; s_w^2 pooled over images with 2+ seeds, else s_b^2 (an upper
        # bound: it includes the seed noise), so the interval never shrinks on a guess
        f = n / self.n_images
        df_w = sum(len(v) - 1 for v in per_image.values())
        within = (sum((x - sum(v) / len(v)) ** 2 for v in per_image.values() for x in v) / df_w
                  if df_w else between)
        var = (1 - f) * between / n + f * sum(within / len(v) for v in per_image.values()) / n**2
        half = t_quantile(self.look_confidence, n - 1) * math.sqrt(max(0.0, var))
        return Estimate(mean, max(-1.0, mean - half), min(1.0, mean + half), n, n_samples)

    def _strongest(self, state: _NodeState, cls: str) -> Estimate | None:
        found = [e for d in self.directions if (e := self.estimate(state.node.node_id, d, cls)) is not None]
        return max(found, key=lambda e: abs(e.mean)) if found else None

    # ------------------------------------------------------------------ decisions
    def _cut(self, states: Sequence[_NodeState], cls: str, size: int) -> float:
        """The midpoint between the `size`-th and next strongest |effect| among `states` (with no
        more than `size` of them: min_delta, i.e. zero by default)."""
        strengths = sorted((abs(e.mean) for s in states if (e := self._strongest(s, cls)) is not None), reverse=True)
        if size <= 0 or len(strengths) <= size:
            return self.min_delta
        return max(self.min_delta, (strengths[size - 1] + strengths[size]) / 2)

    def _side(self, state: _NodeState, cls: str, cut: float) -> str | None:
        """'in' or 'out' when the node's |effect| interval clears `cut`, else None."""
        e = self._strongest(state, cls)
        if e is None:
            return None
        lo, hi = e.abs_bounds()
        if lo > cut:
            return "in"
        if hi < cut or (cut == 0 and hi == 0):
            return "out"
        if (e.high - e.low) / 2 <= self.tolerance * cut and e.n_images >= 2:
            return "close"  # known to within the tolerance: a tie with the cut-off, more samples will not split it
        return None

    def _settle(self) -> None:
        """Stop every active node whose interval clears the answer's cut-off for every class."""
        scored = [s for s in self.states.values() if s.k]
        cuts = {cls: self._cut(scored, cls, self.top) for cls in self.classes}
        for state in scored:
            if state.stop in ("pruned",):
                continue
            sides = [self._side(state, cls, cuts[cls]) for cls in self.classes]
            if all(sides) and state.k >= min(self.first, self.cap):
                state.stop = "in" if "in" in sides else ("close" if "close" in sides else "out")
            elif state.k >= self.cap:
                state.stop = "cap"
            elif state.stop in ("in", "out", "close"):
                state.stop = None  # a stronger node arrived and moved the cut-off: sample again

    def _expand(self) -> bool:
        """Open the children of nodes with their first units that can still enter their level's
        beam; prune (never edit) the children of a stopped node that cannot."""
        opened = False
        for state in list(self.states.values()):
            node = state.node
            if state.expanded or state.stop == "pruned" or state.k < min(self.first, self.cap):
                continue
            kids = self.children(node.node_id)
            if not kids or (self.depth is not None and node.depth >= self.depth):
                state.expanded = True
                continue
            level = [s for s in self.states.values() if s.node.depth == node.depth and s.k]
            # with room in the level's beam every node is kept (as select_beam keeps it), even a zero one
            roomy = self.beam <= 0 or (len(level) <= self.beam and self.min_delta <= 0)
            reachable = roomy or any(
                self._side(state, cls, self._cut(level, cls, self.beam)) != "out" for cls in self.classes)
            if reachable:
                state.expanded = True
                self._open(node.node_id)
                opened = True
            elif state.stop is not None:  # clearly below the beam, and it will not be sampled again
                state.expanded = True
                self._prune(node.node_id)
        return opened

    def _open(self, parent_id: str | None) -> None:
        for child in self.children(parent_id):
            if self.depth is None or child.depth <= self.depth:
                self.states.setdefault(child.node_id, _NodeState(child))

    def _prune(self, parent_id: str) -> None:
        for child in self.children(parent_id):
            if self.depth is None or child.depth <= self.depth:
                self.states.setdefault(child.node_id, _NodeState(child, stop="pruned", expanded=True))
                self._prune(child.node_id)

    def _ordered_active(self) -> list[_NodeState]:
        """Nodes still sampling: new ones first (shallow first), then the most uncertain."""
        active = [s for s in self.states.values() if s.stop is None]
        scored = [s for s in self.states.values() if s.k]
        cuts = {cls: self._cut(scored, cls, self.top) for cls in self.classes}

        def uncertainty(state: _NodeState) -> float:
            # how many half-widths the estimate sits from the cut-off (smaller: less sure)
            worst = math.inf
            for cls in self.classes:
                e = self._strongest(state, cls)
                if e is None:
                    return -math.inf
                half = max(1e-12, (e.high - e.low) / 2)
                worst = min(worst, abs(abs(e.mean) - cuts[cls]) / half)
            return worst

        return sorted(active, key=lambda s: (s.k > 0, uncertainty(s) if s.k else 0.0, s.node.path))

    def _next_k(self, k: int) -> int:
        if k < self.first:
            return min(self.cap, self.first)
        return min(self.cap, max(k + 1, math.ceil(k * self.growth)))

    def _finish(self) -> None:
        for state in self.states.values():
            if state.stop is None:
                state.stop = "budget" if self.out_of_budget else ("cap" if state.k >= self.cap else "budget")
