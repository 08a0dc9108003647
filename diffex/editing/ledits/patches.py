"""What LEDITS++ needs from diffusers beyond its public API: stacking cached inversions into one
batch, per-image attention stores, the scheduler it was written for. Each fix sits beside the
call it patches; editor.py calls them."""


from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any


from ...errors import DiffexError


def _stack(states: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Per-image inversions -> one batched inversion (images along the batch axis)."""
    import torch

    if len(states) == 1:
        return states[0]
    first_t, first_v = states[0]
    for t, _ in states[1:]:
        if not _tensor_equal(t["inversion_steps"], first_t["inversion_steps"]):
            raise DiffexError("LEDITS++ inversions with different timesteps cannot be batched")
    # Fresh inversions live on the pipeline's device, restored ones on the CPU: concatenate on
    # the CPU (a few MB); apply_state moves the result to the device.
    def cat(name: str, dim: int = 0):
        return torch.cat([t[name].cpu() for t, _ in states], dim=dim)

    tensors = {
        "inversion_steps": first_t["inversion_steps"],
        "scheduler_timesteps": first_t["scheduler_timesteps"],
        "init_latents": cat("init_latents"),
        "zs": cat("zs", dim=1),
    }
    if all("reconstruction" in t for t, _ in states):
        tensors["reconstruction"] = cat("reconstruction")
    return tensors, {**first_v, "batch_size": len(states)}


class _PerImageAttentionStore:
    """Replacement for diffusers' `LeditsAttentionStore.__call__` (0.42.1), which regroups the
    attention rows with `split(batch_size)` as if they were image-major. They are
    (prompt group, image, head)-major, so with several images each image's cross-attention
    mask mixed other images' heads and the batched edits came out wrong (max pixel
    difference 186 against one-at-a-time on the tiny test model). Identical for one image."""

    def __call__(self, attn, is_cross: bool, place_in_unet: str, editing_prompts, PnP=False):
        if attn.shape[1] <= self.max_size:
            groups = 1 + int(PnP) + editing_prompts  # unconditional [, PnP], one per editing prompt
            skip = 2 if PnP else 1
            heads = attn.shape[0] // (groups * self.batch_size)
            per_image = attn.reshape(groups, self.batch_size, heads, *attn.shape[1:]).transpose(0, 1)
            per_image = per_image.reshape(self.batch_size, groups * heads, *attn.shape[1:])
            self.forward(per_image[:, skip * heads :], is_cross, place_in_unet)


@contextmanager
def _per_image_attention(pipe, images: int):
    """While several images are edited in one call, build the pipeline's attention store from
    a class with the corrected `__call__` (the pipeline looks the class up in its module)."""
    module = sys.modules[type(pipe).__module__]
    original = getattr(module, "LeditsAttentionStore", None)
    if images < 2 or original is None:
        yield
        return
    module.LeditsAttentionStore = type("LeditsAttentionStore", (_PerImageAttentionStore, original), {})
    try:
        yield
    finally:
        module.LeditsAttentionStore = original


def _use_ledits_scheduler(pipe) -> None:
    """Give `pipe` the scheduler LEDITS++ inverts with: DPM-Solver++ SDE, order 2.

    A checkpoint that ships another scheduler (SD 1.5 ships PNDM, SDXL Euler) is loaded by
    diffusers 0.42.1 as a *deterministic* `dpmsolver++` DPMSolverMultistepScheduler, which the
    pipeline's constructor then keeps, and `invert()` fails with a bare NotImplementedError.
    (DDIM, the other scheduler it accepts, breaks `invert()` in this version; ENVIRONMENT.md.)
    The swap is a function of the checkpoint's scheduler config, which the editor id hashes."""
    from diffusers import DPMSolverMultistepScheduler

    sched = pipe.scheduler
    if (
        isinstance(sched, DPMSolverMultistepScheduler)
        and sched.config.algorithm_type == "sde-dpmsolver++"
        and sched.config.solver_order == 2
    ):
        return
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        sched.config, algorithm_type="sde-dpmsolver++", solver_order=2
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _tensor_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
