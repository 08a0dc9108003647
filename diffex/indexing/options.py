"""What an index run is asked to do: `IndexOptions`, checked once, before anything is read or
loaded. Messages name the options as the library does (`samples`); the CLI renders them as its
flags (`--samples`) through errors.OptionError."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import DiffexError, OptionError
from ..types import DIRECTIONS


@dataclass
class IndexOptions:
    """The knobs of `run_index` besides its inputs (db, images, taxonomy, classifier, editor).

    beam: nodes kept per class at each level (0 = expand the whole tree); samples: edit seeds per
    (image, node); depth: deepest level to score (None = all); min_delta / require_gain: which
    nodes the beam expands; classes: target classes of the beam search (default all; every class
    is scored regardless); directions: 'add' and/or 'remove'. embedder: an embedder SPEC (`clip:MODEL`,
    `demo`) to store CLIP vectors and judge every edit's validity; validity_threshold overrides
    the embedder's own; text_templates: how concepts become text (default from the taxonomy's
    domain). joint: after the walk, combine `joint` (2..5) semantics per target class among the
    `joint_top` (default max(beam, 4)) strongest scored nodes of that class."""

    beam: int = 8
    samples: int = 4
    depth: int | None = None
    min_delta: float = 0.0
    classes: Sequence[str] | None = None
    directions: Sequence[str] = ("add",)
    require_gain: bool = False
    cache_dir: "str | Path | None" = None
    progress: bool = False
    embedder: Any = None  # str | Embedder | None
    validity_threshold: float | None = None
    text_templates: Any = None  # TextTemplates | None
    joint: int = 0
    joint_top: int | None = None
    # Ray (docs/scale-out.md): "local" or a cluster address; actors (default one per GPU, else per
    # CPU); GPUs per actor (default 1 when the cluster has GPUs); Ray's temp folder for `local`
    ray: str | None = None
    ray_actors: int | None = None
    ray_gpus_per_actor: float | None = None
    ray_temp_dir: "str | Path | None" = None
    ray_shared_cache: bool | None = None  # False: pictures travel as bytes even when workers see the cache

    def validate(self) -> "IndexOptions":
        """Raise OptionError for the first bad value; returns self."""
        if self.samples < 1:
            raise OptionError("samples", f"must be at least 1, got {self.samples}")
        if self.beam < 0:
            raise OptionError("beam", f"must be 0 (whole tree) or positive, got {self.beam}")
        if self.depth is not None and self.depth < 1:
            raise OptionError("depth", f"must be at least 1, got {self.depth}")
        if self.joint and not 2 <= self.joint <= 5:
            raise OptionError("joint", f"must be 0 (off) or 2 to 5 semantics per combination, got {self.joint}")
        if self.joint_top is not None and self.joint_top < self.joint:
            raise OptionError("joint_top", "must be at least {} (" + str(self.joint) + f"), got {self.joint_top}", "joint")
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise OptionError("directions", f"has an unknown direction {bad[0] if bad else ''!r}; valid: {', '.join(DIRECTIONS)}")
        if self.ray is not None:
            if not str(self.ray).strip():
                raise OptionError("ray", "needs 'local' or a Ray cluster address")
            if self.ray_actors is not None and self.ray_actors < 1:
                raise OptionError("ray_actors", f"must be at least 1, got {self.ray_actors}")
            if self.ray_gpus_per_actor is not None and self.ray_gpus_per_actor < 0:
                raise OptionError("ray_gpus_per_actor", f"must be 0 or more, got {self.ray_gpus_per_actor}")
            from .ray_pool import INSTALL_HINT, ray_available

            if not ray_available():
                raise DiffexError(INSTALL_HINT)
        elif self.ray_actors is not None or self.ray_gpus_per_actor is not None:
            raise OptionError("ray_actors" if self.ray_actors is not None else "ray_gpus_per_actor", "needs ray ({})", "ray")
        return self

    def record(self) -> dict[str, Any]:
        """The options as the run log keeps them (store.start_run)."""
        return {"beam": self.beam, "samples": self.samples, "depth": self.depth, "min_delta": self.min_delta,
                "directions": list(self.directions), "joint": self.joint, "joint_top": self.joint_top,
                **({"ray": self.ray, "ray_actors": self.ray_actors} if self.ray is not None else {})}
